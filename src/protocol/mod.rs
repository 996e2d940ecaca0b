//! The wire format between a browser and a node: server frames, what clients may send, close
//! codes.
//!
//! A server frame is serialized **once** per message, by whichever node publishes it, and the
//! resulting [`Frame`] is shared (reference-counted) by every socket that receives it.
//!
//! - [`close`]: close codes, reasons and labels.
//! - [`frame`]: [`Frame`], event frames and their header, the `list` frame.
//! - [`server`]: the `error` frames.
//! - [`amend`]: a retained chat message rewritten by an edit or delete.
//! - [`client`]: what a client sends: chat text, commands (`v=2`), classified purely.

pub mod amend;
pub mod client;
pub mod close;
pub mod frame;
pub mod server;

pub use crate::room::{InvalidRoomName, RoomName};
pub use amend::RetainedChat;
pub use client::{
    BadCommand, ChatText, Command, Dialect, Incoming, MAX_CLIENT_MESSAGE_BYTES, check_chat_text,
    classify, parse_command,
};
pub use close::close_message;
pub use frame::{
    DeleteData, EditData, EventKind, Frame, FrameHeader, UnsequencedHeader, event_body, frame_id,
    list_frame, parse_frame_header, splice_id, typing_frame,
};
pub use server::ErrorCode;

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
