//! Two server peer connections share one UDP port through `UdpMux`, each talking to its own
//! client over loopback; both connect, carry data-channel messages both ways, and leave
//! nothing registered in the mux after they close.
//!
//! Server A runs full ICE (it may check the client before the client's first request
//! arrives: send-side address mapping). Server B is ICE-lite, so only the client's checks to
//! the rewritten candidate can bring it up: without `rewrite_sdp` that pair times out.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtc::ice::mdns::MulticastDnsMode;
use tokio::sync::mpsc;
use tokio::time::timeout;
use veil_sfu::udp_mux::{MuxRuntime, UdpMux, rewrite_sdp};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngine, SettingEngineBuilder,
};
use webrtc::runtime::{Runtime, TokioRuntime};

const WAIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match timeout(WAIT, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Events a test peer reports back to the test body.
struct Handler {
    gathered: mpsc::UnboundedSender<()>,
    connected: mpsc::UnboundedSender<()>,
    /// Messages received on data channels the remote side opened; each is echoed as `pong:`.
    received: mpsc::UnboundedSender<String>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if state == RTCPeerConnectionState::Connected {
            let _ = self.connected.send(());
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(event) = dc.poll().await {
                match event {
                    DataChannelEvent::OnMessage(msg) => {
                        let text = String::from_utf8_lossy(&msg.data).into_owned();
                        let _ = dc.send_text(&format!("pong:{text}")).await;
                        let _ = received.send(text);
                    }
                    DataChannelEvent::OnClose => break,
                    _ => {}
                }
            }
        });
    }
}

struct Peer {
    pc: Box<dyn PeerConnection>,
    gathered: mpsc::UnboundedReceiver<()>,
    connected: mpsc::UnboundedReceiver<()>,
    received: mpsc::UnboundedReceiver<String>,
}

async fn build_peer(runtime: Arc<dyn Runtime>, setting_engine: SettingEngine) -> Peer {
    let (gathered_tx, gathered) = mpsc::unbounded_channel();
    let (connected_tx, connected) = mpsc::unbounded_channel();
    let (received_tx, received) = mpsc::unbounded_channel();
    let pc = PeerConnectionBuilder::new()
        .with_setting_engine(setting_engine)
        .with_runtime(runtime)
        .with_handler(Arc::new(Handler {
            gathered: gathered_tx,
            connected: connected_tx,
            received: received_tx,
        }))
        // Loopback only, no ICE servers (the default configuration has none).
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .build()
        .await
        .expect("build peer connection");
    Peer {
        pc: Box::new(pc),
        gathered,
        connected,
        received,
    }
}

/// A server connection on the mux, its client, and the server's data channel.
struct Pair {
    server: Peer,
    client: Peer,
    runtime: Arc<MuxRuntime>,
    server_dc: Arc<dyn DataChannel>,
    server_dc_events: mpsc::UnboundedReceiver<DataChannelEvent>,
}

/// `ice_lite`: the server only answers checks. Then the connection can only come up through
/// the client's checks to the rewritten candidate; with full ICE the server also checks the
/// client first, which exercises the mux's send-side address mapping.
async fn connect_pair(mux: &Arc<UdpMux>, ufrag: &str, pwd: &str, ice_lite: bool) -> Pair {
    let runtime = mux.runtime_for(ufrag);
    let server_settings = SettingEngineBuilder::new()
        .with_ice_credentials(ufrag.to_owned(), pwd.to_owned())
        .with_lite(ice_lite)
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut server = build_peer(runtime.clone(), server_settings).await;

    let server_dc = server
        .pc
        .create_data_channel("veil", None)
        .await
        .expect("create data channel");
    let (events_tx, server_dc_events) = mpsc::unbounded_channel();
    {
        let dc = server_dc.clone();
        tokio::spawn(async move {
            while let Some(event) = dc.poll().await {
                let close = matches!(event, DataChannelEvent::OnClose);
                let _ = events_tx.send(event);
                if close {
                    break;
                }
            }
        });
    }

    let offer = server.pc.create_offer(None).await.expect("create offer");
    server
        .pc
        .set_local_description(offer)
        .await
        .expect("server set local");
    within("server gathering", server.gathered.recv()).await;
    let offer = server
        .pc
        .local_description()
        .await
        .expect("server local description");

    // The driver advertises its own (closed) ephemeral socket; signal the mux instead.
    let driver_addrs = runtime.driver_addrs();
    assert_eq!(driver_addrs.len(), 1, "one bind address, one muxed socket");
    let rewritten = rewrite_sdp(&offer.sdp, &driver_addrs, mux.local_addr());
    let candidates: Vec<&str> = rewritten
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    assert!(!candidates.is_empty(), "offer has candidates: {rewritten}");
    for line in &candidates {
        assert!(
            line.contains(&format!(
                " {} {} ",
                mux.local_addr().ip(),
                mux.local_addr().port()
            )),
            "candidate not rewritten to the mux address: {line}"
        );
    }
    assert!(
        !rewritten.contains(&format!(" {} typ", driver_addrs[0].port())),
        "driver port still advertised"
    );
    assert!(rewritten.contains("\r\n"), "CRLF line endings kept");

    let client_settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .build();
    let mut client = build_peer(Arc::new(TokioRuntime), client_settings).await;
    client
        .pc
        .set_remote_description(RTCSessionDescription::offer(rewritten).expect("parse offer"))
        .await
        .expect("client set remote");
    let answer = client.pc.create_answer(None).await.expect("create answer");
    client
        .pc
        .set_local_description(answer)
        .await
        .expect("client set local");
    within("client gathering", client.gathered.recv()).await;
    let answer = client
        .pc
        .local_description()
        .await
        .expect("client local description");
    server
        .pc
        .set_remote_description(answer)
        .await
        .expect("server set remote");

    Pair {
        server,
        client,
        runtime,
        server_dc,
        server_dc_events,
    }
}

