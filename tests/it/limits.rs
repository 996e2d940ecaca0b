//! Limits and their answers: message length, rate, binary frames, size, slow consumers.

use futures_util::future::join_all;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use crate::helpers::{chat_texts, eventually, spawn_app, spawn_app_with, types};

#[tokio::test]
async fn a_message_over_the_limit_gets_too_long_and_reaches_nobody() {
    let app = spawn_app_with(|config| config.chat.max_message_chars = 10).await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    assert_eq!(bob_socket.recv().await["type"], "join");

    ann_socket.send("12345678901").await;
    let error = ann_socket.recv().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "too_long");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error.get("id").is_none_or(serde_json::Value::is_null));

    let ten_emoji = "😀".repeat(10);
    ann_socket.send(&format!("  {ten_emoji}  ")).await;
    ann_socket.send("漢".repeat(11).as_str()).await;
    assert_eq!(
        ann_socket.recv().await["data"],
        ten_emoji.as_str(),
        "ten characters of four bytes fit"
    );
    assert_eq!(
        ann_socket.recv().await["code"],
        "too_long",
        "eleven characters of three bytes do not"
    );

    ann_socket.send("marker").await;
    let frames = bob_socket.recv_until_chat("marker").await;
    assert_eq!(
        chat_texts(&frames),
        [ten_emoji.as_str(), "marker"],
        "bob never saw the long ones"
    );
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="too_long"}"#)
            .await,
        2.0
    );
}

#[tokio::test]
async fn white_space_only_messages_are_ignored() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    for blank in ["", "   ", "\n\t "] {
        socket.send(blank).await;
    }
    socket.send("marker").await;
    let frames = socket.recv_until_chat("marker").await;
    assert_eq!(
        types(&frames),
        ["chat"],
        "no frame and no error for blank messages"
    );
}

#[tokio::test]
async fn a_burst_beyond_twenty_messages_is_rate_limited() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    for n in 0..30 {
        socket.send(&format!("burst {n}")).await;
    }
    let mut chats = 0;
    let mut limited = 0;
    while chats + limited < 30 {
        let frame = socket.recv().await;
        match frame["type"].as_str() {
            Some("chat") => chats += 1,
            Some("error") => {
                assert_eq!(
                    frame,
                    json!({"type": "error", "code": "rate_limited", "message": frame["message"]})
                );
                limited += 1;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    }
    assert!(
        (20..=22).contains(&chats),
        "{chats} accepted: a burst of 20 plus what refilled meanwhile"
    );
    assert_eq!(limited, 30 - chats);
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="rate_limited"}"#)
            .await,
        f64::from(limited)
    );
}

#[tokio::test]
async fn a_binary_frame_closes_the_socket_with_1003() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    socket
        .send_message(Message::binary(vec![1, 2, 3]))
        .await
        .unwrap();
    let (code, _, _) = socket.recv_close().await;
    assert_eq!(code, 1003);
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_socket_with_1009() {
    let app = spawn_app_with(|config| config.chat.max_message_chars = 65_536).await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    socket.send(&"x".repeat(64 * 1024)).await;
    assert_eq!(
        socket.recv().await["data"].as_str().map(str::len),
        Some(64 * 1024),
        "exactly 64 KiB is accepted"
    );
    socket.send(&"x".repeat(64 * 1024 + 1)).await;
    let (code, _, _) = socket.recv_close().await;
    assert_eq!(code, 1009);
}

#[tokio::test]
async fn a_fragmented_message_over_64_kib_closes_the_socket_with_1009() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    let chunk = vec![b'x'; 40 * 1024];
    let first = Frame::message(chunk.clone(), OpCode::Data(Data::Text), false);
    let last = Frame::message(chunk, OpCode::Data(Data::Continue), true);
    socket.send_message(Message::Frame(first)).await.unwrap();
    let _ = socket.send_message(Message::Frame(last)).await;
    let (code, _, _) = socket.recv_close().await;
    assert_eq!(code, 1009);
    assert_eq!(
        app.metric(r#"confab_disconnects_total{code="1009"}"#).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_1013_while_others_lose_nothing() {
    const SENDERS: usize = 40;
    let app = spawn_app().await;
    let slow_user = app.sign_in("slow").await;
    let mut slow = app.connect_slow_reader(&slow_user, "?room=lobby").await;
    let (watcher, _) = app.join(&app.sign_in("watcher").await, "lobby").await;
    let (_, mut watcher) = watcher.split();

    // Forty tabs of one user, all in the room before anyone sends. Each sends within the rate
    // limit (a burst of 20, then 5 a second, half the refill rate) until the slow client has been cut off, then a
    // last "done" message, while its own frames are read by a task of their own.
    let sender = app.sign_in("sender").await;
    let mut tabs = Vec::new();
    for _ in 0..SENDERS {
        tabs.push(app.join(&sender, "lobby").await.0.split());
    }
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for (s, (mut tx, mut rx)) in tabs.into_iter().enumerate() {
        readers.push(tokio::spawn(async move {
            let mut chats = Vec::new();
            let mut done = 0;
            while done < SENDERS {
                let frame = rx.recv().await;
                if frame["type"] == "chat" {
                    let text = frame["data"].as_str().unwrap().to_owned();
                    done += usize::from(text.starts_with("done"));
                    chats.push(text);
                }
            }
            chats
        }));
        let metrics = app.state.metrics.clone();
        writers.push(tokio::spawn(async move {
            let padding = "y".repeat(1000);
            let mut n = 0;
            while metrics.slow_consumers.get() == 0 {
                tx.send(&format!("{s:02}-{n:05}-{padding}")).await;
                n += 1;
                // Pacing below the refill rate once the burst is spent, so that no message is
                // refused even when the network bunches them: this is the offered load, not a
                // wait for an event.
                if n >= 20 {
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                assert!(n < 5_000, "the slow client was never cut off");
            }
            tx.send(&format!("done {s}")).await;
            n
        }));
    }
    let mut sent = Vec::new();
    for writer in join_all(writers).await {
        sent.push(writer.unwrap());
    }
    let total: usize = sent.iter().sum::<usize>() + SENDERS;

    // The watcher and every tab got every message, each sender's in the order sent.
    let mut watcher_chats = Vec::new();
    while watcher_chats
        .iter()
        .filter(|t: &&String| t.starts_with("done"))
        .count()
        < SENDERS
    {
        let frame = watcher.recv().await;
        if frame["type"] == "chat" {
            watcher_chats.push(frame["data"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(watcher_chats.len(), total, "the watcher lost nothing");
    for (s, &count) in sent.iter().enumerate() {
        let from_s: Vec<&String> = watcher_chats
            .iter()
            .filter(|t| t.starts_with(&format!("{s:02}-")))
            .collect();
        assert_eq!(from_s.len(), count, "sender {s}");
        assert!(
            from_s.windows(2).all(|pair| pair[0] < pair[1]),
            "sender {s} in order"
        );
    }
    for reader in join_all(readers).await {
        assert_eq!(
            reader.unwrap(),
            watcher_chats,
            "every tab saw the watcher's sequence"
        );
    }

    // The slow client, reading at last, gets what was buffered for it and then 1013.
    let (code, reason, frames) = slow.recv_close().await;
    assert_eq!((code, reason.as_str()), (1013, "Try again later"));
    assert!(frames.len() < total, "it was cut off, not served");
    assert_eq!(app.metric("confab_slow_consumers_total").await, 1.0);
    slow.close().await;
    eventually("the slow socket's close to be counted", || async {
        app.metric(r#"confab_disconnects_total{code="1013"}"#).await == 1.0
    })
    .await;
}
