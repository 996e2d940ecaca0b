//! The `Origin` check that keeps other sites from opening sockets (or signing in and out)
//! with a visitor's cookie.

use axum::http::{HeaderMap, HeaderValue, header};

/// Which `Origin`s may open a socket: the request's own host, plus `CONFAB_ALLOWED_ORIGINS`.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    extra: Vec<String>,
}

impl OriginPolicy {
    /// A policy allowing the page's own origin and each of `extra` (normalised by the config).
    pub fn new(extra: Vec<String>) -> Self {
        Self { extra }
    }

    /// Whether a request with these headers, from a browser that used `host`, may open a
    /// socket. A request without `Origin` is not from a browser, so no other site's page can
    /// be behind it: it is allowed.
    pub fn allows(&self, headers: &HeaderMap, host: Option<&str>) -> bool {
        headers
            .get(header::ORIGIN)
            .is_none_or(|origin| self.allows_origin(origin, host))
    }

    /// Whether `origin` is the page's own (same host and port as `host`) or a configured one.
    pub fn allows_origin(&self, origin: &HeaderValue, host: Option<&str>) -> bool {
        let Some(origin) = origin
            .to_str()
            .ok()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        else {
            return false;
        };
        self.extra.contains(&origin) || host.is_some_and(|host| same_authority(&origin, host))
    }

    /// Whether a form post or navigation comes from another site: a foreign `Origin`, or
    /// (when the browser sent none) `Sec-Fetch-Site: cross-site`. Requests with neither are
    /// not from a browser and cannot carry a victim's cookies.
    pub fn is_cross_site(&self, headers: &HeaderMap, host: Option<&str>) -> bool {
        if let Some(origin) = headers.get(header::ORIGIN) {
            return !self.allows_origin(origin, host);
        }
        headers
            .get("sec-fetch-site")
            .is_some_and(|site| site.as_bytes() == b"cross-site")
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port as a `Host` header.
fn same_authority(origin: &str, host: &str) -> bool {
    let Ok(origin) = origin.parse::<axum::http::Uri>() else {
        return false;
    };
    let Ok(host) = format!("http://{host}").parse::<axum::http::Uri>() else {
        return false;
    };
    let default_port = match origin.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => return false,
    };
    let same_host = origin
        .host()
        .zip(host.host())
        .is_some_and(|(a, b)| a.eq_ignore_ascii_case(b));
    same_host
        && origin.port_u16().unwrap_or(default_port) == host.port_u16().unwrap_or(default_port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    #[test]
    fn cross_site_posts_are_told_from_same_site_ones() {
        let policy = OriginPolicy::default();
        let host = Some("chat.example.com");
        let cases = [
            (
                vec![("origin", "https://chat.example.com")],
                false,
                "same origin",
            ),
            (
                vec![("origin", "https://evil.example")],
                true,
                "foreign origin",
            ),
            (vec![("origin", "null")], true, "opaque origin"),
            (
                vec![("sec-fetch-site", "cross-site")],
                true,
                "fetch metadata only",
            ),
            (
                vec![("sec-fetch-site", "same-origin")],
                false,
                "same-origin metadata",
            ),
            (
                vec![("sec-fetch-site", "none")],
                false,
                "typed into the address bar",
            ),
            (vec![], false, "no browser headers: not a browser"),
        ];
        for (pairs, cross, case) in cases {
            assert_eq!(
                policy.is_cross_site(&headers(&pairs), host),
                cross,
                "{case}"
            );
        }
    }

    #[test]
    fn origins_must_match_the_host_or_the_allowed_list() {
        let policy = OriginPolicy::new(vec!["https://chat.example.com".into()]);
        let cases = [
            (
                vec![("host", "127.0.0.1:3000")],
                true,
                "no Origin: not a browser",
            ),
            (
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "http://127.0.0.1:3000"),
                ],
                true,
                "same origin",
            ),
            (
                vec![("host", "localhost"), ("origin", "http://localhost:80")],
                true,
                "default port spelled out",
            ),
            (
                vec![
                    ("host", "Chat.Local:8080"),
                    ("origin", "http://chat.local:8080"),
                ],
                true,
                "case of the host",
            ),
            (
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "http://127.0.0.1:3001"),
                ],
                false,
                "other port",
            ),
            (
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "http://evil.example"),
                ],
                false,
                "other host",
            ),
            (
                vec![("host", "127.0.0.1:3000"), ("origin", "null")],
                false,
                "opaque origin",
            ),
            (
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "https://chat.example.com"),
                ],
                true,
                "allowed list",
            ),
            (
                vec![
                    ("host", "127.0.0.1:3000"),
                    ("origin", "https://chat.example.com.evil"),
                ],
                false,
                "suffix trick",
            ),
            (
                vec![("origin", "http://127.0.0.1:3000")],
                false,
                "no Host to compare with",
            ),
        ];
        for (pairs, allowed, case) in cases {
            let headers = headers(&pairs);
            let host = headers.get("host").map(|host| host.to_str().unwrap());
            assert_eq!(policy.allows(&headers, host), allowed, "{case}");
        }
    }
}
