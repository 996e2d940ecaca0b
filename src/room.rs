//! Room names: what `/rooms/{room}` and `?room=` accept, checked once and then shared.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

///
/// Built only by [`RoomName::parse`], so holding one means the name is valid; cloning is a
/// reference-count bump because every socket, history entry and presence record names its room.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

/// Why a string is not a [`RoomName`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a room name is 1 to 32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
)]
pub struct InvalidRoomName;

impl RoomName {
    /// The longest room name, in characters.
    pub const MAX_LEN: usize = 32;

    /// What [`RoomName::parse`] accepts, as the ECMA-262 pattern the HTTP API's OpenAPI
    /// document gives every `{room}` path parameter.
    pub const PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,31}$";

    /// Checks `name` against `[a-z0-9][a-z0-9_-]{0,31}`.
    ///
    /// # Errors
    /// [`InvalidRoomName`] for anything else, including the empty string.
    pub fn parse(name: &str) -> Result<Self, InvalidRoomName> {
        let bytes = name.as_bytes();
        let valid_first = matches!(bytes.first(), Some(b'a'..=b'z' | b'0'..=b'9'));
        let valid_rest = bytes[1.min(bytes.len())..]
            .iter()
            .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-'));
        if valid_first && valid_rest && bytes.len() <= Self::MAX_LEN {
            Ok(Self(Arc::from(name)))
        } else {
            Err(InvalidRoomName)
        }
    }

    /// The default room, served at `/`.
    pub fn lobby() -> Self {
        Self(Arc::from("lobby"))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_follow_the_contract_pattern() {
        let cases = [
            ("lobby", true),
            ("a", true),
            ("0", true),
            ("a-b_c9", true),
            ("abcdefghijklmnopqrstuvwxyz012345", true),
            ("abcdefghijklmnopqrstuvwxyz0123456", false),
            ("", false),
            ("-lobby", false),
            ("_lobby", false),
            ("Lobby", false),
            ("lob by", false),
            ("lobby/x", false),
            ("café", false),
            ("lobby\n", false),
        ];
        for (name, valid) in cases {
            assert_eq!(RoomName::parse(name).is_ok(), valid, "room name {name:?}");
        }
        assert_eq!(
            RoomName::PATTERN,
            format!("^[a-z0-9][a-z0-9_-]{{0,{}}}$", RoomName::MAX_LEN - 1),
            "the published pattern says what parse checks"
        );
    }
}
