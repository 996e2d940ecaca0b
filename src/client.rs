//! Who is on the other end of a request: the client's address, and the host and scheme the
//! browser used.
//!
//! Behind nginx the TCP peer is the proxy, and the truth is in `X-Forwarded-*` headers — which
//! anyone can also send directly. So they are believed only when the peer is one of
//! `CONFAB_TRUSTED_PROXIES`; otherwise the peer address, `Host` and plain HTTP are what count.

use std::net::{IpAddr, SocketAddr};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use ipnet::IpNet;

use crate::app::AppState;

/// The proxies whose forwarding headers are believed. Empty by default: trust nobody.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<IpNet>,
}

/// What a request says about its client, after the trusted-proxy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address: the peer, or the nearest untrusted hop of `X-Forwarded-For`
    /// (else `X-Real-IP`) when the peer is a trusted proxy.
    pub ip: IpAddr,
    /// The host (and port) the browser used: `X-Forwarded-Host` from a trusted proxy, else
    /// `Host`.
    pub host: Option<String>,
    /// Whether the browser used HTTPS (`X-Forwarded-Proto: https` from a trusted proxy).
    pub https: bool,
}

impl TrustedProxies {
    /// Trusts the peers in `networks`.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self { networks }
    }

    /// Whether `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|network| network.contains(&ip))
    }

    /// The client behind a request from `peer` with `headers`.
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> ClientInfo {
        let peer_ip = peer.ip().to_canonical();
        let own_host = header_text(headers, header::HOST.as_str()).map(str::to_owned);
        if !self.trusts(peer_ip) {
            return ClientInfo {
                ip: peer_ip,
                host: own_host,
                https: false,
            };
        }
        let ip = self
            .forwarded_for(headers)
            .or_else(|| header_text(headers, "x-real-ip").and_then(parse_ip))
            .unwrap_or(peer_ip);
        let host = header_text(headers, "x-forwarded-host")
            .and_then(|hosts| hosts.split(',').next())
            .map(|host| host.trim().to_owned())
            .or(own_host);
        let https = header_text(headers, "x-forwarded-proto")
            .and_then(|protos| protos.split(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"));
        ClientInfo { ip, host, https }
    }

    /// The nearest hop of `X-Forwarded-For` that is not a trusted proxy: proxies append, so
    /// the entries to the left of the last trusted one are only as honest as the client.
    fn forwarded_for(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(parse_ip)
            .collect();
        hops.iter()
            .rev()
            .find(|hop| !self.trusts(**hop))
            .or_else(|| hops.first())
            .copied()
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

/// An address as proxies write it: `1.2.3.4`, `2001:db8::1`, or either with a port.
fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    text.parse::<IpAddr>()
        .ok()
        .or_else(|| text.parse::<SocketAddr>().ok().map(|addr| addr.ip()))
        .map(|ip| ip.to_canonical())
}

impl FromRequestParts<AppState> for ClientInfo {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(state
            .proxies
            .client(crate::server::peer_addr(parts), &parts.headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ])
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn forwarding_headers_from_an_untrusted_peer_are_ignored() {
        let forged = headers(&[
            ("host", "chat.example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = proxies().client(peer("203.0.113.9"), &forged);
        assert_eq!(client.ip, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client.host.as_deref(), Some("chat.example.com"));
        assert!(!client.https);
    }

    #[test]
    fn a_trusted_proxy_names_the_client_the_host_and_the_scheme() {
        let forwarded = headers(&[
            ("host", "confab:3000"),
            ("x-forwarded-for", "198.51.100.7, 10.1.2.3"),
            ("x-forwarded-host", "chat.example.com"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = proxies().client(peer("10.9.9.9"), &forwarded);
        assert_eq!(
            client.ip,
            "198.51.100.7".parse::<IpAddr>().unwrap(),
            "the nearest untrusted hop"
        );
        assert_eq!(client.host.as_deref(), Some("chat.example.com"));
        assert!(client.https);
    }

    #[test]
    fn a_client_cannot_hide_behind_a_forged_leftmost_entry() {
        let forwarded = headers(&[("x-forwarded-for", "127.0.0.1, 192.0.2.55")]);
        let client = proxies().client(peer("127.0.0.1"), &forwarded);
        assert_eq!(client.ip, "192.0.2.55".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn x_real_ip_is_the_fallback_and_the_peer_the_last_resort() {
        let real_ip = headers(&[("x-real-ip", "192.0.2.1")]);
        assert_eq!(
            proxies().client(peer("10.0.0.1"), &real_ip).ip,
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
        let nothing = headers(&[]);
        assert_eq!(
            proxies().client(peer("10.0.0.1"), &nothing).ip,
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_mapped_ipv6_peers_match_ipv4_networks() {
        assert!(proxies().trusts("::ffff:10.1.1.1".parse().unwrap()));
        assert!(
            !TrustedProxies::default().trusts("127.0.0.1".parse().unwrap()),
            "nobody is trusted by default"
        );
    }
}
