//! A retained chat message and its latest state: what an `edit` or `delete` rewrites.
//!
//! A room retains its chat frames as they went on the wire. An edit or delete replaces the
//! retained frame with its new state — the same frame with the new text and `"edited": true`,
//! or with `"data": ""` and `"deleted": true` — so that history and scrollback show each
//! message once, as it is now; the change itself travels as a new `edit` or `delete` frame
//! with its own id. The rewrite is done here, in Rust, for both brokers: the Redis scripts
//! only swap one string for another, checking that nobody changed it meanwhile.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A retained `chat` frame, read back to be checked and rewritten.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetainedChat<'a> {
    /// The message id.
    pub id: u64,
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
    #[serde(borrow)]
    user: &'a RawValue,
    #[serde(borrow)]
    data: Cow<'a, str>,
    ts: u64,
    /// The text was changed since it was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edited: bool,
    /// The message was taken back; its text is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

#[derive(Deserialize)]
struct Author<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

impl<'a> RetainedChat<'a> {
    /// Reads a retained frame; `None` for anything that is not a chat frame.
    pub fn parse(text: &'a str) -> Option<Self> {
        serde_json::from_str::<Self>(text)
            .ok()
            .filter(|chat| chat.kind == "chat")
    }

    /// Whether `user_id` wrote it.
    pub fn is_by(&self, user_id: &str) -> bool {
        serde_json::from_str::<Author<'_>>(self.user.get()).is_ok_and(|author| author.id == user_id)
    }

    /// When it was sent, in ms since the Unix epoch.
    pub fn ts(&self) -> u64 {
        self.ts
    }

    /// The frame with `text` in place of its text, marked edited.
    pub fn edited_to(&self, text: &str) -> String {
        self.rewrite(|chat| {
            chat.data = Cow::Borrowed(text);
            chat.edited = true;
        })
    }

    /// The frame with its text removed, marked deleted.
    pub fn deleted(&self) -> String {
        self.rewrite(|chat| {
            chat.data = Cow::Borrowed("");
            chat.deleted = true;
        })
    }

    fn rewrite<'b>(&'b self, change: impl FnOnce(&mut RetainedChat<'b>)) -> String {
        let mut chat = RetainedChat {
            id: self.id,
            kind: Cow::Borrowed(&self.kind),
            room: Cow::Borrowed(&self.room),
            user: self.user,
            data: Cow::Borrowed(&self.data),
            ts: self.ts,
            edited: self.edited,
            deleted: self.deleted,
        };
        change(&mut chat);
        // Strings, numbers and already-valid JSON always serialize.
        serde_json::to_string(&chat).expect("a chat frame serializes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventKind, event_body, splice_id};
    use crate::room::RoomName;

    fn chat(text: &str) -> String {
        let user =
            RawValue::from_string(r#"{"id":"u1","name":"ann","image":"/i.svg"}"#.into()).unwrap();
        splice_id(
            7,
            &event_body(EventKind::Chat, &RoomName::lobby(), &user, text, 1_000),
        )
        .text()
        .to_string()
    }

    #[test]
    fn an_edit_keeps_every_field_but_the_text_in_place() {
        let original = chat("helo");
        let retained = RetainedChat::parse(&original).unwrap();
        assert!(retained.is_by("u1"));
        assert!(!retained.is_by("u2"));
        let edited = retained.edited_to("hello \"world\"");
        assert_eq!(
            edited,
            r#"{"id":7,"type":"chat","room":"lobby","user":{"id":"u1","name":"ann","image":"/i.svg"},"data":"hello \"world\"","ts":1000,"edited":true}"#
        );
        let again = RetainedChat::parse(&edited).unwrap();
        assert!(again.edited && !again.deleted);
        assert_eq!(
            again.deleted(),
            r#"{"id":7,"type":"chat","room":"lobby","user":{"id":"u1","name":"ann","image":"/i.svg"},"data":"","ts":1000,"edited":true,"deleted":true}"#
        );
    }

    #[test]
    fn only_chat_frames_are_read() {
        assert!(
            RetainedChat::parse(
                r#"{"id":1,"type":"join","room":"a","user":{"id":"u"},"data":"x","ts":1}"#
            )
            .is_none()
        );
        assert!(RetainedChat::parse("not json").is_none());
    }
}
