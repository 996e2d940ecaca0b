//! Presence per user: multi-tab, `join` once, `left` after the last tab and the grace.

use std::time::Duration;

use tokio::time::Instant;

use crate::helpers::{chat_texts, spawn_app, spawn_app_with, types};

#[tokio::test]
async fn a_user_with_three_tabs_is_listed_once_and_announced_once() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        tabs.push(app.join(&ann, "lobby").await);
    }
    assert_eq!(tabs[2].1.names(), ["ann", "bob"], "ann is listed once");
    bob_socket.send("marker").await;
    let frames = bob_socket.recv_until_chat("marker").await;
    assert_eq!(
        types(&frames),
        ["join", "chat"],
        "exactly one join for three tabs"
    );
    let (_cid_socket, opening) = app.join(&app.sign_in("cid").await, "lobby").await;
    assert_eq!(opening.names(), ["ann", "bob", "cid"]);
}

#[tokio::test]
async fn left_comes_only_after_the_last_tab_closes() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    let (tab1, _) = app.join(&ann, "lobby").await;
    let (tab2, _) = app.join(&ann, "lobby").await;
    assert_eq!(bob_socket.recv().await["type"], "join");

    tab1.close().await;
    bob_socket.send("after first close").await;
    let frames = bob_socket.recv_until_chat("after first close").await;
    assert_eq!(types(&frames), ["chat"], "no left while a tab is open");

    tab2.close().await;
    let left = bob_socket.recv().await;
    assert_eq!(left["type"], "left");
    assert_eq!(left["data"], "ann left.");
    assert_eq!(left["user"]["name"], "ann");
    let (_, opening) = app.join(&app.sign_in("cid").await, "lobby").await;
    assert_eq!(opening.names(), ["bob", "cid"]);
}

#[tokio::test]
async fn a_reconnect_within_the_grace_announces_nothing() {
    let grace = Duration::from_millis(600);
    let app = spawn_app_with(|config| config.chat.leave_grace = grace).await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    let (ann_socket, _) = app.join(&ann, "lobby").await;
    assert_eq!(bob_socket.recv().await["type"], "join");

    ann_socket.close().await;
    let (_ann_again, opening) = app.join(&ann, "lobby").await;
    assert_eq!(
        opening.names(),
        ["ann", "bob"],
        "still listed during the grace"
    );
    // Nothing can announce that nothing happened: wait out the grace, then look.
    tokio::time::sleep(grace * 2).await;
    bob_socket.send("marker").await;
    let frames = bob_socket.recv_until_chat("marker").await;
    assert_eq!(types(&frames), ["chat"], "no left and no second join");
}

#[tokio::test]
async fn left_is_announced_once_the_grace_has_passed() {
    let grace = Duration::from_millis(400);
    let app = spawn_app_with(|config| config.chat.leave_grace = grace).await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    let (ann_socket, _) = app.join(&ann, "lobby").await;
    assert_eq!(bob_socket.recv().await["type"], "join");
    let closed = Instant::now();
    ann_socket.close().await;
    let left = bob_socket.recv().await;
    assert_eq!(left["type"], "left");
    assert!(
        closed.elapsed() >= grace,
        "left came after {:?}, before the grace",
        closed.elapsed()
    );
    bob_socket.send("marker").await;
    assert_eq!(
        chat_texts(&bob_socket.recv_until_chat("marker").await),
        ["marker"]
    );
}
