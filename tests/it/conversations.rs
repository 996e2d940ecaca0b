//! Conversations: scrollback, `v=2` commands, typing, edit and delete — each clause through
//! real sockets and real HTTP, on the embedded broker and on two nodes of one Redis and of a
//! Redis Cluster.

use std::collections::BTreeMap;
use std::time::Duration;

use confab::Config;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, TestSocket, TestUser, TwoInARoom, chat_texts, ids, spawn_app, two_in_a_room, types,
};

/// Small limits, so that tests reach them: 4 frames of history, 6 retained messages.
fn settings(config: &mut Config) {
    config.chat.history = 4;
    config.chat.retain_messages = 6;
}

/// Opens a `v=2` socket as `user` in `room` and reads its opening.
async fn join_v2(node: &TestApp, user: &TestUser, room: &str) -> (TestSocket, Vec<Value>) {
    let mut socket = node.connect(user, &format!("?room={room}&v=2")).await;
    let opening = socket.recv_opening().await;
    (socket, opening.history)
}

/// Sends a `v=2` command.
async fn command(socket: &mut TestSocket, command: Value) {
    socket.send(&command.to_string()).await;
}

/// `GET /api/rooms/{room}/messages?QUERY` as `user`: the status and the JSON body.
async fn scrollback(node: &TestApp, user: &TestUser, room: &str, query: &str) -> (u16, Value) {
    let response = node
        .get_with_cookie(&format!("/api/rooms/{room}/messages{query}"), &user.cookie)
        .await;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|value| value.to_str().unwrap().to_owned());
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let body = response.text().await.expect("a body");
    (
        status,
        serde_json::from_str(&body).expect("the body is JSON"),
    )
}

/// Reads frames until one of `type`; returns it, failing on anything but `skip` types before.
async fn recv_type(socket: &mut TestSocket, kind: &str) -> Value {
    let frame = socket.recv().await;
    assert_eq!(frame["type"], kind, "expected a {kind} frame, got {frame}");
    frame
}

/// The chat messages as a client sees them after applying `frames` in order: id → frame in
/// its latest state (as scrollback and history show it).
fn apply(frames: &[Value], state: &mut BTreeMap<u64, Value>) {
    for frame in frames {
        match frame["type"].as_str() {
            Some("chat") => {
                state.insert(frame["id"].as_u64().unwrap(), frame.clone());
            }
            Some("edit") => {
                let target = frame["data"]["id"].as_u64().unwrap();
                if let Some(chat) = state.get_mut(&target) {
                    chat["data"] = frame["data"]["text"].clone();
                    chat["edited"] = json!(true);
                }
            }
            Some("delete") => {
                let target = frame["data"]["id"].as_u64().unwrap();
                if let Some(chat) = state.get_mut(&target) {
                    chat["data"] = json!("");
                    chat["deleted"] = json!(true);
                }
            }
            _ => {}
        }
    }
}

