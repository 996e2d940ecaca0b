//! Sign-in and sign-out, the signed `name` cookie that identifies a user, and the `Origin`
//! check that keeps other sites from opening sockets with a visitor's cookie.
//!
//! The cookie is named `name`, as in the tutorial, and carries base64 of the user JSON, signed
//! with the `cookie` crate's signed jar (HMAC-SHA256 under a key derived from `CONFAB_SECRET`
//! by HKDF). Its value is the 44-character base64 MAC followed by the base64 JSON. A cookie whose
//! MAC does not verify is treated as absent: a forged or edited cookie never names a user.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cookie::{Cookie, CookieJar, Key, SameSite};
use serde::Deserialize;

use crate::app::AppState;
use crate::client::ClientInfo;
use crate::error::AppError;
use crate::metrics::Rejection;
use crate::pages::found;
use crate::user::{Identity, User, UserName};

/// The cookie's name, as in the tutorial.
pub const COOKIE_NAME: &str = "name";
/// How long a sign-in lasts in the browser.
pub const COOKIE_MAX_AGE: cookie::time::Duration = cookie::time::Duration::days(30);

/// Signs and checks the user cookie. One per node, built from `CONFAB_SECRET`.
pub struct CookieCodec {
    key: Key,
}

impl CookieCodec {
    /// A codec signing with a key derived from `secret` (at least 32 bytes, checked by the
    /// configuration), or with a random key when there is none.
    ///
    /// # Panics
    /// If `secret` is shorter than 32 bytes; `Config` never lets one through.
    pub fn new(secret: Option<&[u8]>) -> Self {
        let key = match secret {
            Some(secret) => Key::derive_from(secret),
            None => Key::generate(),
        };
        Self { key }
    }

    /// The `Set-Cookie` value that signs `user` in; `Secure` when the browser used HTTPS.
    pub fn issue(&self, user: &User, https: bool) -> HeaderValue {
        // A struct of three strings always serializes.
        let json = serde_json::to_vec(user).expect("user serializes");
        let mut jar = CookieJar::new();
        jar.signed_mut(&self.key).add(
            Cookie::build((COOKIE_NAME, BASE64.encode(json)))
                .http_only(true)
                .same_site(SameSite::Lax)
                .path("/")
                .secure(https)
                .max_age(COOKIE_MAX_AGE),
        );
        let cookie = jar.get(COOKIE_NAME).expect("the cookie was just added");
        // base64, the MAC and the attributes are all visible ASCII.
        HeaderValue::from_str(&cookie.to_string()).expect("cookie is a valid header value")
    }

    /// The `Set-Cookie` value that signs a user out.
    pub fn removal(&self, https: bool) -> HeaderValue {
        let cookie = Cookie::build((COOKIE_NAME, ""))
            .http_only(true)
            .same_site(SameSite::Lax)
            .path("/")
            .secure(https)
            .max_age(cookie::time::Duration::ZERO)
            .expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
        HeaderValue::from_str(&cookie.to_string()).expect("cookie is a valid header value")
    }

    /// The user named by a validly signed `name` cookie in `headers`, if any.
    pub fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        let jar = CookieJar::new();
        let signed = jar.signed(&self.key);
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(Cookie::split_parse)
            .filter_map(Result::ok)
            .filter(|cookie| cookie.name() == COOKIE_NAME)
            .find_map(|cookie| signed.verify(cookie.into_owned()))
            .and_then(|cookie| decode_user(cookie.value()))
            .map(Identity::new)
    }
}

/// base64 JSON → a user, or `None` for anything malformed. Only ever called on a value whose
/// signature verified, so garbage here means a codec bug or a changed format, not an attack.
fn decode_user(value: &str) -> Option<User> {
    let json = BASE64.decode(value).ok()?;
    let user: User = serde_json::from_slice(&json).ok()?;
    (!user.id.is_empty()).then_some(user)
}

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

/// The sign-in form's one field.
#[derive(Debug, Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    name: String,
}

/// `GET /signin`: the sign-in form.
pub async fn show_signin(State(state): State<AppState>) -> Result<Response, AppError> {
    Ok(state.templates.signin(None, "")?.into_response())
}

