//! What a client may send, and what it means: pure functions, fuzzed (`fuzz/`), so that no
//! input can make the socket task panic or misbehave.

use std::borrow::Cow;

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

/// How a socket's text frames are read, chosen by `v=` when it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// No `v=2`: every text frame is a chat message, as in the tutorial.
    #[default]
    Text,
    /// `v=2`: every text frame is a JSON command (`chat`, `typing`, `edit`, `delete`).
    Commands,
}

/// What a client asks for. Texts are as sent: [`check_chat_text`] trims and measures them
/// when the command is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// Post a chat message.
    Chat(Cow<'a, str>),
    /// The user is typing in the room.
    Typing,
    /// Replace the text of the user's chat message `id`.
    Edit {
        /// The message to change.
        id: u64,
        /// Its new text.
        text: Cow<'a, str>,
    },
    /// Take back the chat message `id`.
    Delete {
        /// The message to delete.
        id: u64,
    },
    /// A moderator removes a user from the room, and bans them for a while.
    Kick {
        /// The user to remove.
        user_id: Cow<'a, str>,
        /// How long their new sockets in the room are refused; 0: not at all.
        ban_seconds: u64,
    },
}

/// A `v=2` command as it comes over the wire. Unknown fields are ignored, so that a newer
/// page can talk to an older node; a missing or mistyped field is a bad command.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum WireCommand<'a> {
    Chat {
        #[serde(borrow)]
        data: Cow<'a, str>,
    },
    Typing,
    Edit {
        id: u64,
        #[serde(borrow)]
        data: Cow<'a, str>,
    },
    Delete {
        id: u64,
    },
    Kick {
        #[serde(borrow)]
        user_id: Cow<'a, str>,
        #[serde(default)]
        ban_seconds: u64,
    },
}

/// Reads one `v=2` command.
///
/// # Errors
/// [`BadCommand`] when `text` is not a JSON object, has no known `type`, or lacks a field that
/// type needs (or carries one of the wrong kind: ids are whole numbers above zero).
pub fn parse_command(text: &str) -> Result<Command<'_>, BadCommand> {
    // serde also reads a tagged enum from an array (`["chat","x"]`); a command is an object.
    if !text.trim_start().starts_with('{') {
        return Err(BadCommand);
    }
    let command = match serde_json::from_str(text).map_err(|_| BadCommand)? {
        WireCommand::Chat { data } => Command::Chat(data),
        WireCommand::Typing => Command::Typing,
        WireCommand::Edit { id, data } => Command::Edit { id, text: data },
        WireCommand::Delete { id } => Command::Delete { id },
        WireCommand::Kick {
            user_id,
            ban_seconds,
        } => Command::Kick {
            user_id,
            ban_seconds,
        },
    };
    match command {
        Command::Edit { id: 0, .. } | Command::Delete { id: 0 } => Err(BadCommand),
        Command::Kick { ref user_id, .. } if user_id.is_empty() => Err(BadCommand),
        command => Ok(command),
    }
}

/// A `v=2` text frame that is not a command confab knows: answered with `error` `bad_command`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a command: a JSON object with a known \"type\" and its fields")]
pub struct BadCommand;

/// What one message from a client asks of the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text frame: a command (in the text dialect, always a chat).
    Command(Command<'a>),
    /// A text frame of the command dialect that is no command (`error` `bad_command`).
    BadCommand,
    /// A binary frame: confab speaks text only (close 1003).
    Binary,
    /// The peer is closing, with this code (1005 when its close frame had none).
    Close(u16),
    /// A ping or pong: proof of life, nothing to do (the WebSocket layer answers pings).
    Control,
}

/// Decides what a client message means. Pure, so it can be fuzzed: whatever the bytes, the
/// answer is one of the cases above.
pub fn classify(message: &Message, dialect: Dialect) -> Incoming<'_> {
    match message {
        Message::Text(text) => match dialect {
            Dialect::Text => Incoming::Command(Command::Chat(Cow::Borrowed(text.as_str()))),
            Dialect::Commands => match parse_command(text.as_str()) {
                Ok(command) => Incoming::Command(command),
                Err(BadCommand) => Incoming::BadCommand,
            },
        },
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
        let chat = |text: &'static str| Incoming::Command(Command::Chat(Cow::Borrowed(text)));
        let cases = [
            (Message::text("  hi "), chat("  hi ")),
            (
                Message::text(r#"{"type":"typing"}"#),
                chat(r#"{"type":"typing"}"#),
            ),
            (Message::binary(vec![1]), Incoming::Binary),
            (close_frame(4999), Incoming::Close(4999)),
            (Message::Close(None), Incoming::Close(close::NO_STATUS)),
            (Message::Ping(bytes::Bytes::new()), Incoming::Control),
            (Message::Pong(bytes::Bytes::new()), Incoming::Control),
        ];
        for (message, expected) in &cases {
            assert_eq!(&classify(message, Dialect::Text), expected, "{message:?}");
        }
    }

    #[test]
    fn commands_are_read_from_json_and_anything_else_is_a_bad_command() {
        let cases: [(&str, Result<Command<'_>, BadCommand>); 21] = [
            (
                r#"{"type":"kick","user_id":"u2"}"#,
                Ok(Command::Kick {
                    user_id: "u2".into(),
                    ban_seconds: 0,
                }),
            ),
            (
                r#"{"type":"kick","user_id":"u2","ban_seconds":600}"#,
                Ok(Command::Kick {
                    user_id: "u2".into(),
                    ban_seconds: 600,
                }),
            ),
            (r#"{"type":"kick","user_id":""}"#, Err(BadCommand)),
            (r#"{"type":"kick","ban_seconds":5}"#, Err(BadCommand)),
            (
                r#"{"type":"chat","data":" hi "}"#,
                Ok(Command::Chat(" hi ".into())),
            ),
            (
                r#"{"type":"chat","data":"say \"x\""}"#,
                Ok(Command::Chat("say \"x\"".into())),
            ),
            (r#"{"type":"typing"}"#, Ok(Command::Typing)),
            (r#"{"type":"typing","data":""}"#, Ok(Command::Typing)),
            (
                r#"{"data":"x","type":"edit","id":42}"#,
                Ok(Command::Edit {
                    id: 42,
                    text: "x".into(),
                }),
            ),
            (
                r#"{"type":"delete","id":9007199254740991}"#,
                Ok(Command::Delete { id: (1 << 53) - 1 }),
            ),
            (r#"{"type":"delete","id":0}"#, Err(BadCommand)),
            (r#"{"type":"delete","id":-1}"#, Err(BadCommand)),
            (r#"{"type":"delete","id":1.5}"#, Err(BadCommand)),
            (r#"{"type":"delete","id":"1"}"#, Err(BadCommand)),
            (r#"{"type":"delete"}"#, Err(BadCommand)),
            (r#"{"type":"edit","id":1}"#, Err(BadCommand)),
            (r#"{"type":"chat"}"#, Err(BadCommand)),
            (r#"{"type":"chat","data":7}"#, Err(BadCommand)),
            (r#"{"type":"shout","data":"x"}"#, Err(BadCommand)),
            (r#"hello"#, Err(BadCommand)),
            (r#"["chat","x"]"#, Err(BadCommand)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_command(text), expected, "{text}");
        }
        assert_eq!(
            classify(&Message::text("{}"), Dialect::Commands),
            Incoming::BadCommand
        );
        assert_eq!(
            classify(&Message::text(r#"{"type":"typing"}"#), Dialect::Commands),
            Incoming::Command(Command::Typing)
        );
    }
}
