//! Graceful drain: readiness, refusal of new sockets, queued frames flushed, close 1012, exit.

use crate::helpers::{spawn_app, spawn_app_with};
use crate::startup::ConfabProcess;

#[tokio::test]
async fn draining_sends_queued_frames_then_1012_and_refuses_new_sockets() {
    let app = spawn_app().await;
    let (ann, bob) = (app.sign_in("ann").await, app.sign_in("bob").await);
    let (mut ann_socket, _) = app.join(&ann, "lobby").await;
    let (mut bob_socket, _) = app.join(&bob, "lobby").await;
    assert_eq!(ann_socket.recv().await["type"], "join");
    bob_socket.send("last words").await;
    assert_eq!(bob_socket.recv().await["data"], "last words");

    app.begin_stop();
    // ann reads the message queued for her, then the close, and then stops reading: her
    // socket stays open on the server, waiting for her close reply, so the node is still
    // draining while we look at it.
    let (code, reason, frames) = ann_socket.recv_close().await;
    assert_eq!((code, reason.as_str()), (1012, "Service restart"));
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["data"], "last words");

    let readiness = app.get("/readyz").await;
    assert_eq!(readiness.status(), 503);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "alive while draining"
    );
    match app.try_connect(Some(&ann), "", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!(
            "expected 503 while draining, got {:?}",
            other.map(|_| "a socket")
        ),
    }
    assert_eq!(bob_socket.recv_close().await.0, 1012);
    drop(ann_socket);
    app.stop().await.expect("the drain completes");
}

#[tokio::test]
async fn a_drained_node_counts_its_closes_as_1012() {
    let app = spawn_app_with(|config| config.chat.history = 0).await;
    let ann = app.sign_in("ann").await;
    let (mut socket, opening) = app.join(&ann, "lobby").await;
    assert!(
        opening.history.is_empty(),
        "CONFAB_HISTORY=0 replays nothing"
    );
    let state = app.state.clone();
    app.begin_stop();
    assert_eq!(socket.recv_close().await.0, 1012);
    socket.close().await;
    app.stop().await.unwrap();
    assert!(
        state
            .metrics
            .render()
            .contains(r#"confab_disconnects_total{code="1012"} 1"#)
    );
    assert!(state.metrics.render().contains("confab_connections 0"));
}

#[tokio::test]
async fn the_drain_spreads_closes_over_a_window_that_grows_with_the_sockets() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let mut sockets = Vec::new();
    for _ in 0..40 {
        sockets.push(app.join(&ann, "lobby").await.0);
    }
    app.state.begin_drain();
    assert_eq!(
        app.state.drain_spread(),
        std::time::Duration::from_millis(20),
        "0.5 ms per open socket"
    );
    for socket in &mut sockets {
        assert_eq!(socket.recv_close().await.0, 1012);
    }
}

#[tokio::test]
async fn a_second_signal_ends_the_drain_at_once() {
    let mut process = ConfabProcess::start(&[]).await;
    let app = process.client();
    let ann = app.sign_in("ann").await;
    // This client reads the 1012 but never answers it, so the drain waits for it.
    let (mut socket, _) = app.join(&ann, "lobby").await;
    process.signal("TERM");
    assert_eq!(socket.recv_close().await.0, 1012);
    process.signal("TERM");
    let status = process.wait().await;
    assert_eq!(status.code(), Some(1), "a forced stop is not a clean exit");
    let output = process.output();
    assert!(output.contains("second stop signal"), "{output}");
}

#[tokio::test]
async fn sigterm_drains_the_real_process_and_it_exits_0() {
    let mut process = ConfabProcess::start(&[]).await;
    let app = process.client();
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    process.signal("TERM");
    let (code, _, _) = socket.recv_close().await;
    assert_eq!(code, 1012);
    socket.close().await;
    let status = process.wait().await;
    assert_eq!(status.code(), Some(0), "a drained node exits 0");
    assert!(process.output().contains("draining"), "the drain is logged");
}

#[tokio::test]
async fn sigint_drains_too() {
    let mut process = ConfabProcess::start(&[]).await;
    process.signal("INT");
    assert_eq!(process.wait().await.code(), Some(0));
}
