//! The wire format between a browser and a node: room names, server frames, chat-message
//! checks and close codes.
//!
//! A server frame is serialized **once** per message, by whichever node publishes it, and the
//! resulting [`Frame`] is shared (reference-counted) by every socket that receives it. Event
//! frames are built in two halves so that the id can be spliced in by whoever assigns it: the
//! embedded broker in Rust, the Redis broker inside a Lua script. See [`event_body`] and
//! [`splice_id`].

use std::borrow::Borrow;
use std::fmt;
use std::io::Cursor;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{FrameHeader as WireHeader, Utf8Bytes};

/// Largest client message accepted, in bytes, whether one frame or reassembled fragments.
/// A larger one closes the socket with [`close::MESSAGE_TOO_BIG`].
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;

/// Close codes confab sends, and the reasons that go with them.
pub mod close {
    /// The peer's close frame carried no code (RFC 6455 §7.4.1); also our label for it.
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame (never sent on the wire).
    pub const ABNORMAL: u16 = 1006;
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The peer stopped answering pings for [`crate::ws::IDLE_TIMEOUT`].
    pub const GOING_AWAY: u16 = 1001;
    /// A binary frame: confab speaks text frames only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Too many sockets for this user, or from this address (a policy limit).
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message over [`super::MAX_CLIENT_MESSAGE_BYTES`].
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The node is draining (SIGTERM): reconnect, through the load balancer, with `since`.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The socket's outbound queue overflowed (a slow client), or the broker was unavailable
    /// when the socket joined: reconnect later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The upgrade carried no valid user cookie (as in the tutorial).
    pub const INVALID_USER: u16 = 4001;
    /// `since` was present but not a whole number.
    pub const INVALID_SINCE: u16 = 4000;
    /// The `room` parameter was empty or not a valid room name.
    pub const INVALID_ROOM: u16 = 4004;

    /// Every code with a label of its own, so each is exported (as 0) from the start.
    pub const ALL: [u16; 15] = [
        NORMAL,
        GOING_AWAY,
        1002,
        UNSUPPORTED_DATA,
        NO_STATUS,
        ABNORMAL,
        1007,
        POLICY_VIOLATION,
        MESSAGE_TOO_BIG,
        1011,
        SERVICE_RESTART,
        TRY_AGAIN_LATER,
        INVALID_SINCE,
        INVALID_USER,
        INVALID_ROOM,
    ];

    /// The label a close code gets in `confab_disconnects_total{code}`: the codes above as
    /// numbers, anything else a peer may send as `other`, so a client cannot grow the label set.
    pub fn metric_label(code: u16) -> &'static str {
        match code {
            NORMAL => "1000",
            GOING_AWAY => "1001",
            1002 => "1002",
            UNSUPPORTED_DATA => "1003",
            NO_STATUS => "1005",
            ABNORMAL => "1006",
            1007 => "1007",
            POLICY_VIOLATION => "1008",
            MESSAGE_TOO_BIG => "1009",
            1011 => "1011",
            SERVICE_RESTART => "1012",
            TRY_AGAIN_LATER => "1013",
            INVALID_SINCE => "4000",
            INVALID_USER => "4001",
            INVALID_ROOM => "4004",
            _ => "other",
        }
    }

    /// The human-readable reason sent with each code confab initiates.
    pub fn reason(code: u16) -> &'static str {
        match code {
            NORMAL => "Bye",
            GOING_AWAY => "Ping timeout",
            UNSUPPORTED_DATA => "Binary frames are not supported",
            MESSAGE_TOO_BIG => "Message too big",
            SERVICE_RESTART => "Service restart",
            TRY_AGAIN_LATER => "Try again later",
            INVALID_SINCE => "Invalid since",
            INVALID_USER => "Invalid user",
            INVALID_ROOM => "Invalid room",
            _ => "",
        }
    }
}

/// The close message for one of confab's own codes, with its reason.
pub fn close_message(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(close::reason(code)),
    }))
}

/// A checked room name: `[a-z0-9][a-z0-9_-]{0,31}`.
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

/// The three frame types that carry a new id and are kept in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A chat message.
    Chat,
    /// A user's first socket in the room opened.
    Join,
    /// A user's last socket in the room has been gone for the leave grace.
    Left,
}

/// A server frame, serialized once and shared by every socket that gets it.
///
/// It holds the frame as it goes on the wire: the WebSocket header of an unmasked, final text
/// frame, then the JSON text. Every socket sends the same bytes (a server never masks), so
/// they are made once, by [`Frame::new`], and each socket only copies them to its socket.
///
/// `id` is the frame's message id, or `0` for frames without one (`error`); the socket task
/// uses it to drop live frames already covered by the history it replayed.
#[derive(Clone, Debug)]
pub struct Frame {
    id: u64,
    wire: Bytes,
}