async fn scrollback_pages_back_through_the_retained_chat_messages(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let TwoInARoom {
        ann,
        mut ann_socket,
        bob,
        mut bob_socket,
    } = two_in_a_room(a, b, "scroll", "").await;
    for n in 1..=8 {
        ann_socket.send(&format!("message {n}")).await;
    }
    let live = bob_socket.recv_chats(8).await;
    let live_chats: Vec<&Value> = live.iter().filter(|f| f["type"] == "chat").collect();

    // The newest page, then back to the start of what the room retains (6 of the 8).
    let (status, newest) = scrollback(b, &bob, "scroll", "?limit=4").await;
    assert_eq!(status, 200);
    assert_eq!(newest["more"], true);
    let newest = newest["messages"].as_array().unwrap().clone();
    assert_eq!(
        chat_texts(&newest),
        ["message 5", "message 6", "message 7", "message 8"]
    );
    assert_eq!(
        newest,
        live_chats[4..]
            .iter()
            .map(|f| (*f).clone())
            .collect::<Vec<_>>(),
        "scrollback holds the very frames the sockets got"
    );
    let before = newest[0]["id"].as_u64().unwrap();
    let (_, older) = scrollback(a, &ann, "scroll", &format!("?before={before}&limit=4")).await;
    assert_eq!(older["more"], false, "the room retains 6 messages");
    let older = older["messages"].as_array().unwrap().clone();
    assert_eq!(chat_texts(&older), ["message 3", "message 4"]);
    let all: Vec<u64> = ids(&older).into_iter().chain(ids(&newest)).collect();
    assert!(all.windows(2).all(|pair| pair[0] < pair[1]), "{all:?}");

    // Only chat frames, the default page size, and an empty page before the first.
    let (_, whole) = scrollback(b, &bob, "scroll", "").await;
    assert_eq!(types(whole["messages"].as_array().unwrap()), ["chat"; 6]);
    let first = older[0]["id"].as_u64().unwrap();
    let (_, none) = scrollback(b, &bob, "scroll", &format!("?before={first}")).await;
    assert_eq!(none, json!({"messages": [], "more": false}));
    let (_, empty) = scrollback(b, &bob, "never-used", "").await;
    assert_eq!(empty, json!({"messages": [], "more": false}));
}
on_every_broker!(
    scrollback_pages_back_through_the_retained_chat_messages,
    super::settings
);

#[tokio::test]
async fn scrollback_refuses_what_it_cannot_answer_with_json_errors() {
    let app = spawn_app().await;
    let ann = app.sign_in("ann").await;
    let response = app.get("/api/rooms/lobby/messages").await;
    assert_eq!(response.status(), 401, "no cookie");
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "unauthorized");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    let forged = app
        .get_with_cookie(
            "/api/rooms/lobby/messages",
            &crate::helpers::tampered(&ann.cookie),
        )
        .await;
    assert_eq!(forged.status(), 401, "a forged cookie names nobody");
    for (path, status, code) in [
        ("/api/rooms/Not%20A%20Room/messages", 404, "not_found"),
        ("/api/rooms/lobby/messages?limit=0", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=101", 400, "bad_request"),
        ("/api/rooms/lobby/messages?limit=ten", 400, "bad_request"),
        ("/api/rooms/lobby/messages?before=-3", 400, "bad_request"),
        ("/api/rooms/lobby/nothing", 404, "not_found"),
    ] {
        let response = app.get_with_cookie(path, &ann.cookie).await;
        assert_eq!(response.status(), status, "{path}");
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["error"], code, "{path}");
    }
    let (status, body) = scrollback(&app, &ann, "lobby", "?limit=100&before=").await;
    assert_eq!((status, body["more"].clone()), (200, json!(false)));
}

