//! One UDP port for the media of every peer connection (a "UDP mux", like Pion's `UDPMux`).
//!
//! Owns the SFU's single media socket, the table that routes its datagrams to peer
//! connections, and the glue that makes each `webrtc` peer connection use it. This exists
//! because webrtc 0.21 has no UDP mux (rtc's `SettingEngineBuilder::with_udp_network` is a
//! commented-out TODO): every connection's driver binds its own ephemeral UDP socket, which
//! would force operators to open a port range. The one injection point is the per-connection
//! [`Runtime`]: the driver binds a `std::net::UdpSocket` itself and hands it to
//! [`Runtime::wrap_udp_socket`], so [`MuxRuntime`] drops that socket and returns a
//! [`MuxedSocket`] that reads from and writes to the shared one instead.
//!
//! Routing follows RFC 8445/5389: the first packet from a new remote address is a STUN
//! Binding request whose USERNAME is `LOCALUFRAG:REMOTEUFRAG`, and the local ufrag names the
//! connection; every later packet (DTLS, SRTP, SCTP, consent checks) is routed by its source
//! address alone.
//!
//! The driver still keys its sockets and host candidates by the (now closed) ephemeral
//! address, so the SDP it produces advertises that address. [`rewrite_candidate`] and
//! [`rewrite_sdp`] replace it with the mux's (or an announced) address before it is signalled.
//!
//! Limitations, by design of this approach:
//! * Muxed connections must bind exactly one UDP address (`with_udp_addrs(vec![ip:0])`, a
//!   concrete IP, not a wildcard): each bound address becomes one [`MuxedSocket`] under the
//!   same ufrag, and only the newest is reachable by ufrag.
//! * No STUN/TURN servers on muxed connections: a server's responses come from one address,
//!   which can be mapped to one connection only. Announce the public IP instead.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::debug;
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, RecvMeta, Runtime,
    TokioRuntime, Transmit,
};

/// Datagrams queued per connection before new ones are dropped. A driver that falls this far
/// behind is stalled; dropping (and counting) keeps one slow connection from growing memory.
const QUEUE_CAPACITY: usize = 1024;

/// Remote addresses one connection may claim. A peer has a handful of candidates; the cap
/// stops anyone who learned a ufrag from growing the table with spoofed source addresses.
const MAX_ADDRESSES_PER_CONNECTION: usize = 64;

/// Largest UDP payload, so the shared receive never truncates.
const RECV_BUF_LEN: usize = 65_535;

/// Datagrams drained per readiness event before yielding, so a flood cannot pin a worker.
const RECV_BURST: usize = 256;

const STUN_HEADER_LEN: usize = 20;
const STUN_MAGIC_COOKIE: [u8; 4] = 0x2112_A442u32.to_be_bytes();
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_ATTR_USERNAME: u16 = 0x0006;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-updated in a way
    // that matters more than losing the whole mux, so keep serving.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counters and table sizes, for metrics and for tests proving teardown leaves nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MuxStats {
    /// Registered local ufrags (peer connections reachable by STUN).
    pub connections: usize,
    /// Live [`MuxedSocket`]s (normally equal to `connections`).
    pub sockets: usize,
    /// Remote addresses currently mapped to a connection.
    pub addresses: usize,
    /// Datagrams from unknown addresses that were not a STUN Binding request for a
    /// registered ufrag.
    pub dropped_unroutable: u64,
    /// Datagrams dropped because their connection's queue was full.
    pub dropped_queue_full: u64,
}

/// One received datagram waiting for its connection's driver.
struct Datagram {
    from: SocketAddr,
    payload: Bytes,
}

struct Registration {
    ufrag: String,
    tx: mpsc::Sender<Datagram>,
    addresses: usize,
}

enum Delivery {
    Delivered,
    QueueFull,
    Unroutable,
}