impl Frame {
    /// Encodes already-serialized JSON text whose message id is `id`.
    pub fn new(id: u64, text: impl AsRef<str>) -> Self {
        let text = text.as_ref().as_bytes();
        let header = WireHeader {
            opcode: OpCode::Data(Data::Text),
            ..WireHeader::default()
        };
        let length = text.len() as u64;
        let mut wire = Vec::with_capacity(header.len(length) + text.len());
        header
            .format(length, &mut wire)
            .expect("writing to a Vec cannot fail");
        wire.extend_from_slice(text);
        Self {
            id,
            wire: wire.into(),
        }
    }

    /// The message id, `0` for frames that carry none.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The whole WebSocket frame, header and text, as it goes on the wire.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The JSON text, sharing the frame's memory. Reads the header to find it: for tests, and
    /// for sockets that take messages rather than bytes.
    pub fn text(&self) -> Utf8Bytes {
        let (_, length) = WireHeader::parse(&mut Cursor::new(&self.wire[..]))
            .ok()
            .flatten()
            .expect("a frame starts with the header `new` wrote");
        let payload = self.wire.slice(self.wire.len() - length as usize..);
        Utf8Bytes::try_from(payload).expect("the payload is the text `new` took")
    }
}

#[derive(Serialize)]
struct EventBody<'a> {
    #[serde(rename = "type")]
    kind: EventKind,
    room: &'a str,
    user: &'a RawValue,
    data: &'a str,
    ts: u64,
}

/// Everything of an event frame but its id: `"type":"chat","room":…,"ts":…}` — the JSON object
/// without its opening brace, ready for [`splice_id`].
pub fn event_body(
    kind: EventKind,
    room: &RoomName,
    user: &RawValue,
    data: &str,
    ts_ms: u64,
) -> String {
    let body = EventBody {
        kind,
        room: room.as_str(),
        user,
        data,
        ts: ts_ms,
    };
    // Serializing a struct of strings, numbers and already-valid JSON cannot fail.
    let mut json = serde_json::to_string(&body).expect("event body serializes");
    json.remove(0);
    json
}

/// The whole event frame: `{"id":N,` followed by an [`event_body`]. The Redis broker's publish
/// script does the same concatenation in Lua, so both brokers produce the same bytes.
pub fn splice_id(id: u64, body: &str) -> Frame {
    let mut text = String::with_capacity(body.len() + 28);
    text.push_str("{\"id\":");
    text.push_str(itoa::Buffer::new().format(id));
    text.push(',');
    text.push_str(body);
    Frame::new(id, text)
}

#[derive(Serialize)]
struct ListFrame<'a> {
    id: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'a str,
    user: &'a RawValue,
    data: &'a [Arc<RawValue>],
    ts: u64,
}

/// The `list` frame a socket gets after its history: the users online in the room.
/// `id` is the id of the last frame this socket got before it, else `since`, else 0.
pub fn list_frame(
    id: u64,
    room: &RoomName,
    me: &RawValue,
    members: &[Arc<RawValue>],
    ts_ms: u64,
) -> Frame {
    let frame = ListFrame {
        id,
        kind: "list",
        room: room.as_str(),
        user: me,
        data: members,
        ts: ts_ms,
    };
    // As in `event_body`: strings, numbers and valid JSON always serialize.
    let text = serde_json::to_string(&frame).expect("list frame serializes");
    // The list's id is bookkeeping for the client, not a new message: it is never in history
    // and never fanned out, so the frame itself counts as id-less.
    Frame::new(0, text)
}

/// Why a client's message was refused; the `code` of the `error` frame sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Longer than `CONFAB_MAX_MESSAGE_CHARS`.
    TooLong,
    /// The socket's token bucket was empty.
    RateLimited,
    /// The broker could not publish it; nobody received it.
    Unavailable,
}

impl ErrorCode {
    /// The `code` field, also the `reason` label of `confab_rejected_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::RateLimited => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }

    /// The frame sent to the offending socket. Encoded once per process: sending one
    /// allocates nothing, which matters when a flood is being refused.
    pub fn frame(self) -> Frame {
        static FRAMES: LazyLock<[Frame; 3]> = LazyLock::new(|| {
            [
                ErrorCode::TooLong,
                ErrorCode::RateLimited,
                ErrorCode::Unavailable,
            ]
            .map(|code| Frame::new(0, code.text()))
        });
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
        }
    }
}

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