async fn commands_need_v2_and_a_bad_one_loses_nothing_else(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let (mut ann_socket, _) = join_v2(a, &ann, "cmds").await;
    let (mut bob_plain, _) = b.join(&bob, "cmds").await;
    recv_type(&mut ann_socket, "join").await;

    command(
        &mut ann_socket,
        json!({"type": "chat", "data": "  hello  "}),
    )
    .await;
    for bad in [
        "hello",
        "{\"type\":\"chat\"",
        r#"{"type":"shout","data":"x"}"#,
        r#"{"type":"edit","data":"x"}"#,
        r#"{"type":"delete","id":"7"}"#,
        r#"["chat","x"]"#,
    ] {
        ann_socket.send(bad).await;
    }
    command(
        &mut ann_socket,
        json!({"type": "chat", "data": "still here"}),
    )
    .await;
    let chat = recv_type(&mut ann_socket, "chat").await;
    assert_eq!(chat["data"], "hello", "trimmed like any chat");
    for _ in 0..6 {
        let error = ann_socket.recv().await;
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "bad_command");
    }
    assert_eq!(
        recv_type(&mut ann_socket, "chat").await["data"],
        "still here"
    );

    // Without v=2 the same JSON is a chat message, as in the tutorial.
    bob_plain.send(r#"{"type":"typing"}"#).await;
    let frames = bob_plain.recv_until_chat(r#"{"type":"typing"}"#).await;
    assert_eq!(
        chat_texts(&frames),
        ["hello", "still here", r#"{"type":"typing"}"#]
    );
    assert_eq!(
        a.metric(r#"confab_rejected_total{reason="bad_command"}"#)
            .await
            + if std::ptr::eq(a, b) {
                0.0
            } else {
                b.metric(r#"confab_rejected_total{reason="bad_command"}"#)
                    .await
            },
        6.0
    );
}
on_every_broker!(
    commands_need_v2_and_a_bad_one_loses_nothing_else,
    super::settings
);

async fn typing_reaches_the_others_once_per_interval_and_is_never_kept(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let (ann, bob) = (a.sign_in("ann").await, b.sign_in("bob").await);
    let (mut ann_here, _) = join_v2(a, &ann, "typing").await;
    let (mut ann_there, _) = join_v2(b, &ann, "typing").await;
    let (mut bob_socket, _) = join_v2(b, &bob, "typing").await;
    recv_type(&mut ann_here, "join").await;
    recv_type(&mut ann_there, "join").await;

    // From two tabs on two nodes, typing fast: one frame in the interval reaches bob.
    for _ in 0..5 {
        command(&mut ann_here, json!({"type": "typing"})).await;
        command(&mut ann_there, json!({"type": "typing"})).await;
    }
    let typing = bob_socket.recv().await;
    assert_eq!(typing["type"], "typing");
    assert_eq!(typing["id"], 0);
    assert_eq!(typing["room"], "typing");
    assert_eq!(typing["user"]["id"], ann.user.id.as_str());
    assert_eq!(typing["data"], "");
    assert!(typing["ts"].as_u64().is_some());

    // Typing costs no rate-limit token: 20 chats still go through after 40 typings.
    for n in 0..20 {
        command(&mut ann_here, json!({"type": "typing"})).await;
        command(
            &mut ann_here,
            json!({"type": "chat", "data": format!("m{n}")}),
        )
        .await;
    }
    let frames = bob_socket.recv_chats(20).await;
    assert_eq!(
        types(&frames),
        ["chat"; 20],
        "no second typing within 2 s, no error"
    );
    let own = ann_here.recv_chats(20).await;
    assert_eq!(
        types(&own),
        ["chat"; 20],
        "the typist's own sockets get no typing"
    );
    let other_tab = ann_there.recv_chats(20).await;
    assert_eq!(
        types(&other_tab),
        ["chat"; 20],
        "not on her other node either"
    );

    // Never stored: a new socket's history and scrollback have no typing.
    let (_cid_socket, history) = join_v2(a, &a.sign_in("cid").await, "typing").await;
    assert!(!types(&history).contains(&"typing"));
    recv_type(&mut bob_socket, "join").await;
    let (_, page) = scrollback(a, &bob, "typing", "").await;
    assert!(!types(page["messages"].as_array().unwrap()).contains(&"typing"));

    // After the interval, the next one goes out again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    command(&mut ann_there, json!({"type": "typing"})).await;
    let typing = bob_socket.recv().await;
    assert_eq!(
        typing["type"], "typing",
        "a new interval, a new typing frame"
    );
}
on_every_broker!(
    typing_reaches_the_others_once_per_interval_and_is_never_kept,
    super::settings
);

async fn history_is_the_newest_frames_of_every_kind_in_id_order(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let TwoInARoom {
        mut ann_socket,
        mut bob_socket,
        ..
    } = two_in_a_room(a, b, "mixed", "&v=2").await;
    let mut chats = Vec::new();
    for text in ["c1", "c2", "c3"] {
        command(&mut ann_socket, json!({"type": "chat", "data": text})).await;
        chats.push(recv_type(&mut bob_socket, "chat").await);
    }
    let (_carol_socket, _) = join_v2(b, &b.sign_in("carol").await, "mixed").await;
    let carol_join = recv_type(&mut bob_socket, "join").await;
    let c3 = chats[2]["id"].as_u64().unwrap();
    command(
        &mut ann_socket,
        json!({"type": "edit", "id": c3, "data": "c3 again"}),
    )
    .await;
    let edit = recv_type(&mut bob_socket, "edit").await;

    // Newest first: dan's own join, the edit, carol's join, then c3 in its latest state —
    // four frames (CONFAB_HISTORY), whatever list each is kept in.
    let (_, history) = join_v2(a, &a.sign_in("dan").await, "mixed").await;
    assert_eq!(types(&history), ["chat", "join", "edit", "join"]);
    assert_eq!(history[0]["id"], c3);
    assert_eq!(history[0]["data"], "c3 again");
    assert_eq!(history[0]["edited"], true);
    assert_eq!(history[1], carol_join);
    assert_eq!(history[2], edit);
    assert_eq!(history[3]["data"], "dan joined.");
    let history_ids = ids(&history);
    assert!(history_ids.windows(2).all(|pair| pair[0] < pair[1]));
}
on_every_broker!(
    history_is_the_newest_frames_of_every_kind_in_id_order,
    super::settings
);

async fn authors_edit_and_delete_and_everyone_sees_the_latest_state(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let TwoInARoom {
        ann,
        mut ann_socket,
        bob,
        mut bob_socket,
    } = two_in_a_room(a, b, "edits", "&v=2").await;

    command(&mut ann_socket, json!({"type": "chat", "data": "helo"})).await;
    let chat = recv_type(&mut bob_socket, "chat").await;
    let id = chat["id"].as_u64().unwrap();
    recv_type(&mut ann_socket, "chat").await;

    // Someone else's message: forbidden, for edit and delete, and nothing is broadcast.
    command(
        &mut bob_socket,
        json!({"type": "edit", "id": id, "data": "pwned"}),
    )
    .await;
    command(&mut bob_socket, json!({"type": "delete", "id": id})).await;
    for _ in 0..2 {
        let error = recv_type(&mut bob_socket, "error").await;
        assert_eq!(error["code"], "forbidden");
    }

    command(
        &mut ann_socket,
        json!({"type": "edit", "id": id, "data": " hello "}),
    )
    .await;
    let edit = recv_type(&mut bob_socket, "edit").await;
    assert_eq!(recv_type(&mut ann_socket, "edit").await, edit);
    assert!(
        edit["id"].as_u64().unwrap() > id,
        "an edit has its own, newer id"
    );
    assert_eq!(edit["room"], "edits");
    assert_eq!(edit["user"]["id"], ann.user.id.as_str());
    assert_eq!(edit["data"], json!({"id": id, "text": "hello"}));

    let (_, page) = scrollback(b, &bob, "edits", "").await;
    let latest = &page["messages"][0];
    assert_eq!(
        (latest["id"].as_u64(), &latest["data"]),
        (Some(id), &json!("hello"))
    );
    assert_eq!(latest["edited"], true);
    assert_eq!(latest["ts"], chat["ts"], "it keeps the time it was sent");

    // Too long, empty, unknown: refused, nothing broadcast.
    let long = "x".repeat(2001);
    command(
        &mut ann_socket,
        json!({"type": "edit", "id": id, "data": long}),
    )
    .await;
    command(
        &mut ann_socket,
        json!({"type": "edit", "id": id, "data": "   "}),
    )
    .await;
    command(
        &mut ann_socket,
        json!({"type": "edit", "id": id + 1_000_000, "data": "x"}),
    )
    .await;
    command(&mut ann_socket, json!({"type": "delete", "id": 42})).await;
    let codes: Vec<Value> = [
        recv_type(&mut ann_socket, "error").await,
        recv_type(&mut ann_socket, "error").await,
        recv_type(&mut ann_socket, "error").await,
        recv_type(&mut ann_socket, "error").await,
    ]
    .into_iter()
    .map(|error| error["code"].clone())
    .collect();
    assert_eq!(codes, ["too_long", "bad_command", "not_found", "not_found"]);

    command(&mut ann_socket, json!({"type": "delete", "id": id})).await;
    let delete = recv_type(&mut bob_socket, "delete").await;
    assert_eq!(delete["data"], json!({"id": id}));
    assert!(delete["id"].as_u64() > edit["id"].as_u64());
    recv_type(&mut ann_socket, "delete").await;
    command(
        &mut ann_socket,
        json!({"type": "edit", "id": id, "data": "back"}),
    )
    .await;
    command(&mut ann_socket, json!({"type": "delete", "id": id})).await;
    for _ in 0..2 {
        assert_eq!(
            recv_type(&mut ann_socket, "error").await["code"],
            "not_found"
        );
    }

    let (_, page) = scrollback(a, &ann, "edits", "").await;
    let latest = &page["messages"][0];
    assert_eq!(latest["deleted"], true);
    assert_eq!(latest["data"], "");

    // History replays the message in its latest state, then the edit and delete frames; a
    // socket that resumes from the chat gets just those two.
    let (_, history) = join_v2(b, &b.sign_in("cid").await, "edits").await;
    let replayed: Vec<&Value> = history.iter().filter(|f| f["id"] == id).collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0]["deleted"], true);
    let mut resumed = b
        .connect(&bob, &format!("?room=edits&v=2&since={id}"))
        .await;
    let opening = resumed.recv_opening().await;
    assert_eq!(types(&opening.history)[..2], ["edit", "delete"]);
    assert_eq!(opening.history[0], edit);
    assert_eq!(opening.history[1], delete);
}
on_every_broker!(
    authors_edit_and_delete_and_everyone_sees_the_latest_state,
    super::settings
);

/// Retained for two seconds only, to see messages age out.
fn short_retention(config: &mut Config) {
    settings(config);
    config.chat.retain_for = Duration::from_secs(2);
}

async fn messages_past_the_retention_age_are_gone(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let ann = a.sign_in("ann").await;
    let (mut socket, _) = join_v2(a, &ann, "aging").await;
    command(&mut socket, json!({"type": "chat", "data": "soon gone"})).await;
    let id = recv_type(&mut socket, "chat").await["id"].as_u64().unwrap();
    let (_, page) = scrollback(b, &ann, "aging", "").await;
    assert_eq!(
        chat_texts(page["messages"].as_array().unwrap()),
        ["soon gone"]
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_, page) = scrollback(b, &ann, "aging", "").await;
    assert_eq!(page, json!({"messages": [], "more": false}));
    command(
        &mut socket,
        json!({"type": "edit", "id": id, "data": "too late"}),
    )
    .await;
    assert_eq!(recv_type(&mut socket, "error").await["code"], "not_found");
}
on_every_broker!(
    messages_past_the_retention_age_are_gone,
    super::short_retention
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_keeps_talking_drops_its_aged_messages_from_redis() {
    let redis = crate::redis_server::RedisServer::start().await;
    let a = crate::redis_server::spawn_node_with(&redis, "node-a", |config| {
        config.chat.retain_messages = 100;
        config.chat.retain_for = Duration::from_secs(2);
    })
    .await;
    let room = confab::protocol::RoomName::parse("aging").unwrap();
    let ann = a.sign_in("ann").await;
    let (mut socket, _) = join_v2(&a, &ann, room.as_str()).await;
    command(&mut socket, json!({"type": "chat", "data": "aged"})).await;
    recv_type(&mut socket, "chat").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The publish script looks for aged messages once in 32 of its partition's ids: 33 chats
    // in a row take at least one look. Two sockets share them, each within its burst.
    let (mut second, _) = join_v2(&a, &ann, room.as_str()).await;
    for n in 0..33 {
        let sender = if n % 2 == 0 { &mut socket } else { &mut second };
        command(
            sender,
            json!({"type": "chat", "data": format!("fresh {n}")}),
        )
        .await;
    }
    let mut texts = Vec::new();
    while texts.len() < 33 {
        let frame = socket.recv().await;
        if frame["type"] == "chat" {
            texts.push(frame["data"].as_str().unwrap().to_owned());
        }
    }
    let chats_key = confab::broker::redis::keys::Partition::of(&room).chats_key(&room);
    let kept: Vec<String> = redis.command(&["LRANGE", &chats_key, "0", "-1"]).await;
    let kept: Vec<Value> = kept
        .iter()
        .map(|frame| serde_json::from_str(frame).unwrap())
        .collect();
    assert_eq!(
        chat_texts(&kept),
        texts,
        "the aged message left Redis, nothing else did"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_retained_messages_expire_past_their_retention_renewed_hourly_by_each_node() {
    use confab::broker::redis::RENEW_EVERY;
    let redis = crate::redis_server::RedisServer::start().await;
    let retain_for = Duration::from_secs(2 * 24 * 3600);
    let configure = move |config: &mut Config| config.chat.retain_for = retain_for;
    let a = crate::redis_server::spawn_node_with(&redis, "node-a", configure).await;
    let b = crate::redis_server::spawn_node_with(&redis, "node-b", configure).await;
    let room = confab::protocol::RoomName::parse("expiring").unwrap();
    let chats_key = confab::broker::redis::keys::Partition::of(&room).chats_key(&room);
    let (mut on_a, _) = join_v2(&a, &a.sign_in("ann").await, room.as_str()).await;
    let (mut on_b, _) = join_v2(&b, &b.sign_in("bob").await, room.as_str()).await;
    // Sends a chat, waits for it to come back, and reads the list's expiry (PTTL, ms).
    let chat = async |socket: &mut TestSocket, text: &str| {
        command(socket, json!({"type": "chat", "data": text})).await;
        while socket.recv().await["data"] != text {}
        redis.command::<i64>(&["PTTL", &chats_key]).await
    };
    let expiry = |ttl_ms: i64| Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
    let renewed = |ttl_ms: i64| {
        let ttl = expiry(ttl_ms);
        ttl > retain_for && ttl <= retain_for + RENEW_EVERY
    };

    let ttl = chat(&mut on_a, "first").await;
    assert!(renewed(ttl), "the first chat sets the expiry: {ttl} ms");
    let _: () = redis.command(&["PERSIST", &chats_key]).await;
    assert_eq!(
        chat(&mut on_a, "second").await,
        -1,
        "node a renewed it within the hour: no PEXPIRE per chat"
    );
    let ttl = chat(&mut on_b, "third").await;
    assert!(renewed(ttl), "node b's first chat renews it: {ttl} ms");
    let _: () = redis.command(&["DEL", &chats_key]).await;
    let ttl = chat(&mut on_a, "fourth").await;
    assert!(renewed(ttl), "a new list gets its expiry at once: {ttl} ms");
}

async fn any_interleaving_of_chats_edits_and_deletes_ends_the_same_everywhere(
    nodes: [&TestApp; 2],
) {
    const USERS: usize = 3;
    const STEPS: usize = 40;
    let seed: u64 = rand::random();
    println!("seed {seed}");
    let room = "interleave";
    let mut sockets = Vec::new();
    let mut users = Vec::new();
    for n in 0..USERS {
        let node = nodes[n % 2];
        let user = node.sign_in(&format!("user{n}")).await;
        let (socket, _) = join_v2(node, &user, room).await;
        sockets.push(socket);
        users.push(user);
    }
    // Each user works through its own random script, all at once: chats, edits and deletes
    // of its own and others' messages, racing on two nodes.
    let mut tasks = Vec::new();
    for (n, mut socket) in sockets.into_iter().enumerate() {
        let mut rng = StdRng::seed_from_u64(seed ^ n as u64);
        tasks.push(tokio::spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut frames = Vec::new();
            let mut sent = 0;
            for step in 0..STEPS {
                let choice = rng.random_range(0..10);
                let target = (!seen.is_empty()).then(|| seen[rng.random_range(0..seen.len())]);
                let command = match (choice, target) {
                    (0..=4, _) | (_, None) => {
                        json!({"type": "chat", "data": format!("u{n} s{step}")})
                    }
                    (5..=7, Some(id)) => {
                        json!({"type": "edit", "id": id, "data": format!("u{n} e{step}")})
                    }
                    (_, Some(id)) => json!({"type": "delete", "id": id}),
                };
                socket.send(&command.to_string()).await;
                sent += 1;
                // Read whatever arrives, learning ids to change, until the next step is due:
                // paced under the rate limit (10 a second), so nothing is refused for speed.
                let next_step = tokio::time::Instant::now() + Duration::from_millis(110);
                while let Ok(frame) = tokio::time::timeout_at(next_step, socket.recv()).await {
                    if frame["type"] == "chat" {
                        seen.push(frame["id"].as_u64().unwrap());
                    }
                    frames.push(frame);
                }
            }
            (socket, frames, sent)
        }));
    }
    let mut finished = Vec::new();
    for task in tasks {
        finished.push(task.await.unwrap());
    }
    // Settle: one last chat per user, which every socket sees after everything before it.
    let mut states = Vec::new();
    for (n, (socket, _, _)) in finished.iter_mut().enumerate() {
        socket
            .send(&json!({"type": "chat", "data": format!("done {n}")}).to_string())
            .await;
    }
    for (socket, frames, _) in &mut finished {
        let mut done = 0;
        while done < USERS {
            let frame = socket.recv().await;
            if frame["type"] == "chat" && frame["data"].as_str().unwrap().starts_with("done ") {
                done += 1;
            }
            frames.push(frame);
        }
        let numbered: Vec<u64> = frames
            .iter()
            .filter(|f| f["type"] != "error")
            .map(|f| f["id"].as_u64().unwrap())
            .collect();
        assert!(
            numbered.windows(2).all(|pair| pair[0] < pair[1]),
            "seed {seed}: frames in id order, no duplicates"
        );
        let errors: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
        assert!(
            errors
                .iter()
                .all(|e| e["code"] == "forbidden" || e["code"] == "not_found"),
            "seed {seed}: only refusals of changes: {errors:?}"
        );
        let mut state = BTreeMap::new();
        apply(frames, &mut state);
        states.push(state);
    }
    for state in &states[1..] {
        assert_eq!(
            state, &states[0],
            "seed {seed}: every socket ends with the same messages"
        );
    }
    // Scrollback, page by page from the newest, holds the same final state (as far as the
    // room retains).
    let mut paged: BTreeMap<u64, Value> = BTreeMap::new();
    let mut before = String::new();
    loop {
        let (_, page) = scrollback(nodes[1], &users[0], room, &format!("?limit=7{before}")).await;
        let messages = page["messages"].as_array().unwrap();
        for message in messages {
            paged.insert(message["id"].as_u64().unwrap(), message.clone());
        }
        if page["more"] != true {
            break;
        }
        before = format!("&before={}", messages[0]["id"]);
    }
    let retained: BTreeMap<u64, Value> = states[0]
        .iter()
        .rev()
        .take(paged.len())
        .map(|(id, frame)| (*id, frame.clone()))
        .collect();
    assert!(!paged.is_empty());
    assert_eq!(
        paged, retained,
        "seed {seed}: scrollback shows the final state"
    );
}
on_every_broker!(
    any_interleaving_of_chats_edits_and_deletes_ends_the_same_everywhere,
    super::many_retained
);

/// Enough retained messages for the interleaving test's every chat.
fn many_retained(config: &mut Config) {
    config.chat.retain_messages = 1000;
}