/// Routing state. Keyed by socket id rather than ufrag so that an old socket unregistering
/// can never remove a newer registration under the same ufrag (an ICE restart rebinds).
#[derive(Default)]
struct RouteTable {
    sockets: HashMap<u64, Registration>,
    by_ufrag: HashMap<String, u64>,
    by_addr: HashMap<SocketAddr, u64>,
}

impl RouteTable {
    /// Maps `addr` to socket `id` unless it is already mapped. Returns whether `addr` now
    /// routes to `id`.
    fn map_addr(&mut self, addr: SocketAddr, id: u64) -> bool {
        if let Some(&owner) = self.by_addr.get(&addr) {
            return owner == id;
        }
        let Some(registration) = self.sockets.get_mut(&id) else {
            return false;
        };
        if registration.addresses >= MAX_ADDRESSES_PER_CONNECTION {
            debug!(
                socket_id = id,
                "udp mux: address limit reached, not mapping"
            );
            return false;
        }
        registration.addresses += 1;
        self.by_addr.insert(addr, id);
        debug!(socket_id = id, "udp mux: mapped remote address");
        true
    }

    fn deliver(&self, id: u64, datagram: Datagram) -> Delivery {
        match self.sockets.get(&id).map(|r| r.tx.try_send(datagram)) {
            Some(Ok(())) => Delivery::Delivered,
            Some(Err(mpsc::error::TrySendError::Full(_))) => Delivery::QueueFull,
            // Receiver gone: the socket is mid-drop and about to unregister.
            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => Delivery::Unroutable,
        }
    }

    fn unregister(&mut self, id: u64) {
        let Some(registration) = self.sockets.remove(&id) else {
            return;
        };
        if self.by_ufrag.get(&registration.ufrag) == Some(&id) {
            self.by_ufrag.remove(&registration.ufrag);
        }
        if registration.addresses > 0 {
            self.by_addr.retain(|_, owner| *owner != id);
        }
    }
}

/// The shared UDP socket and its routing table. See the module docs.
pub struct UdpMux {
    socket: Arc<tokio::net::UdpSocket>,
    local_addr: SocketAddr,
    table: Mutex<RouteTable>,
    next_socket_id: AtomicU64,
    closed: AtomicBool,
    dropped_unroutable: AtomicU64,
    dropped_queue_full: AtomicU64,
    recv_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for UdpMux {
    // Hand-written so a stray `{:?}` can never put an IP address in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpMux")
            .field("port", &self.local_addr.port())
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl UdpMux {
    /// Binds the shared socket and starts the receive task. Must be called inside a tokio
    /// runtime; the task ends when the mux is closed or dropped.
    pub async fn bind(addr: SocketAddr) -> io::Result<Arc<UdpMux>> {
        let socket = Arc::new(tokio::net::UdpSocket::bind(addr).await?);
        let local_addr = socket.local_addr()?;
        let mux = Arc::new(UdpMux {
            socket: Arc::clone(&socket),
            local_addr,
            table: Mutex::new(RouteTable::default()),
            next_socket_id: AtomicU64::new(1),
            closed: AtomicBool::new(false),
            dropped_unroutable: AtomicU64::new(0),
            dropped_queue_full: AtomicU64::new(0),
            recv_task: Mutex::new(None),
        });
        // Weak, so the task never keeps the mux alive; `Drop` aborts it.
        let task = tokio::spawn(recv_loop(Arc::downgrade(&mux), socket));
        *lock(&mux.recv_task) = Some(task);
        debug!(port = local_addr.port(), "udp mux: bound");
        Ok(mux)
    }

    /// The address the shared socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A runtime for one peer connection whose local ICE ufrag is `ufrag` (set the same value
    /// with `SettingEngineBuilder::with_ice_credentials`; it must be non-empty and contain no
    /// `:`). The runtime holds the mux weakly: keep the `Arc<UdpMux>` alive.
    pub fn runtime_for(self: &Arc<Self>, ufrag: &str) -> Arc<MuxRuntime> {
        Arc::new(MuxRuntime {
            mux: Arc::downgrade(self),
            ufrag: ufrag.to_owned(),
            inner: TokioRuntime,
            driver_addrs: Mutex::new(Vec::new()),
        })
    }

    /// Stops the receive task and unregisters every connection. Their sockets then report
    /// an error to their drivers, which stop; the port is released once the last
    /// [`MuxedSocket`] and the owner's `Arc` are gone. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(task) = lock(&self.recv_task).take() {
            task.abort();
        }
        // Dropping the senders is what wakes every parked `poll_recv` with an error.
        *lock(&self.table) = RouteTable::default();
        debug!("udp mux: closed");
    }

