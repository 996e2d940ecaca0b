//! The `Cookie` header of every request is attacker-controlled. Whatever it holds, decoding
//! must not panic, and only a cookie this node signed may name a user; a cookie signed for a
//! name must name exactly that user.
#![no_main]

use axum::http::{HeaderMap, HeaderValue, header};
use confab::auth::CookieCodec;
use confab::user::{User, UserName};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-of-at-least-32-bytes!!";

static CODEC: std::sync::LazyLock<CookieCodec> = std::sync::LazyLock::new(|| CookieCodec::new(Some(SECRET)));

fuzz_target!(|data: &[u8]| {
    let codec = &*CODEC;
    let text = String::from_utf8_lossy(data);

    // 1. Arbitrary header: nothing we did not sign verifies.
    if let Ok(value) = HeaderValue::from_str(&text) {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, value);
        if let Some(identity) = codec.identify(&headers) {
            panic!("an unsigned cookie named {:?}", identity.user());
        }
    }

    // 2. A genuine cookie for a fuzzed name names that user, and one flipped byte breaks it.
    if let Ok(name) = UserName::parse(&text) {
        let user = User::sign_up(name);
        let set_cookie = codec.issue(&user, false);
        let pair = set_cookie.to_str().unwrap().split(';').next().unwrap().to_owned();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&pair).unwrap());
        assert_eq!(codec.identify(&headers).map(|identity| identity.user().clone()), Some(user));

        let position = "name=".len() + data.first().map_or(0, |b| usize::from(*b)) % (pair.len() - "name=".len());
        let mut forged = pair.into_bytes();
        forged[position] = if forged[position] == b'A' { b'B' } else { b'A' };
        let forged = String::from_utf8(forged).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(&forged).unwrap());
        assert!(codec.identify(&headers).is_none(), "an edited cookie verified: {forged}");
    }
});
