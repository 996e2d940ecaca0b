//! The tiny hand-rolled scan of a server frame's payload, and the text the generator sends.
//!
//! No JSON parser runs per frame. A chat server's frame is
//! `{"id":N,"type":"chat","room":"R","user":{…},"data":"…","ts":ms}` with the fields in that
//! order (confab, the koa peer and the Socket.IO peer all write them so); [`scan_event`] reads
//! the leading `id`, the `type` word, and for `chat` the `data` string (for `error` the
//! `code`, for `list` the number of users), each with one forward `memmem` search.
//!
//! Every chat message the generator sends starts with a [`Tag`]: run, step, sender, sequence
//! number and the send time in Unix nanoseconds — `cb<run hex>:<step>:<sender>:<seq>:<ns>:` —
//! then `x`s up to the message size. Every receiver computes end-to-end latency from it (one
//! machine, one clock), and ignores chat that another run left behind.
//!
//! [`scan_socketio`] unwraps the Engine.IO v4 / Socket.IO v5 text packets of the Socket.IO
//! peer: `0{…}` open, `40{…}` connected, `2` ping, `42["message",{…}]` an event.

use std::sync::LazyLock;

use memchr::memmem::Finder;

/// The needles, each searcher built once (building one per search showed in profiles).
static TYPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"type\":\""));
static DATA: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":\""));
static CODE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"code\":\""));
static DATA_ARRAY: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"data\":["));
static NAME: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"name\":"));

/// The kind of a server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A chat message.
    Chat,
    /// A user came.
    Join,
    /// A user went.
    Left,
    /// The users online (once, after the history).
    List,
    /// Someone else in the room is typing (`v=2`): id 0, never stored, outside the id order.
    Typing,
    /// An error frame for this socket (`rate_limited`, `too_long`, `unavailable`).
    Error,
    /// Anything else.
    Other,
}

/// What the scan found in one frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The leading `"id":N`, when the object starts with one that is a number.
    pub id: Option<u64>,
    /// The `type`.
    pub kind: Kind,
    /// For `chat`: the raw bytes of the `data` string (between its quotes). For `error`: the
    /// `code`. Otherwise empty.
    pub text: &'a [u8],
    /// For `list`: how many users its `data` array holds. Otherwise 0.
    pub users: u32,
}

/// Reads one server frame's JSON object (see the module documentation).
pub fn scan_event(obj: &[u8]) -> Event<'_> {
    let mut at = 0;
    let id = match obj.strip_prefix(b"{\"id\":") {
        Some(rest) => {
            let (value, len) = leading_number(rest);
            at = 6 + len;
            value
        }
        None => None,
    };
    let (kind, after_type) = match find_from(obj, at, &TYPE) {
        Some(start) => {
            let word = string_at(obj, start);
            let kind = match word {
                b"chat" => Kind::Chat,
                b"join" => Kind::Join,
                b"left" => Kind::Left,
                b"list" => Kind::List,
                b"typing" => Kind::Typing,
                b"error" => Kind::Error,
                _ => Kind::Other,
            };
            (kind, start + word.len())
        }
        None => (Kind::Other, at),
    };
    let mut event = Event {
        id,
        kind,
        text: &[],
        users: 0,
    };
    match kind {
        Kind::Chat => {
            if let Some(start) = find_from(obj, after_type, &DATA) {
                event.text = string_at(obj, start);
            }
        }
        Kind::Error => {
            if let Some(start) = find_from(obj, after_type, &CODE) {
                event.text = string_at(obj, start);
            }
        }
        Kind::List => {
            if let Some(start) = find_from(obj, after_type, &DATA_ARRAY) {
                event.users = NAME.find_iter(&obj[start..]).count() as u32;
            }
        }
        Kind::Join | Kind::Left | Kind::Typing | Kind::Other => {}
    }
    event
}