    /// A snapshot of the routing table sizes and drop counters.
    pub fn stats(&self) -> MuxStats {
        let table = lock(&self.table);
        MuxStats {
            connections: table.by_ufrag.len(),
            sockets: table.sockets.len(),
            addresses: table.by_addr.len(),
            dropped_unroutable: self.dropped_unroutable.load(Ordering::Relaxed),
            dropped_queue_full: self.dropped_queue_full.load(Ordering::Relaxed),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn register(self: &Arc<Self>, ufrag: &str, driver_addr: SocketAddr) -> io::Result<MuxedSocket> {
        if self.is_closed() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "udp mux is closed",
            ));
        }
        let id = self.next_socket_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let mut table = lock(&self.table);
        table.sockets.insert(
            id,
            Registration {
                ufrag: ufrag.to_owned(),
                tx,
                addresses: 0,
            },
        );
        // The newest socket wins: after an ICE-restart rebind the old one is going away.
        if table.by_ufrag.insert(ufrag.to_owned(), id).is_some() {
            debug!(socket_id = id, "udp mux: replaced an existing registration");
        }
        drop(table);
        debug!(socket_id = id, "udp mux: registered connection");
        Ok(MuxedSocket {
            mux: Arc::clone(self),
            id,
            driver_addr,
            rx: Mutex::new(rx),
            known_peers: Mutex::new(Vec::new()),
        })
    }

    fn unregister(&self, id: u64) {
        lock(&self.table).unregister(id);
        debug!(socket_id = id, "udp mux: unregistered connection");
    }

    /// Routes one received datagram; see the module docs for the rules.
    fn route(&self, from: SocketAddr, datagram: &[u8]) {
        let from = canonical(from);
        let queued = Datagram {
            from,
            payload: Bytes::copy_from_slice(datagram),
        };
        let mut table = lock(&self.table);
        let target = match table.by_addr.get(&from) {
            Some(&id) => Some(id),
            None => stun_binding_local_ufrag(datagram)
                .and_then(|ufrag| table.by_ufrag.get(ufrag).copied())
                .filter(|&id| table.map_addr(from, id)),
        };
        let delivery = match target {
            Some(id) => table.deliver(id, queued),
            None => Delivery::Unroutable,
        };
        drop(table);
        match delivery {
            Delivery::Delivered => {}
            Delivery::QueueFull => {
                self.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            }
            Delivery::Unroutable => {
                self.dropped_unroutable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The destination as the shared socket needs it: an IPv6 socket cannot send to a plain
    /// IPv4 address, only to its v4-mapped form.
    fn wire_addr(&self, addr: SocketAddr) -> SocketAddr {
        match (self.local_addr, addr) {
            (SocketAddr::V6(_), SocketAddr::V4(v4)) => {
                SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            _ => addr,
        }
    }
}

impl Drop for UdpMux {
    fn drop(&mut self) {
        // The task only holds a Weak, but it may be parked in `readable()`; don't leave it
        // holding the socket open until the next datagram.
        if let Some(task) = self
            .recv_task
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }
}

/// Remote addresses are keyed in plain IPv4 form, so a dual-stack mux and a driver that
/// thinks in IPv4 agree on them.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

async fn recv_loop(mux: Weak<UdpMux>, socket: Arc<tokio::net::UdpSocket>) {
    let mut buf = vec![0u8; RECV_BUF_LEN];
    loop {
        if let Err(err) = socket.readable().await {
            debug!(kind = ?err.kind(), "udp mux: socket no longer readable, stopping");
            return;
        }
        let Some(mux) = mux.upgrade() else {
            return;
        };
        if mux.is_closed() {
            return;
        }
        let mut burst = 0;
        while burst < RECV_BURST {
            match socket.try_recv_from(&mut buf) {
                Ok((n, from)) => mux.route(from, &buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => {
                    // E.g. an ICMP error surfaced by the kernel; it is consumed by this call.
                    debug!(kind = ?err.kind(), "udp mux: receive error");
                    break;
                }
            }
            burst += 1;
        }
        drop(mux);
        if burst > 0 {
            tokio::task::yield_now().await;
        }
    }
}

/// A [`Runtime`] for one muxed peer connection: [`TokioRuntime`] except that UDP sockets
/// come from the [`UdpMux`].
pub struct MuxRuntime {
    mux: Weak<UdpMux>,
    ufrag: String,
    inner: TokioRuntime,
    driver_addrs: Mutex<Vec<SocketAddr>>,
}

impl fmt::Debug for MuxRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxRuntime").finish_non_exhaustive()
    }
}

impl MuxRuntime {
    /// The addresses the driver's own (closed) sockets had, i.e. what its host candidates
    /// advertise. Pass them to [`rewrite_candidate`] / [`rewrite_sdp`].
    pub fn driver_addrs(&self) -> Vec<SocketAddr> {
        lock(&self.driver_addrs).clone()
    }

    /// The local ICE ufrag this runtime registers connections under.
    pub fn ufrag(&self) -> &str {
        &self.ufrag
    }
}

impl Runtime for MuxRuntime {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.inner.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let driver_addr = socket.local_addr()?;
        // The driver wraps its mDNS socket through here too (driver.rs `bind_transports`);
        // that one must stay a real multicast socket.
        if driver_addr.port() == rtc::mdns::MDNS_PORT || driver_addr.ip().is_multicast() {
            return self.inner.wrap_udp_socket(socket);
        }
        let mux = self.mux.upgrade().ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotConnected, "udp mux has been dropped")
        })?;
        // Closing it frees the ephemeral port; only its address lives on, as the driver's key.
        drop(socket);
        let muxed = mux.register(&self.ufrag, driver_addr)?;
        let mut addrs = lock(&self.driver_addrs);
        if !addrs.contains(&driver_addr) {
            addrs.push(driver_addr);
        }
        Ok(Arc::new(muxed))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.yield_now()
    }

    fn name(&self) -> &'static str {
        "veil-udp-mux"
    }
}

