//! What a client may send, and what it means: pure functions, fuzzed (`fuzz/`), so that no
//! input can make the socket task panic or misbehave.

use tungstenite::Message;

use super::close;

/// Largest client message accepted, in bytes, whether one frame or reassembled fragments.
/// A larger one closes the socket with [`close::MESSAGE_TOO_BIG`].
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;

/// What to do with a text frame from a client, before rate limiting and publishing.
#[derive(Debug, PartialEq, Eq)]
pub enum ChatText<'a> {
    /// Nothing but white space: ignored, as the tutorial did.
    Empty,
    /// Over the limit of characters.
    TooLong,
    /// The trimmed text, ready to publish.
    Valid(&'a str),
}

/// Trims `raw` and checks its length in Unicode scalar values against `max_chars`.
pub fn check_chat_text(raw: &str, max_chars: usize) -> ChatText<'_> {
    let text = raw.trim();
    if text.is_empty() {
        ChatText::Empty
    } else if text.len() > max_chars && text.chars().nth(max_chars).is_some() {
        // `len()` in bytes is an upper bound on characters: only long texts get counted.
        ChatText::TooLong
    } else {
        ChatText::Valid(text)
    }
}

/// What one message from a client asks of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text frame: a chat message, checked (rate limiting is up to the socket).
    Chat(ChatText<'a>),
    /// A binary frame: confab speaks text only (close 1003).
    Binary,
    /// The peer is closing, with this code (1005 when its close frame had none).
    Close(u16),
    /// A ping or pong: proof of life, nothing to do (the WebSocket layer answers pings).
    Control,
}

/// Decides what a client message means. Pure, so it can be fuzzed: whatever the bytes, the
/// answer is one of the cases above and a `Chat` text is trimmed and within `max_chars`.
pub fn classify(message: &Message, max_chars: usize) -> Incoming<'_> {
    match message {
        Message::Text(text) => Incoming::Chat(check_chat_text(text.as_str(), max_chars)),
        Message::Binary(_) => Incoming::Binary,
        Message::Close(frame) => Incoming::Close(
            frame
                .as_ref()
                .map_or(close::NO_STATUS, |frame| frame.code.into()),
        ),
        // A raw frame is only ever something sent; received ones are assembled messages.
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
    }
}

#[cfg(test)]
mod tests {
    use tungstenite::protocol::CloseFrame;
    use tungstenite::protocol::frame::Utf8Bytes;

    use super::*;

    #[test]
    fn chat_text_is_trimmed_and_counted_in_characters() {
        assert_eq!(check_chat_text("  hi \n", 10), ChatText::Valid("hi"));
        assert_eq!(check_chat_text(" \t\n ", 10), ChatText::Empty);
        assert_eq!(check_chat_text("", 10), ChatText::Empty);
        // Ten CJK characters are thirty bytes but only ten characters.
        let cjk = "漢字漢字漢字漢字漢字";
        assert_eq!(check_chat_text(cjk, 10), ChatText::Valid(cjk));
        assert_eq!(check_chat_text(&format!("{cjk}字"), 10), ChatText::TooLong);
        let emoji = "😀".repeat(10);
        assert_eq!(check_chat_text(&emoji, 10), ChatText::Valid(emoji.as_str()));
        assert_eq!(check_chat_text(&"😀".repeat(11), 10), ChatText::TooLong);
        assert_eq!(
            check_chat_text(&format!("  {}  ", "a".repeat(10)), 10),
            ChatText::Valid("aaaaaaaaaa")
        );
    }

    #[test]
    fn client_messages_are_classified() {
        let close_frame = |code| {
            Message::Close(Some(CloseFrame {
                code: u16::into(code),
                reason: Utf8Bytes::from_static(""),
            }))
        };
        let cases = [
            (
                Message::text("  hi "),
                Incoming::Chat(ChatText::Valid("hi")),
            ),
            (Message::text(" "), Incoming::Chat(ChatText::Empty)),
            (
                Message::text("x".repeat(11)),
                Incoming::Chat(ChatText::TooLong),
            ),
            (Message::binary(vec![1]), Incoming::Binary),
            (close_frame(4999), Incoming::Close(4999)),
            (Message::Close(None), Incoming::Close(close::NO_STATUS)),
            (Message::Ping(bytes::Bytes::new()), Incoming::Control),
            (Message::Pong(bytes::Bytes::new()), Incoming::Control),
        ];
        for (message, expected) in &cases {
            assert_eq!(&classify(message, 10), expected, "{message:?}");
        }
    }
}
