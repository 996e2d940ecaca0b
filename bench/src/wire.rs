//! The client side of WebSocket (RFC 6455) that a load generator needs, and no more.
//!
//! - [`upgrade_request`] writes the `GET … Upgrade: websocket` request (with `Cookie` and
//!   `Origin`); [`parse_response_head`] finds the end of the answer's head and its status. The
//!   `Sec-WebSocket-Accept` value is not checked: a `101` is taken as the upgrade, which is all
//!   a generator talking to servers on its own machine needs.
//! - [`Frames`] walks every complete server frame in a read buffer without copying or
//!   allocating: a frame is a header and a borrowed payload slice. Server frames are never
//!   masked; no extension is negotiated, so the reserved bits must be clear.
//! - [`encode_masked`] writes one masked client frame (the mask is mandatory from clients).
//!
//! Fragmented messages are reassembled by the caller (the worker keeps a buffer for the rare
//! fragmented text message); control frames are answered by the caller too.

use std::fmt;

/// Continuation frame.
pub const OP_CONTINUATION: u8 = 0x0;
/// Text frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping frame.
pub const OP_PING: u8 = 0x9;
/// Pong frame.
pub const OP_PONG: u8 = 0xA;

/// Close code for a normal close.
pub const CLOSE_NORMAL: u16 = 1000;
/// Close code reported when a close frame carried no code.
pub const CLOSE_NO_STATUS: u16 = 1005;
/// Close code reported when the connection ended without a close frame.
pub const CLOSE_ABNORMAL: u16 = 1006;

/// One frame's header: what it is and how many bytes it and its payload take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    /// The FIN bit: the last frame of a message.
    pub fin: bool,
    /// The opcode (`OP_*`).
    pub opcode: u8,
    /// Bytes of header (2, 4 or 10: server frames carry no mask).
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

impl FrameHead {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// A server frame this client cannot accept; the socket is then dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1–3 set although no extension was negotiated.
    ReservedBits,
    /// A server frame with the mask bit set.
    Masked,
    /// An opcode RFC 6455 reserves.
    BadOpcode(u8),
    /// A control frame longer than 125 bytes or fragmented.
    BadControl,
    /// A payload longer than the limit given to [`parse_head`].
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits => f.write_str("frame with reserved bits set"),
            Self::Masked => f.write_str("masked server frame"),
            Self::BadOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            Self::BadControl => f.write_str("control frame too long or fragmented"),
            Self::TooLarge(len) => write!(f, "frame of {len} bytes is over the limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads the frame header at the start of `buf`. `Ok(None)`: the header is not complete yet.
/// The payload may still be incomplete: compare [`FrameHead::total_len`] with `buf.len()`.
pub fn parse_head(buf: &[u8], max_payload: usize) -> Result<Option<FrameHead>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin || b1 & 0x7F > 125 {
                return Err(FrameError::BadControl);
            }
        }
        other => return Err(FrameError::BadOpcode(other)),
    }
    let (header_len, len) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(bytes) => (4, u64::from(u16::from_be_bytes([bytes[0], bytes[1]]))),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(bytes) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(bytes);
                (10, u64::from_be_bytes(be))
            }
            None => return Ok(None),
        },
        short => (2, u64::from(short)),
    };
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        header_len,
        payload_len: len as usize,
    }))
}

/// One complete frame inside a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its header.
    pub head: FrameHead,
    /// Its payload, borrowed from the buffer.
    pub payload: &'a [u8],
}

/// Every complete frame at the front of a buffer, in order. When it stops, [`Frames::consumed`]
/// says how many bytes the complete frames took (the rest is the start of the next frame) and
/// [`Frames::needed`] how many bytes that next frame needs in all, when its header is known.
#[derive(Debug)]
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
    max_payload: usize,
    needed: Option<usize>,
}

impl<'a> Frames<'a> {
    /// Walks `buf`; frames with payloads over `max_payload` are an error.
    pub fn new(buf: &'a [u8], max_payload: usize) -> Self {
        Self {
            buf,
            pos: 0,
            max_payload,
            needed: None,
        }
    }

