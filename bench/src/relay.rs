//! The physical-limit baseline: a plain UDP fan-out relay on one thread (`recvmmsg` /
//! `sendmmsg`, no crypto, no RTP logic: every datagram from a room member goes to every
//! other member of its room) and the generator that drives it with the same payloads,
//! packet sizes, rates and fan-out as a Veil scenario, reported in the same shape.
//!
//! Wire format to the relay: `VEILJOIN` + room (u32, big-endian) registers the sender in
//! a room and is answered `VEILJOINED`; any other datagram from a member is media. Media
//! datagrams are a 12-byte RTP-shaped header, the same payload the headless participant
//! sends, and 10 bytes standing where the SRTP authentication tag would be.
//!
//! Must never: bind or send anywhere but 127.0.0.1, look into a payload, or run past its
//! stop flag or its lifetime.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use veil_sfu::Layer;

use crate::histogram::LatencyHistogram;
use crate::load::{CpuReading, LoadError, Measured, Progress, Scenario, build_report};
use crate::media::{
    AUDIO_PACKETS_PER_SECOND, Frame, VIDEO_CLOCK, audio_payload, layer_bitrate, packetize,
};
use crate::participant::CounterRange;
use crate::payload::{Kind, now_micros, parse_body, participant_hash};
use crate::report::{ParticipantSnapshot, Report, ServerCost, TrackSnapshot};
use crate::usage::{self, CpuScope};

const JOIN: &[u8] = b"VEILJOIN";
const JOINED: &[u8] = b"VEILJOINED";
/// RTP fixed header.
pub const HEADER_LEN: usize = 12;
/// Where SRTP's HMAC-SHA1-80 tag would be.
pub const TAG_LEN: usize = 10;
const BATCH: usize = 64;
const MAX_DATAGRAM: usize = 2048;
const SOCKET_BUFFER: libc::c_int = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the relay thread did not report its id")]
    NoThread,
}

/// What the relay did so far.
#[derive(Debug, Default)]
pub struct RelayCounters {
    pub received: AtomicU64,
    pub forwarded: AtomicU64,
    pub send_errors: AtomicU64,
}

/// A running relay thread on 127.0.0.1.
pub struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    tid: i32,
    counters: Arc<RelayCounters>,
    thread: Option<JoinHandle<Result<(), RelayError>>>,
}

fn set_buffer(fd: libc::c_int, force: libc::c_int, plain: libc::c_int) {
    let size = SOCKET_BUFFER;
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is an open socket; the option value points to a live c_int of `len` bytes.
    unsafe {
        let p = (&size as *const libc::c_int).cast();
        if libc::setsockopt(fd, libc::SOL_SOCKET, force, p, len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, plain, p, len);
        }
    }
}

/// A loopback UDP socket with large buffers (so bursts are not dropped by the kernel).
pub fn loopback_socket() -> std::io::Result<UdpSocket> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let fd = socket.as_raw_fd();
    set_buffer(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    set_buffer(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    Ok(socket)
}

#[cfg(test)]
fn to_sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr.s_addr = u32::from(*addr.ip()).to_be();
    sa
}

