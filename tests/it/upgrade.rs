//! The WebSocket handshake and the wire shape of large frames, seen from raw TCP: what a
//! client that is not a WebSocket gets, and how a big room's `list` is cut into fragments.

use std::net::SocketAddr;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// One server frame off the wire: FIN, opcode, payload. Server frames are never masked.
async fn read_frame(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> (bool, u8, Vec<u8>) {
    async fn fill(stream: &mut TcpStream, buffered: &mut Vec<u8>, len: usize) {
        while buffered.len() < len {
            read_more(stream, buffered).await;
        }
    }
    fill(stream, buffered, 2).await;
    let (fin, opcode) = (buffered[0] & 0x80 != 0, buffered[0] & 0x0F);
    assert_eq!(buffered[1] & 0x80, 0, "server frames are not masked");
    let (header, len) = match buffered[1] & 0x7F {
        126 => {
            fill(stream, buffered, 4).await;
            (
                4,
                usize::from(u16::from_be_bytes([buffered[2], buffered[3]])),
            )
        }
        127 => panic!("no server frame needs a 64-bit length"),
        len => (2, usize::from(len)),
    };
    fill(stream, buffered, header + len).await;
    let payload = buffered[header..header + len].to_vec();
    buffered.drain(..header + len);
    (fin, opcode, payload)
}

#[tokio::test]
async fn a_big_rooms_list_goes_out_in_fragments_that_rebuild_it() {
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

    // History comes first (the members' joins); the list ends the opening.
    let (pieces, list) = loop {
        let mut pieces = Vec::new();
        loop {
            let (fin, opcode, payload) = read_frame(&mut stream, &mut buffered).await;
            pieces.push((opcode, payload));
            if fin {
                break;
            }
        }
        let text: Vec<u8> = pieces
            .iter()
            .flat_map(|(_, payload)| payload.clone())
            .collect();
        let message: Value = serde_json::from_slice(&text).unwrap();
        if message["type"] == "list" {
            break (pieces, message);
        }
    };
    assert!(
        pieces.len() > 1,
        "the list of 41 users is over one fragment"
    );
    assert_eq!(pieces[0].0, 0x1, "a text message begins");
    assert!(
        pieces[1..].iter().all(|(opcode, _)| *opcode == 0x0),
        "continuations follow"
    );
    assert!(
        pieces
            .iter()
            .all(|(_, payload)| payload.len() <= confab::protocol::FRAGMENT_BYTES)
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
async fn a_long_message_cut_inside_its_characters_arrives_whole() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    // 2,000 four-byte characters: 8,000 bytes, cut into fragments inside characters.
    let text = "😀".repeat(2000);
    ann_socket.send(&text).await;
    let chat = bob_socket.recv_until_chat(&text).await;
    assert_eq!(chat.last().unwrap()["data"], text.as_str());
}
