//! The `error` frames a node sends to one socket: each encoded once per process.

use std::sync::LazyLock;

use super::Frame;

/// Why a client's message was refused; the `code` of the `error` frame sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Longer than `CONFAB_MAX_MESSAGE_CHARS`.
    TooLong,
    /// The socket's token bucket was empty.
    RateLimited,
    /// The broker could not publish it; nobody received it.
    Unavailable,
    /// A `v=2` text frame that is no command: not JSON, an unknown `type`, a missing field.
    BadCommand,
    /// An edit or delete of a message that is not the user's own.
    Forbidden,
    /// An edit or delete of a message the room does not retain (never sent, deleted, or
    /// too old).
    NotFound,
}

impl ErrorCode {
    /// Every code, in declaration order.
    pub const ALL: [Self; 6] = [
        Self::TooLong,
        Self::RateLimited,
        Self::Unavailable,
        Self::BadCommand,
        Self::Forbidden,
        Self::NotFound,
    ];

    /// The `code` field, also the `reason` label of `confab_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
            Self::BadCommand => "bad_command",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
        }
    }

    /// The frame sent to the offending socket. Encoded once per process: sending one
    /// allocates nothing, which matters when a flood is being refused.
    pub fn frame(self) -> Frame {
        static FRAMES: LazyLock<[Frame; ErrorCode::ALL.len()]> =
            LazyLock::new(|| ErrorCode::ALL.map(|code| Frame::new(0, code.text())));
        // Indexed in declaration order, as the array above is built.
        FRAMES[self as usize].clone()
    }

    fn text(self) -> &'static str {
        match self {
            Self::TooLong => {
                r#"{"type":"error","code":"too_long","message":"Message is too long; it was not sent."}"#
            }
            Self::RateLimited => {
                r#"{"type":"error","code":"rate_limited","message":"Too many messages; wait a moment. It was not sent."}"#
            }
            Self::Unavailable => {
                r#"{"type":"error","code":"unavailable","message":"The chat service is unavailable; the message was not delivered to anyone."}"#
            }
            Self::BadCommand => {
                r#"{"type":"error","code":"bad_command","message":"Not a command: send a JSON object with a known \"type\" and its fields (an edit needs text)."}"#
            }
            Self::Forbidden => {
                r#"{"type":"error","code":"forbidden","message":"Only its author can change or delete that message."}"#
            }
            Self::NotFound => {
                r#"{"type":"error","code":"not_found","message":"That message is not kept any more, or was deleted."}"#
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_frames_are_encoded_once_and_shared() {
        let first = ErrorCode::RateLimited.frame();
        let second = ErrorCode::RateLimited.frame();
        assert_eq!(first.wire().as_ptr(), second.wire().as_ptr());
        assert!(first.text().contains("rate_limited"));
    }

    #[test]
    fn error_frames_are_valid_json_with_their_code() {
        for code in ErrorCode::ALL {
            let value: serde_json::Value = serde_json::from_str(&code.frame().text()).unwrap();
            assert_eq!(value["type"], "error");
            assert_eq!(value["code"], code.as_str());
            assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}