fn from_sockaddr(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

impl Relay {
    /// Starts the relay thread; it stops on [`Relay::stop`], on drop, or after `lifetime`.
    pub fn start(lifetime: Duration) -> Result<Relay, RelayError> {
        let socket = loopback_socket()?;
        // Wakes the loop now and then to look at the stop flag; never on the hot path.
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(RelayCounters::default());
        let tid = Arc::new(AtomicI32::new(0));
        let thread = {
            let (stop, counters, tid) = (stop.clone(), counters.clone(), tid.clone());
            std::thread::Builder::new()
                .name("veil-relay".into())
                .spawn(move || {
                    tid.store(usage::current_tid(), Ordering::Release);
                    relay_loop(&socket, &stop, &counters, Instant::now() + lifetime)
                })?
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while tid.load(Ordering::Acquire) == 0 {
            if Instant::now() > deadline {
                stop.store(true, Ordering::Release);
                return Err(RelayError::NoThread);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(Relay {
            addr,
            stop,
            tid: tid.load(Ordering::Acquire),
            counters,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay thread's CPU, for reports.
    pub fn cpu_scope(&self) -> CpuScope {
        CpuScope::Thread(self.tid)
    }

    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) -> Result<(), RelayError> {
        self.stop.store(true, Ordering::Release);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) | None => Err(RelayError::NoThread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn relay_loop(
    socket: &UdpSocket,
    stop: &AtomicBool,
    counters: &RelayCounters,
    deadline: Instant,
) -> Result<(), RelayError> {
    let fd = socket.as_raw_fd();
    let mut bufs = vec![[0u8; MAX_DATAGRAM]; BATCH];
    // SAFETY (zeroed): these are plain C structs; all-zero is valid for each.
    let mut names: Vec<libc::sockaddr_in> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut iovs: Vec<libc::iovec> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; BATCH];
    let mut room_of: HashMap<SocketAddrV4, u32> = HashMap::new();
    let mut rooms: HashMap<u32, Vec<libc::sockaddr_in>> = HashMap::new();
    // Outgoing batch: (destination, which buffer, length); buffer usize::MAX = JOINED.
    let mut out: Vec<(libc::sockaddr_in, usize, usize)> = Vec::with_capacity(BATCH * 16);
    let mut out_names: Vec<libc::sockaddr_in> = Vec::with_capacity(BATCH);
    let mut out_iovs: Vec<libc::iovec> = Vec::with_capacity(BATCH);
    let mut out_hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Acquire) && Instant::now() < deadline {
        for i in 0..BATCH {
            iovs[i] = libc::iovec {
                iov_base: bufs[i].as_mut_ptr().cast(),
                iov_len: MAX_DATAGRAM,
            };
            hdrs[i].msg_hdr.msg_name = (&mut names[i] as *mut libc::sockaddr_in).cast();
            hdrs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
            hdrs[i].msg_len = 0;
        }
        // SAFETY: every header points at a live name and iovec over a live buffer of the
        // stated length; BATCH headers are allocated.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            match err.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(err.into()),
            }
        }
        let n = n as usize;
        counters.received.fetch_add(n as u64, Ordering::Relaxed);
        out.clear();
        for i in 0..n {
            let len = hdrs[i].msg_len as usize;
            let src = from_sockaddr(&names[i]);
            let data = &bufs[i][..len];
            if len == JOIN.len() + 4 && data.starts_with(JOIN) {
                let mut room = [0u8; 4];
                room.copy_from_slice(&data[JOIN.len()..]);
                let room = u32::from_be_bytes(room);
                if room_of.insert(src, room).is_none() {
                    rooms.entry(room).or_default().push(names[i]);
                }
                out.push((names[i], usize::MAX, JOINED.len()));
                continue;
            }
            let Some(members) = room_of.get(&src).and_then(|r| rooms.get(r)) else {
                continue;
            };
            for m in members {
                if m.sin_port != names[i].sin_port || m.sin_addr.s_addr != names[i].sin_addr.s_addr
                {
                    out.push((*m, i, len));
                }
            }
        }
        let mut forwarded = 0u64;
        for chunk in out.chunks(BATCH) {
            out_names.clear();
            out_iovs.clear();
            out_hdrs.clear();
            for (dst, buf, len) in chunk {
                out_names.push(*dst);
                let base = if *buf == usize::MAX {
                    JOINED.as_ptr().cast_mut()
                } else {
                    bufs[*buf].as_mut_ptr()
                };
                out_iovs.push(libc::iovec {
                    iov_base: base.cast(),
                    iov_len: *len,
                });
            }
            for i in 0..chunk.len() {
                // SAFETY: plain C struct; all-zero is valid.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = (&mut out_names[i] as *mut libc::sockaddr_in).cast();
                h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                h.msg_hdr.msg_iov = &mut out_iovs[i];
                h.msg_hdr.msg_iovlen = 1;
                out_hdrs.push(h);
            }
            let mut sent = 0usize;
            while sent < out_hdrs.len() {
                // SAFETY: the headers point at live names and iovecs over live buffers
                // (sendmmsg only reads them); `sent` < len.
                let r = unsafe {
                    libc::sendmmsg(
                        fd,
                        out_hdrs.as_mut_ptr().add(sent),
                        (out_hdrs.len() - sent) as libc::c_uint,
                        0,
                    )
                };
                if r <= 0 {
                    let err = std::io::Error::last_os_error();
                    if err.kind() == std::io::ErrorKind::Interrupted {
                        continue;
                    }
                    // Skip the datagram that failed; the count says so.
                    counters.send_errors.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    continue;
                }
                sent += r as usize;
            }
            forwarded += chunk.iter().filter(|(_, b, _)| *b != usize::MAX).count() as u64;
        }
        counters.forwarded.fetch_add(forwarded, Ordering::Relaxed);
    }
    Ok(())
}

/// What one generator participant received from the relay.
#[derive(Default)]
struct RelayRecord {
    tracks: HashMap<String, TrackSnapshot>,
    sent_packets: u64,
}

struct RelayMember {
    id: String,
    room: usize,
    index_in_room: usize,
    join_started: Instant,
    /// Registration round trip (the relay has no negotiation to time).
    join_ms: f64,
    record: Arc<Mutex<RelayRecord>>,
}

fn lock(m: &Mutex<RelayRecord>) -> std::sync::MutexGuard<'_, RelayRecord> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everyone's received tracks first, then everyone's sent counts (see `load`).
fn snapshot(members: &[RelayMember]) -> Vec<ParticipantSnapshot> {
    let mut snaps: Vec<ParticipantSnapshot> = members
        .iter()
        .map(|m| ParticipantSnapshot {
            tracks: lock(&m.record).tracks.clone(),
            sent_packets: 0,
        })
        .collect();
    for (s, m) in snaps.iter_mut().zip(members) {
        s.sent_packets = lock(&m.record).sent_packets;
    }
    snaps
}

/// One datagram: RTP-shaped header, payload, tag-sized tail.
fn datagram(payload: &[u8], ssrc: u32, sequence: u16, timestamp: u32, marker: bool) -> Vec<u8> {
    let mut d = Vec::with_capacity(HEADER_LEN + payload.len() + TAG_LEN);
    d.push(0x80);
    d.push(if marker { 0x80 | 96 } else { 111 });
    d.extend_from_slice(&sequence.to_be_bytes());
    d.extend_from_slice(&timestamp.to_be_bytes());
    d.extend_from_slice(&ssrc.to_be_bytes());
    d.extend_from_slice(payload);
    d.extend_from_slice(&[0u8; TAG_LEN]);
    d
}

/// One outgoing stream (a simulcast layer, or the only one).
struct RelayStream {
    layer: Option<Layer>,
    ssrc: u32,
    sequence: u16,
    counter: u64,
    picture_id: u16,
    last_key: Option<Instant>,
}

/// Sends one source's packets at its rate until `stop` or `deadline`.
#[allow(clippy::too_many_arguments)]
async fn publish(
    socket: Arc<tokio::net::UdpSocket>,
    relay: SocketAddr,
    participant: String,
    kind: Kind,
    scenario: Scenario,
    record: Arc<Mutex<RelayRecord>>,
    stop: tokio::sync::watch::Receiver<bool>,
    deadline: Instant,
) {
    let sender = participant_hash(&participant);
    let video = if kind == Kind::Audio {
        None
    } else {
        scenario.video
    };
    let layers: Vec<Option<Layer>> = match video {
        Some(v) if v.simulcast => Layer::ALL.iter().map(|l| Some(*l)).collect(),
        _ => vec![None],
    };
    let period = match video {
        None => Duration::from_secs(1) / AUDIO_PACKETS_PER_SECOND,
        Some(v) => Duration::from_secs(1) / v.fps.max(1),
    };
    let mut streams: Vec<RelayStream> = layers
        .iter()
        .map(|l| RelayStream {
            layer: *l,
            ssrc: rand::random(),
            sequence: rand::random(),
            counter: 0,
            picture_id: 0,
            last_key: None,
        })
        .collect();
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timestamp: u32 = rand::random();
    while !*stop.borrow() && Instant::now() < deadline {
        ticker.tick().await;
        let now = Instant::now();
        let sent_micros = now_micros();
        for RelayStream {
            layer,
            ssrc,
            sequence,
            counter,
            picture_id,
            last_key,
        } in &mut streams
        {
            let payloads = match video {
                None => {
                    let p = audio_payload(*counter, sender, sent_micros);
                    *counter += 1;
                    vec![p]
                }
                Some(v) => {
                    let key = last_key.is_none_or(|t| now.duration_since(t) >= v.keyframe_interval);
                    if key {
                        *last_key = Some(now);
                    }
                    let bytes = usize::try_from(
                        layer_bitrate(v.bitrate_bps, *layer) / 8 / u64::from(v.fps.max(1)),
                    )
                    .unwrap_or(usize::MAX);
                    let frame = Frame {
                        kind,
                        layer: *layer,
                        key,
                        bytes,
                        picture_id: *picture_id,
                        sender,
                        sent_micros,
                    };
                    *picture_id = (*picture_id + 1) & 0x7fff;
                    packetize(&frame, counter)
                }
            };
            let count = payloads.len();
            for (i, p) in payloads.iter().enumerate() {
                let d = datagram(p, *ssrc, *sequence, timestamp, i + 1 == count);
                *sequence = sequence.wrapping_add(1);
                if socket.send_to(&d, relay).await.is_err() {
                    return;
                }
                lock(&record).sent_packets += 1;
            }
        }
        timestamp = timestamp.wrapping_add(match video {
            None => 960,
            Some(v) => VIDEO_CLOCK / v.fps.max(1),
        });
    }
}

/// Records every datagram that arrives until `stop` or `deadline`.
async fn receive(
    socket: Arc<tokio::net::UdpSocket>,
    publishers: Arc<HashMap<[u8; 8], String>>,
    record: Arc<Mutex<RelayRecord>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    deadline: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let len = tokio::select! {
            r = socket.recv(&mut buf) => match r { Ok(len) => len, Err(_) => return },
            _ = stop.wait_for(|s| *s) => return,
            _ = tokio::time::sleep_until(deadline.into()) => return,
        };
        let now = Instant::now();
        if len < HEADER_LEN + TAG_LEN {
            continue;
        }
        let payload = &buf[HEADER_LEN..len - TAG_LEN];
        let Some(body) = parse_body(payload) else {
            continue;
        };
        let latency = now_micros().saturating_sub(body.sent_micros);
        let kind = if body.kind == Kind::Audio {
            "audio"
        } else {
            "video"
        };
        let publisher = publishers.get(&body.sender).cloned().unwrap_or_default();
        let mut r = lock(&record);
        let track = r
            .tracks
            .entry(format!("{publisher}/{kind}"))
            .or_insert_with(|| TrackSnapshot {
                publisher,
                latency: LatencyHistogram::default(),
                ..TrackSnapshot::default()
            });
        track.packets += 1;
        track.bytes += payload.len() as u64;
        track.first_packet.get_or_insert(now);
        track.latency.record(latency);
        CounterRange::observe(&mut track.counters, (body.sender, body.layer), body.counter);
    }
}

async fn register(socket: &tokio::net::UdpSocket, relay: SocketAddr, room: u32) -> bool {
    let mut msg = JOIN.to_vec();
    msg.extend_from_slice(&room.to_be_bytes());
    let mut buf = [0u8; 64];
    for _ in 0..10 {
        if socket.send_to(&msg, relay).await.is_err() {
            return false;
        }
        let answered = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match socket.recv(&mut buf).await {
                    Ok(n) if &buf[..n] == JOINED => return true,
                    Ok(_) => continue,
                    Err(_) => return false,
                }
            }
        })
        .await;
        if answered == Ok(true) {
            return true;
        }
    }
    false
}