/// `POST /signin`: a valid name sets the cookie and redirects to `/`; an invalid one gets the
/// form again with the reason, status 400 and no cookie. A post from another site gets 403
/// (no one may be signed in behind their back), and an address that signed in too often
/// gets 429 with `Retry-After`.
pub async fn post_signin(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Result<Response, AppError> {
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return Ok((StatusCode::FORBIDDEN, "Cross-site sign-in refused.\n").into_response());
    }
    if let Err(wait) = state.signins.check(client.ip, tokio::time::Instant::now()) {
        state.metrics.reject(Rejection::SigninRateLimited);
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let reason = format!("Too many sign-ins from your network. Try again in {seconds} s.");
        let page = state.templates.signin(Some(&reason), &form.name)?;
        let retry_after = HeaderValue::from(seconds);
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after)],
            page,
        )
            .into_response());
    }
    match UserName::parse(&form.name) {
        Ok(name) => {
            let user = User::sign_up(name);
            let mut response = found("/");
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.cookies.issue(&user, client.https));
            Ok(response)
        }
        Err(reason) => {
            state.metrics.reject(Rejection::InvalidName);
            let page = state
                .templates
                .signin(Some(&reason.to_string()), &form.name)?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
    }
}

/// `POST /signout` (the page's form): clears the cookie and redirects to `/signin`; a post
/// from another site gets 403 and changes nothing.
pub async fn post_signout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Response {
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return (StatusCode::FORBIDDEN, "Cross-site sign-out refused.\n").into_response();
    }
    signed_out(&state, &client)
}

/// `GET /signout`: clears the cookie and redirects to `/signin`, as the tutorial did. A link
/// followed from another site changes nothing: it just goes to `/`.
pub async fn get_signout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Response {
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return found("/");
    }
    signed_out(&state, &client)
}

fn signed_out(state: &AppState, client: &ClientInfo) -> Response {
    let mut response = found("/signin");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.cookies.removal(client.https));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn ann() -> User {
        User {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "Ann 🦀 王".into(),
            image: "/static/avatars/1.svg".into(),
        }
    }

    fn cookie_pair(set_cookie: &HeaderValue) -> String {
        set_cookie
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned()
    }

    #[test]
    fn an_issued_cookie_names_its_user() {
        let codec = CookieCodec::new(Some(b"0123456789abcdef0123456789abcdef"));
        let set_cookie = codec.issue(&ann(), false);
        let text = set_cookie.to_str().unwrap();
        for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(text.contains(attribute), "{attribute} in {text}");
        }
        let identity = codec
            .identify(&headers(&[("cookie", &cookie_pair(&set_cookie))]))
            .unwrap();
        assert_eq!(identity.user(), &ann());
    }

    #[test]
    fn the_cookie_value_is_a_mac_then_base64_json() {
        let codec = CookieCodec::new(Some(b"0123456789abcdef0123456789abcdef"));
        let pair = cookie_pair(&codec.issue(&ann(), false));
        let value = pair.strip_prefix("name=").unwrap();
        let json = BASE64.decode(&value[44..]).unwrap();
        assert_eq!(serde_json::from_slice::<User>(&json).unwrap(), ann());
    }

    #[test]
    fn forged_edited_and_foreign_cookies_name_nobody() {
        let codec = CookieCodec::new(Some(b"0123456789abcdef0123456789abcdef"));
        let other = CookieCodec::new(Some(b"another-secret-of-at-least-32-bytes!!"));
        let genuine = cookie_pair(&codec.issue(&ann(), false));
        let value = genuine.strip_prefix("name=").unwrap();
        let mut mallory = ann();
        mallory.name = "mallory".into();
        let forged_json = BASE64.encode(serde_json::to_vec(&mallory).unwrap());
        let cases = [
            ("unsigned tutorial cookie", format!("name={forged_json}")),
            (
                "edited payload",
                format!("name={}{}", &value[..44], forged_json),
            ),
            (
                "signed by another key",
                cookie_pair(&other.issue(&ann(), false)),
            ),
            ("truncated", format!("name={}", &value[..40])),
            ("empty", "name=".to_owned()),
            ("wrong cookie name", format!("user={value}")),
        ];
        for (case, cookie) in cases {
            assert!(
                codec.identify(&headers(&[("cookie", &cookie)])).is_none(),
                "{case}"
            );
        }
        let among_others = format!("theme=dark; {genuine}; x=1");
        assert!(
            codec
                .identify(&headers(&[("cookie", &among_others)]))
                .is_some()
        );
    }

    #[test]
    fn the_cookie_is_secure_only_over_https() {
        let codec = CookieCodec::new(Some(b"0123456789abcdef0123456789abcdef"));
        assert!(
            codec
                .issue(&ann(), true)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert!(
            !codec
                .issue(&ann(), false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
        assert!(codec.removal(true).to_str().unwrap().contains("Secure"));
    }

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
