//! What a client sends over its socket, and what nodes read back from Redis, are untrusted
//! bytes. `classify` must turn any client message into one of its cases in either dialect,
//! `check_chat_text` must pass only texts trimmed, non-empty and within the limit, and the
//! frame readers must never panic.
#![no_main]

use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
use confab::protocol::{
    ChatText, Command, Dialect, Incoming, RetainedChat, check_chat_text, classify, frame_id,
    parse_frame_header, splice_id,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let max_chars = usize::from(rest.first().copied().unwrap_or(0)) + 1;
    let text = String::from_utf8_lossy(rest).into_owned();
    let message = match kind % 5 {
        0 => Message::text(text.clone()),
        1 => Message::binary(bytes::Bytes::copy_from_slice(rest)),
        2 => Message::Close((rest.len() >= 2).then(|| CloseFrame {
            code: u16::from_be_bytes([rest[0], rest[1]]).into(),
            reason: Utf8Bytes::from(text.clone()),
        })),
        3 => Message::Ping(bytes::Bytes::copy_from_slice(rest)),
        _ => Message::Pong(bytes::Bytes::copy_from_slice(rest)),
    };
    let dialect = if kind & 8 == 0 { Dialect::Text } else { Dialect::Commands };
    let texts: Vec<String> = match classify(&message, dialect) {
        Incoming::Command(Command::Chat(text)) => vec![text.into_owned()],
        Incoming::Command(Command::Edit { id, text }) => {
            assert!(id > 0);
            vec![text.into_owned()]
        }
        Incoming::Command(Command::Delete { id }) => {
            assert!(id > 0);
            vec![]
        }
        Incoming::Command(Command::Kick { user_id, .. }) => {
            assert!(!user_id.is_empty());
            vec![]
        }
        Incoming::Command(Command::Typing)
        | Incoming::BadCommand
        | Incoming::Binary
        | Incoming::Close(_)
        | Incoming::Control => vec![],
    };
    for text in texts.iter().chain([&text]) {
        match check_chat_text(text, max_chars) {
            ChatText::Valid(chat) => {
                assert!(!chat.is_empty());
                assert_eq!(chat, chat.trim());
                assert!(chat.chars().count() <= max_chars);
            }
            ChatText::TooLong => assert!(text.trim().chars().count() > max_chars),
            ChatText::Empty => assert!(text.trim().is_empty()),
        }
    }
    // A retained frame read back from Redis: never a panic, and a rewrite stays readable.
    if let Some(chat) = RetainedChat::parse(&text) {
        let edited = chat.edited_to("x");
        assert!(RetainedChat::parse(&edited).is_some_and(|again| again.edited));
    }

    // Frames read back from Redis: never a panic, and the id prefix reads what was spliced.
    let _ = parse_frame_header(&text);
    let _ = frame_id(&text);
    let id = u64::from_le_bytes(data.iter().copied().chain(std::iter::repeat(0)).take(8).collect::<Vec<_>>().try_into().unwrap())
        % (1 << 53);
    let body = serde_json::to_string(&text).unwrap();
    let frame = splice_id(id, &format!("\"data\":{body}}}"));
    assert_eq!(frame_id(&frame.text()), Some(id));
});