/// Runs `scenario` through a relay on its own thread; call on the generator runtime.
/// `generator_threads` is the generator runtime's worker count (for the saturation mark).
pub async fn run_relay(
    scenario: &Scenario,
    generator_threads: usize,
    progress: &dyn Progress,
) -> Result<Report, LoadError> {
    scenario.check()?;
    let lifetime = scenario.ramp_up
        + scenario.settle_timeout
        + scenario.warmup
        + scenario.duration
        + Duration::from_secs(30);
    let relay = Relay::start(lifetime).map_err(|e| LoadError::Relay(e.to_string()))?;
    let deadline = Instant::now() + lifetime;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let total = scenario.participants();
    progress.phase("relay: joining", total as u64);

    let mut members = Vec::with_capacity(total);
    let mut sockets = Vec::with_capacity(total);
    let mut publishers = HashMap::new();
    for index_in_room in 0..scenario.participants_per_room {
        for room in 0..scenario.rooms {
            let id = format!("relay-{room}-{index_in_room}");
            publishers.insert(participant_hash(&id), id.clone());
            members.push(RelayMember {
                id,
                room,
                index_in_room,
                join_started: Instant::now(),
                join_ms: 0.0,
                record: Arc::new(Mutex::new(RelayRecord::default())),
            });
        }
    }
    let publishers = Arc::new(publishers);
    let spacing = scenario.ramp_up / u32::try_from(total).unwrap_or(u32::MAX);
    let mut tasks = Vec::new();
    for (n, m) in members.iter_mut().enumerate() {
        let std_socket = loopback_socket().map_err(|e| LoadError::Relay(e.to_string()))?;
        std_socket
            .set_nonblocking(true)
            .map_err(|e| LoadError::Relay(e.to_string()))?;
        let socket = Arc::new(
            tokio::net::UdpSocket::from_std(std_socket)
                .map_err(|e| LoadError::Relay(e.to_string()))?,
        );
        m.join_started = Instant::now();
        let room = u32::try_from(m.room).unwrap_or(u32::MAX);
        if !register(&socket, relay.addr(), room).await {
            return Err(LoadError::Relay(format!("{} could not register", m.id)));
        }
        tasks.push(tokio::spawn(receive(
            socket.clone(),
            publishers.clone(),
            m.record.clone(),
            stop_rx.clone(),
            deadline,
        )));
        m.join_ms = m.join_started.elapsed().as_secs_f64() * 1000.0;
        sockets.push(socket);
        progress.advance(n as u64 + 1);
        tokio::time::sleep(spacing).await;
    }
    // Everyone is registered before anyone publishes, so every packet has the full
    // fan-out and "forwards every packet" is exact.
    for (m, socket) in members.iter().zip(&sockets) {
        if scenario.publishes(m.index_in_room) {
            let mut kinds = Vec::new();
            if scenario.audio {
                kinds.push(Kind::Audio);
            }
            if scenario.video.is_some() {
                kinds.push(Kind::Video);
            }
            for kind in kinds {
                tasks.push(tokio::spawn(publish(
                    socket.clone(),
                    relay.addr(),
                    m.id.clone(),
                    kind,
                    scenario.clone(),
                    m.record.clone(),
                    stop_rx.clone(),
                    deadline,
                )));
            }
        }
    }
    let expected: Vec<usize> = members
        .iter()
        .map(|m| scenario.expected_tracks(m.index_in_room))
        .collect();
    let receivers = expected.iter().filter(|e| **e > 0).count();
    let mut problems = Vec::new();
    let settle_deadline = Instant::now() + scenario.settle_timeout;
    loop {
        let snap = snapshot(&members);
        let ready = snap
            .iter()
            .zip(&expected)
            .filter(|(s, e)| **e > 0 && s.tracks.values().filter(|t| t.packets > 0).count() >= **e)
            .count();
        if ready >= receivers {
            break;
        }
        if Instant::now() >= settle_deadline {
            problems.push(format!(
                "only {ready} of {receivers} relay receivers had every stream"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(scenario.warmup).await;

    let cpu = relay.cpu_scope();
    let generator_cpu = |server: f64| -> Result<f64, LoadError> {
        Ok((usage::process_cpu_seconds(std::process::id())? - server).max(0.0))
    };
    let start = snapshot(&members);
    let server = cpu.cpu_seconds()?;
    let cpu_start = CpuReading {
        at: Instant::now(),
        server,
        generator: generator_cpu(server)?,
    };
    crate::load::measure_window(scenario.duration, progress, "relay: measuring").await;
    let server = cpu.cpu_seconds()?;
    let cpu_end = CpuReading {
        at: Instant::now(),
        server,
        generator: generator_cpu(server)?,
    };
    let end = snapshot(&members);

    // Stop sending, then let what is in flight arrive (bounded) before the run totals.
    let _ = stop_tx.send(true);
    let received = |s: &[ParticipantSnapshot]| -> u64 {
        s.iter()
            .flat_map(|p| p.tracks.values())
            .map(|t| t.packets)
            .sum()
    };
    let mut drained = snapshot(&members);
    let drain_deadline = Instant::now() + Duration::from_secs(3);
    // The receivers stopped with the flag; read what the kernel still holds.
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut more = 0u64;
        for (m, socket) in members.iter().zip(&sockets) {
            while let Ok(len) = socket.try_recv(&mut buf) {
                if len >= HEADER_LEN + TAG_LEN
                    && let Some(body) = parse_body(&buf[HEADER_LEN..len - TAG_LEN])
                {
                    let publisher = publishers.get(&body.sender).cloned().unwrap_or_default();
                    let kind = if body.kind == Kind::Audio {
                        "audio"
                    } else {
                        "video"
                    };
                    let mut r = lock(&m.record);
                    if let Some(t) = r.tracks.get_mut(&format!("{publisher}/{kind}")) {
                        t.packets += 1;
                        more += 1;
                    }
                }
            }
        }
        let now = snapshot(&members);
        let settled = more == 0 && received(&now) == received(&drained);
        drained = now;
        if settled || Instant::now() > drain_deadline {
            break;
        }
    }
    for t in tasks {
        t.abort();
    }
    let forwarded = relay.counters().forwarded.load(Ordering::Relaxed);
    let send_errors = relay.counters().send_errors.load(Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || relay.stop()).await;
    if send_errors > 0 {
        problems.push(format!("relay: {send_errors} send errors"));
    }
    if forwarded != received(&drained) {
        problems.push(format!(
            "relay forwarded {forwarded} datagrams, receivers got {}",
            received(&drained)
        ));
    }

    let joins_ms: Vec<f64> = members.iter().map(|m| m.join_ms).collect();
    let fan_out: Vec<u64> = members
        .iter()
        .map(|_| scenario.participants_per_room as u64 - 1)
        .collect();
    progress.finish();
    let mut report = build_report(Measured {
        target_label: "udp relay (recvmmsg/sendmmsg, 1 thread)".into(),
        scenario,
        start: &start,
        end: &end,
        fan_out: &fan_out,
        receivers,
        expected_tracks: &expected,
        joins_ms,
        cpu_start,
        cpu_end,
        server_cost: ServerCost {
            cpu_scope: "relay thread".into(),
            cpu_includes_generator: false,
            cpu_s: 0.0,
            cpu_s_per_1k_packets: 0.0,
            packets_per_cpu_s: 0.0,
            memory_scope: None,
            memory_includes_generator: false,
            rss_kib: None,
            peak_rss_kib: None,
            rss_kib_per_subscribed_track: None,
        },
        rss_before_kib: None,
        generator_threads,
        problems,
    });
    // Run totals after the drain: what the relay delivered of everything sent.
    report.run.sent_packets = drained.iter().map(|s| s.sent_packets).sum();
    report.run.expected_packets = drained
        .iter()
        .zip(&fan_out)
        .map(|(s, f)| s.sent_packets * f)
        .sum();
    report.run.received_packets = received(&drained);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trips() {
        let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 40_123);
        assert_eq!(from_sockaddr(&to_sockaddr(a)), a);
    }

    #[test]
    fn relay_fans_out_to_the_other_members_of_a_room_only() {
        let relay = Relay::start(Duration::from_secs(20)).expect("relay");
        let sockets: Vec<UdpSocket> = (0..4).map(|_| loopback_socket().expect("socket")).collect();
        for s in &sockets {
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
        }
        let mut buf = [0u8; 64];
        for (i, s) in sockets.iter().enumerate() {
            let mut join = JOIN.to_vec();
            join.extend_from_slice(&(if i < 3 { 7u32 } else { 8 }).to_be_bytes());
            s.send_to(&join, relay.addr()).expect("send");
            let n = s.recv(&mut buf).expect("joined");
            assert_eq!(&buf[..n], JOINED);
        }
        sockets[0].send_to(b"hello", relay.addr()).expect("send");
        for s in &sockets[1..3] {
            let n = s.recv(&mut buf).expect("fan-out");
            assert_eq!(&buf[..n], b"hello");
        }
        sockets[3]
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        assert!(sockets[3].recv(&mut buf).is_err(), "other room got it");
        assert_eq!(relay.counters().forwarded.load(Ordering::Relaxed), 2);
        relay.stop().expect("stop");
    }
}
