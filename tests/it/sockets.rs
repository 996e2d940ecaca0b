//! The WebSocket: upgrade checks, frame shapes, history, `since` and the seam to live frames.

use std::collections::HashSet;

use serde_json::Value;

use crate::helpers::{TestUser, chat_texts, ids, spawn_app, spawn_app_with, tampered, types};

fn user_json(user: &TestUser) -> Value {
    serde_json::to_value(&user.user).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test]
async fn a_socket_without_a_valid_cookie_is_closed_with_4001() {
    let app = spawn_app().await;
    let mut forged = app.sign_in("ann").await;
    forged.cookie = tampered(&forged.cookie);
    for user in [None, Some(&forged)] {
        let mut socket = app
            .try_connect(user, "?room=lobby", None)
            .await
            .expect("the upgrade itself succeeds");
        let (code, reason, frames) = socket.recv_close().await;
        assert_eq!((code, reason.as_str()), (4001, "Invalid user"));
        assert!(frames.is_empty(), "nothing before the close: {frames:?}");
    }
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="invalid_user"}"#)
            .await,
        2.0
    );
    assert_eq!(
        app.metric(r#"confab_disconnects_total{code="4001"}"#).await,
        2.0
    );
}

#[tokio::test]
async fn an_invalid_room_is_closed_with_4004() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    for query in [
        "?room=",
        "?room=Lobby",
        "?room=-x",
        "?room=a%2Fb",
        "?room=abcdefghijklmnopqrstuvwxyz0123456",
    ] {
        let mut socket = app.try_connect(Some(&user), query, None).await.unwrap();
        let (code, reason, frames) = socket.recv_close().await;
        assert_eq!((code, reason.as_str()), (4004, "Invalid room"), "{query}");
        assert!(frames.is_empty(), "{query}: {frames:?}");
    }
}

#[tokio::test]
async fn an_unparsable_since_is_closed_with_4000() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    for query in ["?since=abc", "?since=-1", "?since=1.5"] {
        let mut socket = app.try_connect(Some(&user), query, None).await.unwrap();
        let (code, reason, _) = socket.recv_close().await;
        assert_eq!((code, reason.as_str()), (4000, "Invalid since"), "{query}");
    }
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="invalid_since"}"#)
            .await,
        3.0
    );
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_and_counted_by_its_code() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    let goodbye = CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    };
    socket
        .send_message(Message::Close(Some(goodbye)))
        .await
        .unwrap();
    match socket.next_event().await {
        crate::helpers::Received::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1000, "the close is echoed")
        }
        other => panic!("expected the server's close reply, got {other:?}"),
    }
    crate::helpers::eventually("the close to be counted", || async {
        app.metric(r#"confab_disconnects_total{code="1000"}"#).await == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_foreign_origin_gets_403_and_no_socket() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://{}", app.addr).replace("127.0.0.1", "localhost"),
    ] {
        match app.try_connect(Some(&user), "", Some(origin)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}")
            }
            Err(other) => panic!("{origin}: expected 403, got {other}"),
            Ok(_) => panic!("{origin}: a socket was opened"),
        }
    }
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="bad_origin"}"#)
            .await,
        3.0
    );
    assert!(
        app.try_connect(Some(&user), "", None).await.is_ok(),
        "no Origin: not a browser, allowed"
    );
    let same = format!("http://{}", app.addr);
    assert!(
        app.try_connect(Some(&user), "", Some(&same)).await.is_ok(),
        "the page's own origin"
    );
}

