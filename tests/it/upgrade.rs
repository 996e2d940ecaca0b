//! The WebSocket handshake and the wire shape of server frames, seen from raw TCP: what a
//! client that is not a WebSocket gets, and the frames a big room's opening arrives in.

use std::io::Cursor;
use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::{EVENT_TIMEOUT, TestUser, spawn_app};

/// The handshake key of RFC 6455's example, and the answer it must get.
const KEY_HEADER: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A response's status, lower-cased headers, and whatever came after them.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    stream: TcpStream,
    rest: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads from `stream` into `buffered`, failing the test on a close or after
/// [`EVENT_TIMEOUT`].
async fn read_more(stream: &mut TcpStream, buffered: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(EVENT_TIMEOUT, stream.read(&mut chunk))
        .await
        .expect("the server answers in time")
        .unwrap();
    assert!(n > 0, "the server closed the connection");
    buffered.extend_from_slice(&chunk[..n]);
}

/// Sends `GET path` asking for a WebSocket upgrade (`Connection: Upgrade`, `Upgrade:
/// WebSocket`, as a client may spell them) with `headers` (each `Name: value`) besides, and
/// reads the response head.
async fn raw_handshake(addr: SocketAddr, path: &str, headers: &[&str]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let end = loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        read_more(&mut stream, &mut received).await;
    };
    let head = String::from_utf8(received[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(':').unwrap();
            (name.to_ascii_lowercase(), value.trim().to_owned())
        })
        .collect();
    RawResponse {
        status,
        headers,
        stream,
        rest: received[end + 4..].to_vec(),
    }
}

#[tokio::test]
async fn a_plain_request_gets_426_naming_the_websocket_upgrade() {
    let app = spawn_app().await;
    let response = app.get("/ws/chat").await;
    assert_eq!(response.status(), 426);
    assert_eq!(response.headers()["upgrade"], "websocket");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("WebSocket endpoint")
    );
}

#[tokio::test]
async fn a_handshake_for_another_version_gets_426_naming_version_13() {
    let app = spawn_app().await;
    let headers = ["Sec-WebSocket-Version: 8", KEY_HEADER];
    let response = raw_handshake(app.addr, "/ws/chat", &headers).await;
    assert_eq!(response.status, 426);
    assert_eq!(response.header("sec-websocket-version"), Some("13"));
}

#[tokio::test]
async fn a_handshake_without_a_key_gets_400() {
    let app = spawn_app().await;
    let headers = ["Sec-WebSocket-Version: 13"];
    assert_eq!(
        raw_handshake(app.addr, "/ws/chat", &headers).await.status,
        400
    );
}

#[tokio::test]
async fn a_valid_handshake_is_answered_with_the_rfc_accept_key() {
    let app = spawn_app().await;
    let headers = ["Sec-WebSocket-Version: 13", KEY_HEADER];
    let response = raw_handshake(app.addr, "/ws/chat", &headers).await;
    assert_eq!(response.status, 101);
    assert_eq!(response.header("sec-websocket-accept"), Some(ACCEPT));
    assert_eq!(response.header("upgrade"), Some("websocket"));
}

/// One server frame off the wire, read with the WebSocket library's own header parser:
/// its header and payload.
async fn read_frame(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (FrameHeader, Vec<u8>) {
    loop {
        let mut cursor = Cursor::new(&buffered[..]);
        if let Some((header, len)) = FrameHeader::parse(&mut cursor).unwrap() {
            let start = cursor.position() as usize;
            let end = start + usize::try_from(len).unwrap();
            if buffered.len() >= end {
                let payload = buffered[start..end].to_vec();
                buffered.drain(..end);
                return (header, payload);
            }
        }
        read_more(stream, buffered).await;
    }
}

#[tokio::test]
async fn a_big_rooms_opening_is_whole_unmasked_text_frames() {
    let app = spawn_app().await;
    let mut members: Vec<TestUser> = Vec::new();
    // Held open: the members stay in the room.
    let mut sockets = Vec::new();
    for i in 0..40 {
        let user = app.sign_in(&format!("member-{i:02}")).await;
        sockets.push(app.join(&user, "big").await.0);
        members.push(user);
    }
    let ann = app.sign_in("ann").await;
    let cookie = format!("Cookie: {}", ann.cookie);
    let headers = ["Sec-WebSocket-Version: 13", KEY_HEADER, &cookie];
    let RawResponse {
        status,
        mut stream,
        rest: mut buffered,
        ..
    } = raw_handshake(app.addr, "/ws/chat?room=big", &headers).await;
    assert_eq!(status, 101);

    // History comes first (the members' joins); the list ends the opening. Every frame is
    // encoded once for all sockets: one final text frame, never masked.
    let (list_bytes, list) = loop {
        let (header, payload) = read_frame(&mut stream, &mut buffered).await;
        assert_eq!(header.opcode, OpCode::Data(Data::Text));
        assert!(header.is_final, "no server frame is fragmented");
        assert_eq!(header.mask, None, "server frames are not masked");
        let message: Value = serde_json::from_slice(&payload).unwrap();
        if message["type"] == "list" {
            break (payload.len(), message);
        }
    };
    assert!(
        list_bytes > 125,
        "the list of 41 users takes the 16-bit length: {list_bytes}"
    );
    let mut names: Vec<_> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|user| user["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut expected: Vec<_> = members.iter().map(|m| m.user.name.clone()).collect();
    expected.push("ann".into());
    expected.sort();
    assert_eq!(names, expected);
}

#[tokio::test]
async fn a_long_message_of_four_byte_characters_arrives_whole() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    // 2,000 four-byte characters: 8,000 bytes.
    let text = "😀".repeat(2000);
    ann_socket.send(&text).await;
    let chat = bob_socket.recv_until_chat(&text).await;
    assert_eq!(chat.last().unwrap()["data"], text.as_str());
}