/// The position just after `needle`'s first occurrence at or after `from`.
fn find_from(hay: &[u8], from: usize, needle: &Finder<'_>) -> Option<usize> {
    let rest = hay.get(from..)?;
    needle.find(rest).map(|i| from + i + needle.needle().len())
}

/// The bytes from `start` to the next `"` (or the end).
fn string_at(hay: &[u8], start: usize) -> &[u8] {
    let rest = &hay[start..];
    let end = memchr::memchr(b'"', rest).unwrap_or(rest.len());
    &rest[..end]
}

/// A decimal number at the start of `bytes`, and how many digits it took. `None` when there is
/// no digit or it overflows.
fn leading_number(bytes: &[u8]) -> (Option<u64>, usize) {
    let mut value: u64 = 0;
    let mut len = 0;
    for &b in bytes {
        if !b.is_ascii_digit() {
            break;
        }
        match value
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
        {
            Some(v) => value = v,
            None => return (None, len),
        }
        len += 1;
    }
    if len == 0 {
        (None, 0)
    } else {
        (Some(value), len)
    }
}

/// The header of every chat message the generator sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    /// The run (random per invocation), so chat of an earlier run is not counted.
    pub run: u32,
    /// The step (ramp) or phase the message belongs to.
    pub step: u32,
    /// The sender's index among all senders of the run.
    pub sender: u32,
    /// The sender's sequence number, from 0.
    pub seq: u64,
    /// When it was sent, Unix nanoseconds.
    pub sent_ns: u64,
}

/// Appends the message text for `tag` to `out`, padded with `x` to `size` bytes (never cut:
/// a size below the tag's length gives just the tag).
pub fn write_tag(out: &mut Vec<u8>, tag: &Tag, size: usize) {
    use std::io::Write as _;
    let start = out.len();
    let _ = write!(
        out,
        "cb{:08x}:{}:{}:{}:{}:",
        tag.run, tag.step, tag.sender, tag.seq, tag.sent_ns
    );
    let written = out.len() - start;
    if written < size {
        out.resize(start + size, b'x');
    }
}

/// Reads a [`Tag`] from the start of a chat message's text; `None` for other text.
pub fn parse_tag(text: &[u8]) -> Option<Tag> {
    let rest = text.strip_prefix(b"cb")?;
    let hex = rest.get(..8)?;
    let run = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    let mut rest = rest.get(8..)?.strip_prefix(b":")?;
    let mut field = || {
        let (value, len) = leading_number(rest);
        let tail = rest.get(len..)?.strip_prefix(b":")?;
        rest = tail;
        value
    };
    let step = u32::try_from(field()?).ok()?;
    let sender = u32::try_from(field()?).ok()?;
    let seq = field()?;
    let sent_ns = field()?;
    Some(Tag {
        run,
        step,
        sender,
        seq,
        sent_ns,
    })
}

/// The `v=2` command a typist sends while it types.
pub const TYPING_COMMAND: &[u8] = br#"{"type":"typing"}"#;

