//! Server frames as they go on the wire: serialized once, by whichever node makes the frame,
//! and shared by every socket that gets it. Event frames are built in two halves so that the
//! id can be spliced in by whoever assigns it: the embedded broker in Rust, the Redis broker
//! inside a Lua script ([`event_body`], [`splice_id`]).

use std::io::Cursor;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::{FrameHeader as WireHeader, Utf8Bytes};

use crate::room::RoomName;

/// The types of event frame: all but `typing` carry a new id and are kept in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A chat message.
    Chat,
    /// A user's first socket in the room opened.
    Join,
    /// A user's last socket in the room has been gone for the leave grace.
    Left,
    /// A chat message's text was changed; `data` is `{"id": N, "text": "…"}`.
    Edit,
    /// A chat message was taken back; `data` is `{"id": N}`.
    Delete,
    /// Someone is typing: id 0, never stored, never replayed.
    Typing,
}

/// The `data` of an `edit` frame.
#[derive(Debug, Serialize)]
pub struct EditData<'a> {
    /// The chat message changed.
    pub id: u64,
    /// Its new text.
    pub text: &'a str,
}

/// The `data` of a `delete` frame.
#[derive(Debug, Serialize)]
pub struct DeleteData {
    /// The chat message taken back.
    pub id: u64,
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
struct EventBody<'a, D: ?Sized> {
    #[serde(rename = "type")]
    kind: EventKind,
    room: &'a str,
    user: &'a RawValue,
    data: &'a D,
    ts: u64,
}

/// Everything of an event frame but its id: `"type":"chat","room":…,"ts":…}` — the JSON object
/// without its opening brace, ready for [`splice_id`].
pub fn event_body<D: Serialize + ?Sized>(
    kind: EventKind,
    room: &RoomName,
    user: &RawValue,
    data: &D,
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

/// The frame telling a room's other sockets that `user` is typing.
pub fn typing_frame(room: &RoomName, user: &RawValue, ts_ms: u64) -> Frame {
    splice_id(0, &event_body(EventKind::Typing, room, user, "", ts_ms))
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

/// The fields a node reads from an event frame that reached it from another node.
#[derive(Debug, serde::Deserialize)]
pub struct FrameHeader<'a> {
    /// The message id.
    pub id: u64,
    /// The frame's type: `kick` notices are sequenced too, and reach no socket.
    #[serde(rename = "type", borrow, default)]
    pub kind: &'a str,
    /// The room it belongs to.
    #[serde(borrow)]
    pub room: &'a str,
    /// When the publishing node made it, in ms since the Unix epoch.
    #[serde(default)]
    pub ts: u64,
}

/// What a node reads from a frame it acts on rather than only passes on: a `typing` frame (id
/// 0, outside the id sequence) or a `kick` notice. Read only for those, so that other frames
/// (nearly all) parse no more than their [`FrameHeader`].
#[derive(Debug, serde::Deserialize)]
pub struct UnsequencedHeader<'a> {
    /// `typing` or `kick`.
    #[serde(rename = "type", borrow)]
    pub kind: &'a str,
    /// The room it belongs to.
    #[serde(borrow)]
    pub room: &'a str,
    /// The typist (whose own sockets it skips), or the user to kick.
    #[serde(borrow)]
    pub user: FrameUser<'a>,
}

/// The one field of a frame's `user` a node reads.
#[derive(Debug, serde::Deserialize)]
pub struct FrameUser<'a> {
    /// The user id.
    #[serde(borrow)]
    pub id: std::borrow::Cow<'a, str>,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