/// The two fields a node reads from an event frame that reached it from another node.
#[derive(Debug, serde::Deserialize)]
pub struct FrameHeader<'a> {
    /// The message id.
    pub id: u64,
    /// The room it belongs to.
    #[serde(borrow)]
    pub room: &'a str,
    /// When the publishing node made it, in ms since the Unix epoch.
    #[serde(default)]
    pub ts: u64,
}

/// Reads the id and room of a serialized event frame.
///
/// # Errors
/// When `text` is not a JSON object with a numeric `id` and a string `room`.
pub fn parse_frame_header(text: &str) -> Result<FrameHeader<'_>, serde_json::Error> {
    serde_json::from_str(text)
}

/// The id of a serialized event frame, read from its `{"id":N,` prefix without parsing the
/// rest (every event frame starts so, see [`splice_id`]).
pub fn frame_id(text: &str) -> Option<u64> {
    let digits = text.strip_prefix("{\"id\":")?;
    let end = digits.find(|c: char| !c.is_ascii_digit())?;
    digits[..end].parse().ok()
}

/// Milliseconds since the Unix epoch, the `ts` of every frame.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds since the Unix epoch: the floor of a new id sequence (contract guarantee 3).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
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
    }

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
    fn an_event_frame_has_the_contract_fields_in_order() {
        let user =
            RawValue::from_string(r#"{"id":"u1","name":"ann","image":"/i.svg"}"#.into()).unwrap();
        let body = event_body(
            EventKind::Chat,
            &RoomName::lobby(),
            &user,
            "say \"hi\" <b>",
            1_764_072_000_000,
        );
        let frame = splice_id(42, &body);
        assert_eq!(
            frame.text(),
            r#"{"id":42,"type":"chat","room":"lobby","user":{"id":"u1","name":"ann","image":"/i.svg"},"data":"say \"hi\" <b>","ts":1764072000000}"#
        );
        assert_eq!(frame.id(), 42);
        let text = frame.text();
        let header = parse_frame_header(&text).unwrap();
        assert_eq!((header.id, header.room), (42, "lobby"));
        assert_eq!(frame_id(&text), Some(42));
        assert_eq!(frame_id(r#"{"type":"list"}"#), None);
    }

    #[test]
    fn a_list_frame_carries_every_member_and_no_seam_id() {
        let me =
            RawValue::from_string(r#"{"id":"u1","name":"ann","image":"/i.svg"}"#.into()).unwrap();
        let other: Arc<RawValue> =
            RawValue::from_string(r#"{"id":"u2","name":"bob","image":"/j.svg"}"#.into())
                .unwrap()
                .into();
        let frame = list_frame(7, &RoomName::lobby(), &me, &[me.clone().into(), other], 5);
        let value: serde_json::Value = serde_json::from_str(&frame.text()).unwrap();
        assert_eq!(value["id"], 7);
        assert_eq!(value["type"], "list");
        assert_eq!(value["data"].as_array().unwrap().len(), 2);
        assert_eq!(frame.id(), 0);
    }

    #[test]
    fn a_frame_is_one_final_text_frame_on_the_wire_whatever_its_length() {
        // Lengths at each of the header's three length encodings and their edges.
        for length in [0, 1, 125, 126, 65_535, 65_536, 70_000] {
            let text = "😀".repeat(length / 4) + &"x".repeat(length % 4);
            let frame = Frame::new(3, &text);
            let mut wire = Cursor::new(frame.wire());
            let (header, payload) = WireHeader::parse(&mut wire).unwrap().unwrap();
            assert_eq!(header.opcode, OpCode::Data(Data::Text), "length {length}");
            assert!(header.is_final && header.mask.is_none(), "length {length}");
            assert_eq!(payload, length as u64, "length {length}");
            let at = wire.position() as usize;
            assert_eq!(&frame.wire()[at..], text.as_bytes(), "length {length}");
            assert_eq!(frame.text().as_str(), text, "length {length}");
        }
    }

    #[test]
    fn error_frames_are_encoded_once_and_shared() {
        let first = ErrorCode::RateLimited.frame();
        let second = ErrorCode::RateLimited.frame();
        assert_eq!(first.wire().as_ptr(), second.wire().as_ptr());
        assert!(first.text().contains("rate_limited"));
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

    #[test]
    fn error_frames_are_valid_json_with_their_code() {
        for code in [
            ErrorCode::TooLong,
            ErrorCode::RateLimited,
            ErrorCode::Unavailable,
        ] {
            let value: serde_json::Value = serde_json::from_str(&code.frame().text()).unwrap();
            assert_eq!(value["type"], "error");
            assert_eq!(value["code"], code.as_str());
            assert!(value["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
}
