//! Close codes confab sends, the reasons that go with them, and their metric labels: one
//! table the socket, the page and `confab_disconnects_total` all read.

use tungstenite::Message;
use tungstenite::protocol::CloseFrame;
use tungstenite::protocol::frame::Utf8Bytes;

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
/// A moderator removed the user from the room, or the user is banned from it.
pub const KICKED: u16 = 4003;

/// Every code with a label of its own, so each is exported (as 0) from the start.
pub const ALL: [u16; 16] = [
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
    KICKED,
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
        KICKED => "4003",
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
        KICKED => "Kicked",
        _ => "",
    }
}

/// The close message for one of confab's own codes, with its reason.
pub fn close_message(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: Utf8Bytes::from_static(reason(code)),
    }))
}
