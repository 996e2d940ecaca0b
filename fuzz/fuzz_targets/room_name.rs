//! Room names arrive in URLs and socket queries. `RoomName::parse` must accept exactly
//! `[a-z0-9][a-z0-9_-]{0,31}` and keep the name unchanged.
#![no_main]

use confab::protocol::RoomName;
use libfuzzer_sys::fuzz_target;

fn matches_contract(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 32
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    match RoomName::parse(name) {
        Ok(room) => {
            assert!(matches_contract(name), "accepted {name:?}");
            assert_eq!(room.as_str(), name);
        }
        Err(_) => assert!(!matches_contract(name), "refused {name:?}"),
    }
});