async fn wait_open(events: &mut mpsc::UnboundedReceiver<DataChannelEvent>) {
    loop {
        match events.recv().await {
            Some(DataChannelEvent::OnOpen) => return,
            Some(_) => {}
            None => panic!("data channel event stream ended before open"),
        }
    }
}

async fn wait_message(events: &mut mpsc::UnboundedReceiver<DataChannelEvent>) -> String {
    loop {
        match events.recv().await {
            Some(DataChannelEvent::OnMessage(msg)) => {
                return String::from_utf8_lossy(&msg.data).into_owned();
            }
            Some(_) => {}
            None => panic!("data channel event stream ended before a message"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_share_one_port_and_clean_up() {
    let mux = UdpMux::bind("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .await
        .expect("bind mux");

    let mut pairs = vec![
        connect_pair(&mux, "veilsrvA", "veil-server-password-a-0123456789", false).await,
        connect_pair(&mux, "veilsrvB", "veil-server-password-b-0123456789", true).await,
    ];

    for (i, pair) in pairs.iter_mut().enumerate() {
        within("server connected", pair.server.connected.recv()).await;
        within("client connected", pair.client.connected.recv()).await;
        within(
            "server data channel open",
            wait_open(&mut pair.server_dc_events),
        )
        .await;
        // The client only ever learned the mux address, and the driver's own ephemeral
        // socket was closed at wrap time (its port can be bound again), so every packet of
        // this connection went through the one mux port.
        let driver_addrs = pair.runtime.driver_addrs();
        assert_eq!(driver_addrs.len(), 1, "pair {i}");
        assert_ne!(driver_addrs[0], mux.local_addr());
        drop(std::net::UdpSocket::bind(driver_addrs[0]).expect("driver port is not held open"));
    }

    let stats = mux.stats();
    assert_eq!(stats.connections, 2, "{stats:?}");
    assert_eq!(stats.sockets, 2, "{stats:?}");
    assert!(
        stats.addresses >= 2,
        "each client address is mapped: {stats:?}"
    );

    for (i, pair) in pairs.iter_mut().enumerate() {
        let ping = format!("ping-{i}");
        pair.server_dc.send_text(&ping).await.expect("server send");
        let got = within("client receive", pair.client.received.recv())
            .await
            .expect("client message");
        assert_eq!(got, ping);
        let echo = within("server receive", wait_message(&mut pair.server_dc_events)).await;
        assert_eq!(echo, format!("pong:{ping}"));
    }

    for pair in &pairs {
        within("client close", pair.client.pc.close())
            .await
            .expect("client close");
        within("server close", pair.server.pc.close())
            .await
            .expect("server close");
    }

    // Closing a connection drops its driver and with it the muxed socket, which unregisters.
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = mux.stats();
        if stats.connections == 0 && stats.sockets == 0 && stats.addresses == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mux not empty after close: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(pairs);
    mux.close();
    let stats = mux.stats();
    assert_eq!(
        (stats.connections, stats.sockets, stats.addresses),
        (0, 0, 0)
    );
}