    /// Bytes taken by the frames returned so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }

    /// The full size of the incomplete frame the walk stopped at, once its header is there.
    pub fn needed(&self) -> Option<usize> {
        self.needed
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos..];
        match parse_head(rest, self.max_payload) {
            Err(error) => Some(Err(error)),
            Ok(None) => None,
            Ok(Some(head)) => {
                if rest.len() < head.total_len() {
                    self.needed = Some(head.total_len());
                    return None;
                }
                self.pos += head.total_len();
                Some(Ok(Frame {
                    head,
                    payload: &rest[head.header_len..head.total_len()],
                }))
            }
        }
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode_masked(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, byte) in out[start..].iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The close code of a close frame's payload ([`CLOSE_NO_STATUS`] when it has none).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [hi, lo, ..] => u16::from_be_bytes([*hi, *lo]),
        _ => CLOSE_NO_STATUS,
    }
}

/// What a WebSocket upgrade request carries besides the fixed headers.
#[derive(Debug, Clone, Copy)]
pub struct Upgrade<'a> {
    /// Path and query (`/ws/chat?room=r`).
    pub path: &'a str,
    /// The `Host` header (`127.0.0.1:3000`).
    pub host: &'a str,
    /// The `Origin` header, if any.
    pub origin: Option<&'a str>,
    /// The `Cookie` header's value, if any (`name=…`).
    pub cookie: Option<&'a str>,
    /// `Sec-WebSocket-Key`: base64 of 16 random bytes ([`websocket_key`]).
    pub key: &'a str,
}