/// One peer connection's view of the shared socket.
pub struct MuxedSocket {
    mux: Arc<UdpMux>,
    id: u64,
    /// What the driver's own socket was bound to; reported as our local address so the
    /// driver's socket map and host candidates stay consistent.
    driver_addr: SocketAddr,
    rx: Mutex<mpsc::Receiver<Datagram>>,
    /// Destinations already known to route to this socket, so the send path skips the shared
    /// table lock. Only touched by this connection's driver.
    known_peers: Mutex<Vec<SocketAddr>>,
}

impl fmt::Debug for MuxedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MuxedSocket")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MuxedSocket {
    /// Our ICE agent may check a peer before that peer's first request reaches us, and the
    /// peer's answers carry no USERNAME, so claim every destination we send to.
    fn claim_destination(&self, destination: SocketAddr) {
        let destination = canonical(destination);
        let mut known = lock(&self.known_peers);
        if known.contains(&destination) {
            return;
        }
        if lock(&self.mux.table).map_addr(destination, self.id)
            && known.len() < MAX_ADDRESSES_PER_CONNECTION
        {
            known.push(destination);
        }
    }
}

impl AsyncUdpSocket for MuxedSocket {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.driver_addr)
    }

    fn poll_send(&self, cx: &mut Context<'_>, transmit: &Transmit<'_>) -> Poll<io::Result<usize>> {
        if self.mux.is_closed() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "udp mux is closed",
            )));
        }
        self.claim_destination(transmit.destination);
        // `segment_size` is never set: we report `max_gso_segments() == 1` (the default),
        // which the driver checks before batching.
        let destination = self.mux.wire_addr(transmit.destination);
        self.mux
            .socket
            .poll_send_to(cx, transmit.contents, destination)
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let max = bufs.len().min(meta.len());
        if max == 0 {
            return Poll::Ready(Ok(0));
        }
        let mut rx = lock(&self.rx);
        let mut filled = 0;
        while filled < max {
            let datagram = if filled == 0 {
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(datagram)) => datagram,
                    // Every sender is gone only when the mux was closed.
                    Poll::Ready(None) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "udp mux is closed",
                        )));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            } else {
                match rx.try_recv() {
                    Ok(datagram) => datagram,
                    Err(_) => break,
                }
            };
            let buf = &mut bufs[filled];
            // Truncates like a real socket would if the caller's buffer is too small.
            let len = datagram.payload.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram.payload[..len]);
            let mut m = RecvMeta::default();
            m.addr = datagram.from;
            m.len = len;
            // One datagram per buffer (no GRO); `stride` 0 would divide by zero downstream.
            m.stride = len.max(1);
            m.dst_ip = Some(self.driver_addr.ip());
            meta[filled] = m;
            filled += 1;
        }
        Poll::Ready(Ok(filled))
    }
}

