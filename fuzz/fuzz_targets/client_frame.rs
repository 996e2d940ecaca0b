//! What a client sends over its socket, and what nodes read back from Redis, are untrusted
//! bytes. `classify` must turn any client message into one of its cases — a chat text always
//! trimmed, non-empty and within the limit — and the frame readers must never panic.
#![no_main]

use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;
use confab::protocol::{ChatText, Incoming, classify, frame_id, parse_frame_header, splice_id};
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
    match classify(&message, max_chars) {
        Incoming::Chat(ChatText::Valid(chat)) => {
            assert!(!chat.is_empty());
            assert_eq!(chat, chat.trim());
            assert!(chat.chars().count() <= max_chars);
        }
        Incoming::Chat(ChatText::TooLong) => assert!(text.trim().chars().count() > max_chars),
        Incoming::Chat(ChatText::Empty) => assert!(text.trim().is_empty()),
        Incoming::Binary | Incoming::Close(_) | Incoming::Control => {}
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