/// Appends the HTTP/1.1 upgrade request to `out`.
pub fn upgrade_request(out: &mut Vec<u8>, upgrade: &Upgrade<'_>) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
        upgrade.path, upgrade.host, upgrade.key
    );
    if let Some(origin) = upgrade.origin {
        let _ = write!(out, "Origin: {origin}\r\n");
    }
    if let Some(cookie) = upgrade.cookie {
        let _ = write!(out, "Cookie: {cookie}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Finds the end of an HTTP response head. `None`: not complete yet. `Some((status, len))`:
/// the status code (0 when the status line does not parse) and the head's length including
/// the blank line; anything after it is already body (or WebSocket frames after a `101`).
pub fn parse_response_head(buf: &[u8]) -> Option<(u16, usize)> {
    let end = memchr::memmem::find(buf, b"\r\n\r\n")? + 4;
    let status = buf
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| buf.strip_prefix(b"HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|digits| std::str::from_utf8(digits).ok())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or(0);
    Some((status, end))
}

/// A `Sec-WebSocket-Key`: base64 of the 16 bytes of `random`.
pub fn websocket_key(random: u128) -> String {
    base64(&random.to_le_bytes())
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xFFFF {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn unmask(frame: &[u8]) -> (u8, Vec<u8>) {
        assert_ne!(frame[1] & 0x80, 0, "client frames are masked");
        let (len, at) = match frame[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([frame[2], frame[3]])), 4),
            127 => {
                let mut be = [0; 8];
                be.copy_from_slice(&frame[2..10]);
                (u64::from_be_bytes(be) as usize, 10)
            }
            n => (usize::from(n), 2),
        };
        let mask = &frame[at..at + 4];
        let payload = frame[at + 4..at + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(frame.len(), at + 4 + len);
        (frame[0], payload)
    }

    #[test]
    fn walks_every_complete_frame_and_stops_at_a_partial_one() {
        let mut buf = Vec::new();
        buf.extend(server_frame(true, OP_TEXT, b"{\"id\":1}"));
        buf.extend(server_frame(true, OP_PING, b"p"));
        let big = vec![b'x'; 300];
        buf.extend(server_frame(true, OP_TEXT, &big));
        let whole = buf.len();
        let last = server_frame(true, OP_TEXT, &vec![b'y'; 70_000]);
        buf.extend_from_slice(&last[..100]);

        let mut frames = Frames::new(&buf, 1 << 20);
        let got: Vec<_> = frames.by_ref().map(Result::unwrap).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].payload, b"{\"id\":1}");
        assert_eq!(got[1].head.opcode, OP_PING);
        assert_eq!(got[2].payload, &big[..]);
        assert_eq!(got[2].head.header_len, 4);
        assert_eq!(frames.consumed(), whole);
        assert_eq!(frames.needed(), Some(70_010));
    }

    #[test]
    fn a_header_cut_short_needs_more_bytes() {
        let frame = server_frame(true, OP_TEXT, &[b'a'; 200]);
        for cut in 0..4 {
            assert_eq!(parse_head(&frame[..cut], 1 << 20), Ok(None), "cut at {cut}");
        }
        let long = server_frame(true, OP_BINARY, &vec![0; 70_000]);
        assert_eq!(parse_head(&long[..9], 1 << 20), Ok(None));
        let head = parse_head(&long[..10], 1 << 20).unwrap().unwrap();
        assert_eq!((head.header_len, head.payload_len), (10, 70_000));
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        assert_eq!(parse_head(&[0xC1, 0x00], 10), Err(FrameError::ReservedBits));
        assert_eq!(parse_head(&[0x81, 0x80], 10), Err(FrameError::Masked));
        assert_eq!(parse_head(&[0x83, 0x00], 10), Err(FrameError::BadOpcode(3)));
        assert_eq!(parse_head(&[0x09, 0x00], 10), Err(FrameError::BadControl));
        assert_eq!(parse_head(&[0x89, 126], 10), Err(FrameError::BadControl));
        assert_eq!(parse_head(&[0x81, 11], 10), Err(FrameError::TooLarge(11)));
    }

    #[test]
    fn fragments_and_control_frames_come_through_with_their_bits() {
        let mut buf = server_frame(false, OP_TEXT, b"hel");
        buf.extend(server_frame(true, OP_PONG, b""));
        buf.extend(server_frame(true, OP_CONTINUATION, b"lo"));
        buf.extend(server_frame(true, OP_CLOSE, &[0x03, 0xE9, b'x']));
        let frames: Vec<_> = Frames::new(&buf, 100).map(Result::unwrap).collect();
        let heads: Vec<_> = frames.iter().map(|f| (f.head.fin, f.head.opcode)).collect();
        assert_eq!(
            heads,
            [
                (false, OP_TEXT),
                (true, OP_PONG),
                (true, OP_CONTINUATION),
                (true, OP_CLOSE)
            ]
        );
        assert_eq!(close_code(frames[3].payload), 1001);
        assert_eq!(close_code(b""), CLOSE_NO_STATUS);
    }

    #[test]
    fn client_frames_are_masked_at_every_length() {
        for len in [0, 1, 125, 126, 65_535, 65_536] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut out = Vec::new();
            encode_masked(&mut out, OP_TEXT, &payload, [1, 2, 3, 4]);
            let (b0, got) = unmask(&out);
            assert_eq!(b0, 0x81);
            assert_eq!(got, payload, "length {len}");
        }
    }

    #[test]
    fn upgrade_request_and_response_head() {
        let mut out = Vec::new();
        upgrade_request(
            &mut out,
            &Upgrade {
                path: "/ws/chat?room=a",
                host: "127.0.0.1:3000",
                origin: Some("http://127.0.0.1:3000"),
                cookie: Some("name=abc"),
                key: "dGhlIHNhbXBsZSBub25jZQ==",
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /ws/chat?room=a HTTP/1.1\r\nHost: 127.0.0.1:3000\r\n"));
        assert!(text.contains("\r\nOrigin: http://127.0.0.1:3000\r\nCookie: name=abc\r\n\r\n"));

        let answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01a";
        assert_eq!(parse_response_head(answer), Some((101, answer.len() - 3)));
        assert_eq!(parse_response_head(b"HTTP/1.1 403 Forbidden\r\n"), None);
        assert_eq!(
            parse_response_head(b"HTTP/1.1 403 Forbidden\r\n\r\n"),
            Some((403, 26))
        );
        assert_eq!(parse_response_head(b"garbage\r\n\r\n"), Some((0, 11)));
    }

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(websocket_key(7).len(), 24);
    }
}