impl Drop for MuxedSocket {
    fn drop(&mut self) {
        self.mux.unregister(self.id);
    }
}

/// The local (SFU-side) ufrag of a STUN Binding request, i.e. the part of its USERNAME
/// attribute before the `:`. `None` for anything else, including malformed messages.
pub fn stun_binding_local_ufrag(datagram: &[u8]) -> Option<&str> {
    let header = datagram.get(..STUN_HEADER_LEN)?;
    // The top two bits of every STUN message are zero (RFC 5389 §6), which is what sets it
    // apart from DTLS, RTP and RTCP on the same port (RFC 7983).
    if header[0] & 0xC0 != 0 {
        return None;
    }
    if u16::from_be_bytes([header[0], header[1]]) != STUN_BINDING_REQUEST {
        return None;
    }
    if header[4..8] != STUN_MAGIC_COOKIE {
        return None;
    }
    let body_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if body_len % 4 != 0 {
        return None;
    }
    let mut attrs = datagram.get(STUN_HEADER_LEN..STUN_HEADER_LEN + body_len)?;
    while !attrs.is_empty() {
        let attr_header = attrs.get(..4)?;
        let attr_type = u16::from_be_bytes([attr_header[0], attr_header[1]]);
        let attr_len = usize::from(u16::from_be_bytes([attr_header[2], attr_header[3]]));
        let value = attrs.get(4..4 + attr_len)?;
        if attr_type == STUN_ATTR_USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            let (local, _remote) = username.split_once(':')?;
            return (!local.is_empty()).then_some(local);
        }
        // Values are padded to a multiple of 4 bytes.
        let padded = attr_len.div_ceil(4) * 4;
        attrs = attrs.get(4 + padded..)?;
    }
    None
}

