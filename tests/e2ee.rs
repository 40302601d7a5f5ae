//! End-to-end encryption among headless participants, through a real SFU and no browser:
//! members that share the room secret decrypt each other's frames (reassembled from RTP)
//! into valid VP8 key frames and Opus packets and show one security code; a participant
//! with a wrong secret or none receives the same frames and decrypts nothing; when a
//! member leaves, the others rotate, and the rest keep decrypting under the new KID.
//! `tests/browser_e2ee.rs` does the same with Chromium members.

mod common;

use common::*;
use veil_bench::e2ee::generate_secret;
use veil_bench::participant::{FrameStats, Participant, ParticipantConfig};
use veil_bench::payload::Kind;

fn stats(p: &Participant, from: &Participant, kind: Kind) -> FrameStats {
    p.frame_stats()
        .remove(&(from.id.clone(), kind))
        .unwrap_or_default()
}

/// `p` decrypted `from`'s video into a valid key frame and more, and its audio into
/// valid Opus.
fn decrypts(p: &Participant, from: &Participant) -> bool {
    let video = stats(p, from, Kind::Video);
    let audio = stats(p, from, Kind::Audio);
    video.valid_key_frames > 0 && video.decrypted > 10 && audio.valid_opus > 20
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_decrypt_each_other_and_rotate_when_one_leaves() {
    let veil = start_veil().await;
    let room = new_room(&veil);
    let secret = generate_secret().expect("secret");
    let config = |name: &str, secret: Option<String>| {
        let mut c: ParticipantConfig = participant(&veil, &room, name);
        c.e2ee_secret = secret;
        c.video = Some(small_camera());
        c
    };
    let ann = Participant::join(config("Ann", Some(secret.clone())))
        .await
        .expect("join");
    let bo = Participant::join(config("Bo", Some(secret.clone())))
        .await
        .expect("join");
    let cy = Participant::join(config("Cy", Some(secret.clone())))
        .await
        .expect("join");
    let wrong = Some(generate_secret().expect("secret"));
    let eve = Participant::join(config("Eve", wrong)).await.expect("join");
    let mut nil_config = config("Nil", None);
    // Without a secret, capturing still reassembles frames and counts them.
    nil_config.capture = true;
    let nil = Participant::join(nil_config).await.expect("join");

    let members = [&ann, &bo, &cy];
    wait_until("every member decrypts every other", secs(20), || {
        members.iter().all(|p| {
            members
                .iter()
                .filter(|o| o.id != p.id)
                .all(|o| decrypts(p, o))
        })
    })
    .await;
    let code = ann.security_code().expect("a code");
    assert!(
        members
            .iter()
            .all(|p| p.security_code() == Some(code.clone()))
    );
    assert_eq!(ann.e2ee_members(), {
        let mut m = vec![bo.id.clone(), cy.id.clone()];
        m.sort();
        m
    });
    for p in members {
        for o in members.iter().filter(|o| o.id != p.id) {
            let audio = stats(p, o, Kind::Audio);
            let video = stats(p, o, Kind::Video);
            assert_eq!(audio.invalid_opus, 0, "{audio:?}");
            assert_eq!(video.key_frames, video.valid_key_frames, "{video:?}");
            assert_eq!(video.dimensions, Some((1280, 720)), "{video:?}");
        }
    }

    // Wrong secret and no secret: the same frames arrive, none decrypts.
    wait_until(
        "Eve and Nil receive every member's frames",
        secs(10),
        || {
            [&eve, &nil].iter().all(|p| {
                members.iter().all(|o| {
                    stats(p, o, Kind::Video).frames > 10 && stats(p, o, Kind::Audio).frames > 20
                })
            })
        },
    )
    .await;
    for p in [&eve, &nil] {
        let decrypted: u64 = p.frame_stats().values().map(|s| s.decrypted).sum();
        assert_eq!(decrypted, 0, "{:?}", p.frame_stats());
    }
    assert!(eve.e2ee_members().is_empty());
    assert_ne!(eve.security_code(), Some(code.clone()));
    assert!(nil.security_code().is_none());
    // Members did not verify Eve, so they cannot decrypt her either.
    let from_eve = stats(&ann, &eve, Kind::Video);
    assert!(
        from_eve.frames > 0 && from_eve.decrypted == 0,
        "{from_eve:?}"
    );

    // Bo leaves: Ann and Cy rotate to KID 1, and still decrypt each other under it.
    bo.leave().await;
    wait_until("Ann and Cy send under KID 1", secs(10), || {
        [(&ann, &cy), (&cy, &ann)].iter().all(|(from, to)| {
            [Kind::Video, Kind::Audio]
                .iter()
                .all(|k| stats(&nil, from, *k).kids.get(&1).is_some_and(|n| *n > 10))
                && stats(to, from, Kind::Audio)
                    .kids
                    .get(&1)
                    .is_some_and(|n| *n > 10)
        })
    })
    .await;
    let before = stats(&cy, &ann, Kind::Audio);
    wait_until(
        "Cy keeps decrypting Ann after the rotation",
        secs(5),
        || stats(&cy, &ann, Kind::Audio).decrypted > before.decrypted + 20,
    )
    .await;
    let after = stats(&cy, &ann, Kind::Audio);
    // Frames under KID 1 decrypt: no failure came with them.
    assert_eq!(
        after.failed, before.failed,
        "before {before:?} after {after:?}"
    );
    for p in [ann, cy, eve, nil] {
        p.leave().await;
    }
}