/// Appends the `v=2` chat command `{"type":"chat","data":"<tag, padded>"}` to `out`: the same
/// text [`write_tag`] writes, so the chat frame every receiver gets is the same as from a
/// plain-text socket (the tag and its padding need no JSON escaping).
pub fn write_chat_command(out: &mut Vec<u8>, tag: &Tag, size: usize) {
    out.extend_from_slice(br#"{"type":"chat","data":""#);
    write_tag(out, tag, size);
    out.extend_from_slice(br#""}"#);
}

/// One Engine.IO / Socket.IO text packet from the server, as far as the generator cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sio<'a> {
    /// `0{…}`: Engine.IO open; answer `40` to connect the default namespace.
    Open,
    /// `40{…}`: the namespace is connected.
    Connected,
    /// `2`: Engine.IO ping; answer `3`.
    Ping,
    /// `42["message",{…}]`: the chat frame object inside.
    Message(&'a [u8]),
    /// `41`, `44…` or Engine.IO `1`: the server disconnected this socket.
    Disconnect,
    /// Anything else (another event, a noop).
    Other,
}

/// Reads one Socket.IO text packet.
pub fn scan_socketio(payload: &[u8]) -> Sio<'_> {
    const MESSAGE: &[u8] = b"42[\"message\",";
    match payload {
        [b'0', ..] => Sio::Open,
        [b'2'] => Sio::Ping,
        [b'1'] | [b'4', b'1' | b'4', ..] => Sio::Disconnect,
        [b'4', b'0', ..] => Sio::Connected,
        _ => match payload.strip_prefix(MESSAGE) {
            Some(rest) => Sio::Message(rest.strip_suffix(b"]").unwrap_or(rest)),
            None => Sio::Other,
        },
    }
}

/// Appends the Socket.IO packet `42["chat","<text>"]` to `out`. `text` must need no JSON
/// escaping (the generator's tags and padding never do).
pub fn write_socketio_chat(out: &mut Vec<u8>, text: &[u8]) {
    out.extend_from_slice(b"42[\"chat\",\"");
    out.extend_from_slice(text);
    out.extend_from_slice(b"\"]");
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = r#"{"id":"0123abcd","name":"cb1-7","image":"/static/avatars/3.svg"}"#;

    #[test]
    fn reads_a_chat_frame() {
        let frame = format!(
            r#"{{"id":1764072000000123,"type":"chat","room":"r1","user":{USER},"data":"cb0000002a:3:9:17:1764072000000000001:xxxx","ts":1764072000000}}"#
        );
        let event = scan_event(frame.as_bytes());
        assert_eq!(event.id, Some(1_764_072_000_000_123));
        assert_eq!(event.kind, Kind::Chat);
        let tag = parse_tag(event.text).unwrap();
        assert_eq!(
            tag,
            Tag {
                run: 42,
                step: 3,
                sender: 9,
                seq: 17,
                sent_ns: 1_764_072_000_000_000_001
            }
        );
    }

    #[test]
    fn reads_join_left_list_and_errors() {
        let join = format!(
            r#"{{"id":5,"type":"join","room":"r","user":{USER},"data":"cb1-7 joined.","ts":1}}"#
        );
        let event = scan_event(join.as_bytes());
        assert_eq!((event.id, event.kind), (Some(5), Kind::Join));
        let left =
            format!(r#"{{"id":6,"type":"left","room":"r","user":{USER},"data":"x","ts":1}}"#);
        assert_eq!(scan_event(left.as_bytes()).kind, Kind::Left);

        let list = format!(
            r#"{{"id":0,"type":"list","room":"r","user":{USER},"data":[{USER},{USER},{USER}],"ts":1}}"#
        );
        let event = scan_event(list.as_bytes());
        assert_eq!(
            (event.id, event.kind, event.users),
            (Some(0), Kind::List, 3)
        );
        let empty =
            format!(r#"{{"id":9,"type":"list","room":"r","user":{USER},"data":[],"ts":1}}"#);
        assert_eq!(scan_event(empty.as_bytes()).users, 0);

        let error = br#"{"type":"error","code":"rate_limited","message":"Too many messages; wait a moment. It was not sent."}"#;
        let event = scan_event(error);
        assert_eq!((event.id, event.kind), (None, Kind::Error));
        assert_eq!(event.text, b"rate_limited");
        let null_id = br#"{"id":null,"type":"error","code":"too_long"}"#;
        let event = scan_event(null_id);
        assert_eq!(
            (event.id, event.kind, event.text),
            (None, Kind::Error, &b"too_long"[..])
        );
    }

    #[test]
    fn typing_frames_and_chat_commands() {
        let typing =
            format!(r#"{{"id":0,"type":"typing","room":"r","user":{USER},"data":"","ts":1}}"#);
        let event = scan_event(typing.as_bytes());
        assert_eq!((event.id, event.kind), (Some(0), Kind::Typing));
        assert_eq!(event.text, b"");

        let tag = Tag {
            run: 0x2a,
            step: 1,
            sender: 4,
            seq: 9,
            sent_ns: 1_764_072_000_000_000_001,
        };
        let mut command = Vec::new();
        write_chat_command(&mut command, &tag, 64);
        let value: serde_json::Value = serde_json::from_slice(&command).unwrap();
        assert_eq!(value["type"], "chat");
        let data = value["data"].as_str().unwrap();
        let mut plain = Vec::new();
        write_tag(&mut plain, &tag, 64);
        assert_eq!(
            data.as_bytes(),
            plain,
            "the same text as a plain-text socket sends"
        );
        assert_eq!(parse_tag(data.as_bytes()), Some(tag));
        let value: serde_json::Value = serde_json::from_slice(TYPING_COMMAND).unwrap();
        assert_eq!(value, serde_json::json!({"type": "typing"}));
    }

    #[test]
    fn odd_payloads_do_not_panic() {
        for payload in [
            &b""[..],
            b"{",
            b"{\"id\":",
            b"{\"id\":99999999999999999999999,\"type\":\"chat\"",
            b"{\"type\":\"chat\",\"data\":\"",
            b"[1,2,3]",
            b"{\"type\":\"",
        ] {
            let event = scan_event(payload);
            assert!(event.id.is_none() || event.kind != Kind::Error);
        }
        assert_eq!(
            scan_event(b"{\"type\":\"chat\",\"data\":\"abc").text,
            b"abc"
        );
        assert_eq!(scan_event(b"{\"type\":\"other\"}").kind, Kind::Other);
    }

    #[test]
    fn chat_that_is_not_ours_has_no_tag() {
        for text in [
            &b"hello"[..],
            b"cb",
            b"cb0000002a",
            b"cb0000002a:1:2:3",
            b"cb0000002a:1:2:3:4",
            b"cbzzzzzzzz:1:2:3:4:",
            b"cb0000002a:1:x:3:4:",
            b"cb0000002a:99999999999:1:3:4:",
        ] {
            assert_eq!(parse_tag(text), None, "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn tags_round_trip_and_pad_to_size() {
        let tag = Tag {
            run: 0xdead_beef,
            step: 12,
            sender: 999,
            seq: 123_456,
            sent_ns: 1_700_000_000_123_456_789,
        };
        for size in [0, 10, 64, 2000] {
            let mut out = b"prefix".to_vec();
            write_tag(&mut out, &tag, size);
            let text = &out[6..];
            assert!(text.len() >= size.min(text.len()));
            if size > 50 {
                assert_eq!(text.len(), size);
            }
            assert_eq!(parse_tag(text), Some(tag));
        }
    }

    #[test]
    fn socketio_packets() {
        assert_eq!(
            scan_socketio(br#"0{"sid":"a","upgrades":[],"pingInterval":25000}"#),
            Sio::Open
        );
        assert_eq!(scan_socketio(br#"40{"sid":"b"}"#), Sio::Connected);
        assert_eq!(scan_socketio(b"2"), Sio::Ping);
        assert_eq!(scan_socketio(b"41"), Sio::Disconnect);
        assert_eq!(scan_socketio(b"1"), Sio::Disconnect);
        assert_eq!(scan_socketio(b"6"), Sio::Other);
        let packet = br#"42["message",{"id":3,"type":"chat","data":"x"}]"#;
        assert_eq!(
            scan_socketio(packet),
            Sio::Message(br#"{"id":3,"type":"chat","data":"x"}"#)
        );
        assert_eq!(scan_socketio(br#"42["other",1]"#), Sio::Other);
        let mut out = Vec::new();
        write_socketio_chat(&mut out, b"cb1:2");
        assert_eq!(out, br#"42["chat","cb1:2"]"#);
    }
}