/// Byte ranges of the whitespace-separated tokens of `s`.
fn token_spans(s: &str) -> Vec<Range<usize>> {
    let mut spans = Vec::new();
    let mut start = None;
    for (i, b) in s.bytes().enumerate() {
        let is_space = b == b' ' || b == b'\t';
        match (start, is_space) {
            (None, false) => start = Some(i),
            (Some(s0), true) => {
                spans.push(s0..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s0) = start {
        spans.push(s0..s.len());
    }
    spans
}

/// Rewrites the connection address and port of an ICE candidate attribute value
/// (`[candidate:]FOUNDATION COMPONENT udp PRIORITY IP PORT typ ...`) to `announced` when
/// `(IP, PORT)` is one of `driver_addrs`. Any other candidate is returned unchanged.
pub fn rewrite_candidate(
    candidate: &str,
    driver_addrs: &[SocketAddr],
    announced: SocketAddr,
) -> String {
    let spans = token_spans(candidate);
    let (Some(transport), Some(ip), Some(port)) = (spans.get(2), spans.get(4), spans.get(5)) else {
        return candidate.to_owned();
    };
    if !candidate[transport.clone()].eq_ignore_ascii_case("udp") {
        return candidate.to_owned();
    }
    let (Ok(ip_value), Ok(port_value)) = (
        candidate[ip.clone()].parse::<IpAddr>(),
        candidate[port.clone()].parse::<u16>(),
    ) else {
        return candidate.to_owned();
    };
    let advertised = SocketAddr::new(ip_value, port_value);
    if !driver_addrs.contains(&advertised) {
        return candidate.to_owned();
    }
    format!(
        "{}{}{}{}{}",
        &candidate[..ip.start],
        announced.ip(),
        &candidate[ip.end..port.start],
        announced.port(),
        &candidate[port.end..]
    )
}

/// Applies [`rewrite_candidate`] to every `a=candidate:` line of `sdp`, keeping each line's
/// ending (`\r\n` or `\n`).
pub fn rewrite_sdp(sdp: &str, driver_addrs: &[SocketAddr], announced: SocketAddr) -> String {
    let mut out = String::with_capacity(sdp.len() + 16);
    for line in sdp.split_inclusive('\n') {
        let body_len = line
            .strip_suffix("\r\n")
            .or_else(|| line.strip_suffix('\n'))
            .map_or(line.len(), str::len);
        let (body, ending) = line.split_at(body_len);
        match body.strip_prefix("a=") {
            Some(value) if value.starts_with("candidate:") => {
                out.push_str("a=");
                out.push_str(&rewrite_candidate(value, driver_addrs, announced));
            }
            _ => out.push_str(body),
        }
        out.push_str(ending);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN message: header with `msg_type`, `cookie`, then `attrs` (type, value) padded.
    fn stun(msg_type: u16, cookie: [u8; 4], attrs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in attrs {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(v.len() as u16).to_be_bytes());
            body.extend_from_slice(v);
            while body.len() % 4 != 0 {
                body.push(0);
            }
        }
        let mut msg = Vec::new();
        msg.extend_from_slice(&msg_type.to_be_bytes());
        msg.extend_from_slice(&(body.len() as u16).to_be_bytes());
        msg.extend_from_slice(&cookie);
        msg.extend_from_slice(&[7u8; 12]);
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn stun_valid_binding_request() {
        let msg = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"sfuFrag:peerFrag")],
        );
        assert_eq!(stun_binding_local_ufrag(&msg), Some("sfuFrag"));
    }

    #[test]
    fn stun_username_after_other_attributes_with_padding() {
        // PRIORITY (4 bytes) then a 5-byte SOFTWARE (padded to 8) before USERNAME.
        let msg = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[
                (0x0024, &[0, 0, 0, 1]),
                (0x8022, b"abcde"),
                (STUN_ATTR_USERNAME, b"abc:d"),
            ],
        );
        assert_eq!(stun_binding_local_ufrag(&msg), Some("abc"));
    }

    #[test]
    fn stun_username_itself_padded() {
        // "ab1:x" is 5 bytes: the value must be read without its 3 padding bytes.
        let msg = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"ab1:x"), (0x0025, b"")],
        );
        assert_eq!(msg.len(), 20 + 4 + 8 + 4);
        assert_eq!(stun_binding_local_ufrag(&msg), Some("ab1"));
    }

    #[test]
    fn stun_wrong_cookie() {
        let msg = stun(
            STUN_BINDING_REQUEST,
            [0x21, 0x12, 0xA4, 0x43],
            &[(STUN_ATTR_USERNAME, b"a:b")],
        );
        assert_eq!(stun_binding_local_ufrag(&msg), None);
    }

    #[test]
    fn stun_not_a_binding_request() {
        // Binding success response.
        let msg = stun(0x0101, STUN_MAGIC_COOKIE, &[(STUN_ATTR_USERNAME, b"a:b")]);
        assert_eq!(stun_binding_local_ufrag(&msg), None);
        // Top bits set: DTLS/RTP range, not STUN.
        let mut rtp = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"a:b")],
        );
        rtp[0] |= 0x80;
        assert_eq!(stun_binding_local_ufrag(&rtp), None);
    }

    #[test]
    fn stun_truncated() {
        let msg = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"abcd:efgh")],
        );
        // Shorter than the declared body.
        assert_eq!(stun_binding_local_ufrag(&msg[..msg.len() - 4]), None);
        // Shorter than the header.
        assert_eq!(stun_binding_local_ufrag(&msg[..12]), None);
        // Attribute length runs past the body.
        let mut bad = msg.clone();
        bad[22..24].copy_from_slice(&200u16.to_be_bytes());
        assert_eq!(stun_binding_local_ufrag(&bad), None);
        // Body length not a multiple of 4.
        let mut odd = msg;
        odd[2..4].copy_from_slice(&13u16.to_be_bytes());
        assert_eq!(stun_binding_local_ufrag(&odd), None);
    }

    #[test]
    fn stun_username_edge_cases() {
        let non_utf8 = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, &[0xff, 0xfe, b':', b'a'])],
        );
        assert_eq!(stun_binding_local_ufrag(&non_utf8), None);
        let no_colon = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"abc")],
        );
        assert_eq!(stun_binding_local_ufrag(&no_colon), None);
        let empty_local = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b":abc")],
        );
        assert_eq!(stun_binding_local_ufrag(&empty_local), None);
        let no_username = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(0x0024, &[0; 4])],
        );
        assert_eq!(stun_binding_local_ufrag(&no_username), None);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rewrites_matching_host_candidate() {
        let driver = [addr("10.0.0.5:40001")];
        let announced = addr("203.0.113.7:7882");
        assert_eq!(
            rewrite_candidate(
                "candidate:1 1 udp 2130706431 10.0.0.5 40001 typ host generation 0",
                &driver,
                announced
            ),
            "candidate:1 1 udp 2130706431 203.0.113.7 7882 typ host generation 0"
        );
        // Without the prefix, and UDP in upper case.
        assert_eq!(
            rewrite_candidate(
                "1 1 UDP 2130706431 10.0.0.5 40001 typ host",
                &driver,
                announced
            ),
            "1 1 UDP 2130706431 203.0.113.7 7882 typ host"
        );
    }

    #[test]
    fn leaves_other_candidates_alone() {
        let driver = [addr("10.0.0.5:40001")];
        let announced = addr("203.0.113.7:7882");
        for c in [
            "candidate:1 1 udp 2130706431 10.0.0.5 40002 typ host",
            "candidate:1 1 udp 2130706431 10.0.0.6 40001 typ host",
            "candidate:1 1 tcp 2130706431 10.0.0.5 40001 typ host tcptype passive",
            "candidate:1 1 udp 2130706431 abcd.local 40001 typ host",
            "candidate:1 1 udp",
            "",
        ] {
            assert_eq!(rewrite_candidate(c, &driver, announced), c);
        }
    }

    #[test]
    fn rewrites_ipv6() {
        let driver = [addr("[fd00::5]:40001")];
        let announced = addr("[2001:db8::1]:7882");
        assert_eq!(
            rewrite_candidate(
                "candidate:2 1 udp 2130706431 fd00::5 40001 typ host",
                &driver,
                announced
            ),
            "candidate:2 1 udp 2130706431 2001:db8::1 7882 typ host"
        );
    }

    #[test]
    fn rewrites_sdp_keeping_crlf() {
        let driver = [addr("127.0.0.1:40001")];
        let announced = addr("127.0.0.1:7882");
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                   a=candidate:1 1 udp 2130706431 127.0.0.1 40001 typ host\r\n\
                   a=candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
                   a=end-of-candidates\r\n";
        let expected = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
                        a=candidate:1 1 udp 2130706431 127.0.0.1 7882 typ host\r\n\
                        a=candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host\r\n\
                        a=end-of-candidates\r\n";
        assert_eq!(rewrite_sdp(sdp, &driver, announced), expected);
        // LF-only and no trailing newline survive too.
        let lf = "a=candidate:1 1 udp 1 127.0.0.1 40001 typ host\nv=0";
        assert_eq!(
            rewrite_sdp(lf, &driver, announced),
            "a=candidate:1 1 udp 1 127.0.0.1 7882 typ host\nv=0"
        );
    }

    #[test]
    fn canonical_unmaps_v4_mapped_addresses() {
        assert_eq!(
            canonical(addr("[::ffff:192.0.2.1]:5000")),
            addr("192.0.2.1:5000")
        );
        assert_eq!(
            canonical(addr("[2001:db8::1]:5000")),
            addr("[2001:db8::1]:5000")
        );
    }

    #[tokio::test]
    async fn routes_by_ufrag_then_address_and_unregisters_on_drop() {
        let mux = UdpMux::bind(addr("127.0.0.1:0")).await.unwrap();
        let driver_addr = addr("127.0.0.1:1");
        let socket = mux.register("srvfrag", driver_addr).unwrap();
        let peer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let peer_addr = peer.local_addr().unwrap();

        // Not STUN from an unknown address: dropped.
        peer.send_to(b"\x80hello", mux.local_addr()).await.unwrap();
        // STUN for the registered ufrag: maps the address.
        let request = stun(
            STUN_BINDING_REQUEST,
            STUN_MAGIC_COOKIE,
            &[(STUN_ATTR_USERNAME, b"srvfrag:cli")],
        );
        peer.send_to(&request, mux.local_addr()).await.unwrap();
        // Now plain data from the mapped address is delivered.
        peer.send_to(b"\x80data", mux.local_addr()).await.unwrap();

        let mut got = Vec::new();
        let mut buf = [0u8; 2000];
        while got.len() < 2 {
            let (n, from) =
                tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
                    .await
                    .unwrap()
                    .unwrap();
            assert_eq!(from, peer_addr);
            got.push(buf[..n].to_vec());
        }
        assert_eq!(got[0], request);
        assert_eq!(got[1], b"\x80data");
        assert_eq!(mux.stats().dropped_unroutable, 1);
        assert_eq!(mux.stats().addresses, 1);

        // Sending claims the destination and reaches the peer from the mux address.
        let other = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(b"out", other.local_addr().unwrap())
            .await
            .unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), other.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buf[..n], from), (&b"out"[..], mux.local_addr()));
        assert_eq!(mux.stats().addresses, 2);

        // A newer socket under the same ufrag survives the old one being dropped.
        let newer = mux.register("srvfrag", driver_addr).unwrap();
        drop(socket);
        let stats = mux.stats();
        assert_eq!(
            (stats.connections, stats.sockets, stats.addresses),
            (1, 1, 0)
        );
        drop(newer);
        let stats = mux.stats();
        assert_eq!(
            (stats.connections, stats.sockets, stats.addresses),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn close_fails_receivers_and_refuses_registration() {
        let mux = UdpMux::bind(addr("127.0.0.1:0")).await.unwrap();
        let socket = mux.register("srvfrag", addr("127.0.0.1:1")).unwrap();
        mux.close();
        let mut buf = [0u8; 16];
        let err = socket.recv_from(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        assert!(mux.register("x", addr("127.0.0.1:2")).is_err());
        assert_eq!(mux.stats().sockets, 0);
    }

    #[tokio::test]
    async fn dropping_the_mux_ends_the_receive_task() {
        let mux = UdpMux::bind(addr("127.0.0.1:0")).await.unwrap();
        let local = mux.local_addr();
        drop(mux);
        // The port is free again once the task has been aborted and dropped its socket.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::net::UdpSocket::bind(local) {
                Ok(_) => break,
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(err) => panic!("port still bound: {err}"),
            }
        }
    }
}