#[tokio::test]
async fn configured_origins_may_open_sockets() {
    let app =
        spawn_app_with(|config| config.allowed_origins = vec!["https://chat.example.com".into()])
            .await;
    let user = app.sign_in("ann").await;
    assert!(
        app.try_connect(Some(&user), "", Some("https://chat.example.com"))
            .await
            .is_ok()
    );
    assert!(
        app.try_connect(Some(&user), "", Some("https://other.example.com"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_first_socket_gets_its_own_join_then_a_list_of_itself() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let before = now_ms();
    let (_socket, opening) = app.join(&ann, "lobby").await;
    assert_eq!(opening.history.len(), 1, "{:?}", opening.history);
    let join = &opening.history[0];
    let keys: HashSet<&str> = join
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["id", "type", "room", "user", "data", "ts"])
    );
    assert_eq!(join["type"], "join");
    assert_eq!(join["room"], "lobby");
    assert_eq!(join["user"], user_json(&ann));
    assert_eq!(join["data"], "ann joined.");
    let ts = join["ts"].as_u64().unwrap();
    assert!(
        ts >= before && ts <= now_ms(),
        "ts {ts} is the server's time in ms"
    );
    let id = join["id"].as_u64().unwrap();
    assert!(
        id > 1_700_000_000_000_000,
        "a new sequence starts at the Unix time in µs: {id}"
    );
    assert!(id < (1 << 53), "ids stay exact in JavaScript");

    let list = &opening.list;
    assert_eq!(list["type"], "list");
    assert_eq!(list["room"], "lobby");
    assert_eq!(
        list["user"],
        user_json(&ann),
        "the list names the receiving user"
    );
    assert_eq!(list["data"], serde_json::json!([user_json(&ann)]));
    assert_eq!(
        list["id"], id,
        "the list carries the id of the last frame before it"
    );
}

#[tokio::test]
async fn a_chat_message_reaches_everyone_in_the_room_trimmed_with_a_new_id() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut ann_socket, ann_opening) = app.join(&ann, "lobby").await;
    let (mut bob_socket, bob_opening) = app.join(&bob, "lobby").await;
    assert_eq!(bob_opening.names(), ["ann", "bob"]);
    let bob_join = ann_socket.recv().await;
    assert_eq!(
        (bob_join["type"].as_str(), bob_join["data"].as_str()),
        (Some("join"), Some("bob joined."))
    );

    ann_socket.send("  hello <b>world</b> \n").await;
    for socket in [&mut ann_socket, &mut bob_socket] {
        let chat = socket.recv().await;
        assert_eq!(chat["type"], "chat");
        assert_eq!(chat["room"], "lobby");
        assert_eq!(chat["user"], user_json(&ann));
        assert_eq!(chat["data"], "hello <b>world</b>");
        assert!(chat["id"].as_u64().unwrap() > bob_join["id"].as_u64().unwrap());
        assert_eq!(chat.as_object().unwrap().len(), 6);
    }
    assert!(ann_opening.list["id"].as_u64().unwrap() < bob_join["id"].as_u64().unwrap());
}

#[tokio::test]
async fn rooms_do_not_hear_each_other() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut lobby, _) = app.join(&ann, "lobby").await;
    let (mut other, other_opening) = app.join(&ann, "other").await;
    assert_eq!(
        types(&other_opening.history),
        ["join"],
        "the lobby's history is not replayed here"
    );
    other.send("in other").await;
    lobby.send("in lobby").await;
    let frames = lobby.recv_until_chat("in lobby").await;
    assert_eq!(chat_texts(&frames), ["in lobby"]);
    let frames = other.recv_until_chat("in other").await;
    assert_eq!(frames.len(), 1);
}

#[tokio::test]
async fn history_replays_at_most_the_configured_frames_then_the_list() {
    let app = spawn_app_with(|config| config.chat.history = 5).await;
    let ann = app.sign_in("ann").await;
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    let texts: Vec<String> = (1..=8).map(|n| format!("message {n}")).collect();
    for text in &texts {
        ann_socket.send(text).await;
    }
    let sent = ann_socket.recv_until_chat("message 8").await;
    let bob = app.sign_in("bob").await;
    let (_bob_socket, opening) = app.join(&bob, "lobby").await;
    assert_eq!(
        types(&opening.history),
        ["chat", "chat", "chat", "chat", "join"]
    );
    assert_eq!(
        chat_texts(&opening.history),
        ["message 5", "message 6", "message 7", "message 8"]
    );
    assert_eq!(
        &opening.history[..4],
        &sent[4..],
        "history frames are byte-for-byte the live ones"
    );
    let history_ids = ids(&opening.history);
    assert!(
        history_ids.windows(2).all(|pair| pair[0] < pair[1]),
        "{history_ids:?}"
    );
    assert_eq!(opening.list["id"].as_u64(), history_ids.last().copied());
}

