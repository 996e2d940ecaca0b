//! The signed `name` cookie that identifies a user.
//!
//! The cookie is named `name`, as in the tutorial, and carries base64 of the user JSON, signed
//! with the `cookie` crate's signed jar (HMAC-SHA256 under a key derived from `CONFAB_SECRET`
//! by HKDF). Its value is the 44-character base64 MAC followed by the base64 JSON. A cookie whose
//! MAC does not verify is treated as absent: a forged or edited cookie never names a user.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use cookie::{Cookie, CookieJar, Key, SameSite};

use crate::user::{Identity, User};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::headers;

    fn ann() -> User {
        User {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "Ann 🦀 王".into(),
            image: "/static/avatars/1.svg".into(),
            role: None,
            bot: false,
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
}
