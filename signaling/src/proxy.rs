//! The client's address behind a reverse proxy. Veil limits some things per client
//! address (sockets, log-ins, sign-ups); behind a TLS proxy every connection comes from
//! the proxy, so without this all clients would share one budget. Only a proxy listed
//! in `signaling.trusted_proxies` is believed: anyone else could write any
//! `X-Forwarded-For`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::connect_info::ConnectInfo;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

/// The client a trusted proxy reports: reading `X-Forwarded-For` from the right (the
/// entry the nearest proxy appended), the first address that is not itself a trusted
/// proxy. `None` (keep the peer's address) when the header is absent or an entry on
/// the way is not an address.
pub fn forwarded_client(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    for entry in entries.iter().rev() {
        let ip: IpAddr = entry.parse().ok()?;
        if !trusted.contains(&ip) {
            return Some(ip);
        }
    }
    None
}

/// Replaces the connection's peer address with the client's when the peer is a
/// trusted proxy, for every handler after it.
pub async fn client_behind_proxy(
    State(trusted): State<Arc<Vec<IpAddr>>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(ConnectInfo(peer)) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .copied()
        && trusted.contains(&peer.ip())
        && let Some(client) = forwarded_client(request.headers(), &trusted)
    {
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(client, peer.port())));
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_rightmost_untrusted_entry_is_the_client() {
        let trusted = [ip("10.0.0.1"), ip("10.0.0.2")];
        assert_eq!(
            forwarded_client(&headers(&["203.0.113.9"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // A client cannot pick its address by writing the header itself: what it wrote
        // is to the left of what the proxy appended.
        assert_eq!(
            forwarded_client(&headers(&["198.51.100.1, 203.0.113.9"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        // Two trusted proxies in a row, split over two header lines.
        assert_eq!(
            forwarded_client(&headers(&["203.0.113.9, 10.0.0.2", "10.0.0.1"]), &trusted),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            forwarded_client(&headers(&["2001:db8::7"]), &trusted),
            Some(ip("2001:db8::7"))
        );
    }

    #[test]
    fn junk_or_nothing_keeps_the_peer_address() {
        let trusted = [ip("10.0.0.1")];
        assert_eq!(forwarded_client(&HeaderMap::new(), &trusted), None);
        assert_eq!(forwarded_client(&headers(&["unknown"]), &trusted), None);
        assert_eq!(forwarded_client(&headers(&["10.0.0.1"]), &trusted), None);
        assert_eq!(
            forwarded_client(&headers(&["203.0.113.9, junk"]), &trusted),
            None
        );
    }
}