#[tokio::test]
async fn since_replays_only_newer_frames() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    for n in 1..=4 {
        ann_socket.send(&format!("m{n}")).await;
    }
    let frames = ann_socket.recv_until_chat("m4").await;
    let m2 = frames[1]["id"].as_u64().unwrap();
    let m4 = frames[3]["id"].as_u64().unwrap();

    let mut resumed = app.connect(&ann, &format!("?room=lobby&since={m2}")).await;
    let opening = resumed.recv_opening().await;
    assert_eq!(chat_texts(&opening.history), ["m3", "m4"]);
    assert_eq!(opening.list["id"], m4);

    let mut caught_up = app.connect(&ann, &format!("?room=lobby&since={m4}")).await;
    let opening = caught_up.recv_opening().await;
    assert!(opening.history.is_empty(), "{:?}", opening.history);
    assert_eq!(opening.list["id"], m4, "no history: the list carries since");

    let mut fresh = app.connect(&ann, "?room=empty-room&since=0").await;
    let opening = fresh.recv_opening().await;
    assert_eq!(types(&opening.history), ["join"]);

    ann_socket.send("m5").await;
    let live = caught_up.recv().await;
    assert_eq!(
        (live["type"].as_str(), live["data"].as_str()),
        (Some("chat"), Some("m5"))
    );
}

/// Everything a socket saw, history and live, until the `chat` with `text`.
async fn sequence_until(
    socket: &mut crate::helpers::TestSocket,
    history: Vec<Value>,
    text: &str,
) -> Vec<Value> {
    let mut frames = history;
    frames.extend(socket.recv_until_chat(text).await);
    frames
}

#[tokio::test]
async fn the_seam_between_history_and_live_loses_and_repeats_nothing_while_others_send() {
    let app = spawn_app_with(|config| config.chat.history = 10_000).await;
    let observer = app.sign_in("observer").await;
    let (mut observer_socket, observer_opening) = app.join(&observer, "lobby").await;

    let mut senders = Vec::new();
    for s in 0..5 {
        let user = app.sign_in(&format!("sender{s}")).await;
        let (socket, _) = app.join(&user, "lobby").await;
        senders.push(socket);
    }
    let sending = senders.into_iter().enumerate().map(|(s, mut socket)| {
        tokio::spawn(async move {
            for n in 0..20 {
                socket.send(&format!("s{s}-{n}")).await;
                tokio::task::yield_now().await;
            }
            socket
        })
    });
    let sending: Vec<_> = sending.collect();

    // Joiners arrive while the senders are sending.
    let mut joiners: Vec<(crate::helpers::TestSocket, Vec<Value>)> = Vec::new();
    for j in 0..6 {
        let user = app.sign_in(&format!("joiner{j}")).await;
        let (socket, opening) = app.join(&user, "lobby").await;
        assert!(
            opening.history.iter().all(|frame| frame["type"] != "list"),
            "the list comes after the history"
        );
        joiners.push((socket, opening.history));
    }
    let mut senders = Vec::new();
    for task in sending {
        senders.push(task.await.unwrap());
    }
    // Everything sent is in before the observer's last word, so "end" comes after it all.
    let mut expected = observer_opening.history;
    expected.extend(observer_socket.recv_chats(100).await);
    observer_socket.send("end").await;
    expected.extend(observer_socket.recv_until_chat("end").await);
    let expected_ids = ids(&expected);
    assert!(
        expected_ids.windows(2).all(|pair| pair[0] < pair[1]),
        "observer ids increase"
    );
    for s in 0..5 {
        let own: Vec<&str> = chat_texts(&expected)
            .into_iter()
            .filter(|t| t.starts_with(&format!("s{s}-")))
            .collect();
        let in_order: Vec<String> = (0..20).map(|n| format!("s{s}-{n}")).collect();
        assert_eq!(
            own, in_order,
            "sender {s}'s messages arrive in the order sent"
        );
    }
    for (j, (mut socket, history)) in joiners.into_iter().enumerate() {
        let seen = sequence_until(&mut socket, history, "end").await;
        assert_eq!(
            ids(&seen),
            expected_ids,
            "joiner {j} saw exactly the observer's sequence"
        );
    }
}
