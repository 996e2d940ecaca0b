//! Sign-in names are free text from anyone. A name that passes `UserName::parse` is the input
//! trimmed, 1 to 32 Unicode scalar values, with no control character; anything else is refused
//! with the reason that applies.
#![no_main]

use confab::user::{InvalidUserName, UserName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    match UserName::parse(raw) {
        Ok(name) => {
            assert_eq!(name.as_str(), trimmed);
            assert!((1..=32).contains(&chars));
            assert!(!trimmed.chars().any(char::is_control));
        }
        Err(InvalidUserName::Empty) => assert_eq!(chars, 0),
        Err(InvalidUserName::TooLong) => assert!(chars > 32),
        Err(InvalidUserName::ControlCharacter) => assert!(trimmed.chars().any(char::is_control)),
    }
});
