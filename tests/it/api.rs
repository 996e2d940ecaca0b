//! The HTTP API for backends and bots, through real HTTP: bearer tokens, posting as a bot,
//! members, deleting and kicking (with bans) — on the embedded broker and across two nodes of
//! one Redis and of a Redis Cluster — and the OpenAPI document.

use std::time::Duration;

use confab::Config;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TwoInARoom, api_call, spawn_app, spawn_app_with, two_in_a_room};

const TOKEN: &str = "api-token-of-the-weather-bot-0123456789";
const OTHER_TOKEN: &str = "api-token-of-the-moderation-backend-9876";

fn with_api(config: &mut Config) {
    config.api_tokens = vec![TOKEN.to_owned().into(), OTHER_TOKEN.to_owned().into()];
}

async fn post_bot(app: &TestApp, room: &str, text: &str) -> (u16, Value) {
    let body = json!({"text": text, "user": {"id": "weather-bot", "name": "Weather"}}).to_string();
    let (status, _, json) = api_call(
        app,
        "POST",
        &format!("/api/rooms/{room}/messages"),
        Some(TOKEN),
        Some(&body),
    )
    .await;
    (status, json)
}

#[tokio::test]
async fn without_a_tokens_file_the_api_is_not_there() {
    let app = spawn_app().await;
    for (method, path) in [
        ("GET", "/api/rooms/lobby/members"),
        ("POST", "/api/rooms/lobby/messages"),
        ("DELETE", "/api/rooms/lobby/messages/5"),
        ("POST", "/api/rooms/lobby/kicks"),
        ("GET", "/api/openapi.json"),
    ] {
        let (status, _, body) = api_call(&app, method, path, Some(TOKEN), Some("{}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    let ann = app.sign_in("ann").await;
    assert_eq!(
        app.get_with_cookie("/api/rooms/lobby/messages", &ann.cookie)
            .await
            .status(),
        200,
        "scrollback stays"
    );
}

async fn every_route_needs_a_valid_bearer_token(nodes: [&TestApp; 2]) {
    let app = nodes[1];
    for token in [
        None,
        Some("wrong-token-wrong-token-wrong-token-0"),
        Some(""),
    ] {
        let (status, _, body) = api_call(app, "GET", "/api/rooms/lobby/members", token, None).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{token:?}"
        );
    }
    let (status, _, _) = api_call(
        app,
        "GET",
        "/api/rooms/lobby/members",
        Some(OTHER_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "every token of the file works");
    // Cookie users are not API clients.
    let ann = app.sign_in("ann").await;
    let response = app
        .get_with_cookie("/api/rooms/lobby/members", &ann.cookie)
        .await;
    assert_eq!(response.status(), 401);
}
on_every_broker!(every_route_needs_a_valid_bearer_token, super::with_api);

async fn a_bot_message_reaches_every_node_in_order_with_the_others(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let TwoInARoom {
        mut ann_socket,
        mut bob_socket,
        ..
    } = two_in_a_room(a, b, "weather", "").await;

    ann_socket.send("is it raining?").await;
    let (status, posted) = post_bot(b, "weather", "  Rain from 3 pm.  ").await;
    assert_eq!(status, 201);
    ann_socket.send("thanks").await;
    let on_a = ann_socket.recv_chats(3).await;
    let on_b = bob_socket.recv_chats(3).await;
    assert_eq!(
        on_a, on_b,
        "the same frames, in the same order, on both nodes"
    );
    let bot = on_a
        .iter()
        .find(|f| f["user"]["bot"] == true)
        .expect("the bot's frame");
    assert_eq!(bot["id"], posted["id"]);
    assert_eq!(bot["data"], "Rain from 3 pm.", "trimmed as a socket's chat");
    assert_eq!(bot["user"]["id"], "weather-bot");
    assert_eq!(bot["user"]["name"], "Weather");
    let (_, _, members) = api_call(a, "GET", "/api/rooms/weather/members", Some(TOKEN), None).await;
    let mut names: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["ann", "bob"], "a bot posting is not a member");
}
on_every_broker!(
    a_bot_message_reaches_every_node_in_order_with_the_others,
    super::with_api
);

async fn bad_posts_get_json_errors_and_reach_nobody(nodes: [&TestApp; 2]) {
    let [app, other] = nodes;
    let ann = other.sign_in("ann").await;
    let (mut socket, _) = other.join(&ann, "quiet").await;
    let long = "x".repeat(2001);
    let huge = format!(
        r#"{{"text":"{}","user":{{"id":"b","name":"B"}}}}"#,
        "y".repeat(17_000)
    );
    let cases = [
        ("not json", 400, "bad_request"),
        (r#"{"user":{"id":"b","name":"B"}}"#, 400, "bad_request"),
        (r#"{"text":"hi"}"#, 400, "bad_request"),
        (
            r#"{"text":"   ","user":{"id":"b","name":"B"}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"text":"hi","user":{"id":"","name":"B"}}"#,
            400,
            "bad_request",
        ),
        (
            r#"{"text":"hi","user":{"id":"b","name":"  "}}"#,
            400,
            "bad_request",
        ),
        (
            &format!(r#"{{"text":"{long}","user":{{"id":"b","name":"B"}}}}"#),
            422,
            "too_long",
        ),
        (&huge, 413, "too_large"),
    ];
    for (body, status, code) in cases {
        let (got, _, json) = api_call(
            app,
            "POST",
            "/api/rooms/quiet/messages",
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(
            (got, json["error"].as_str()),
            (status, Some(code)),
            "{}",
            &body[..body.len().min(60)]
        );
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, _, json) = api_call(
        app,
        "POST",
        "/api/rooms/Not%20a%20room/messages",
        Some(TOKEN),
        Some("{}"),
    )
    .await;
    assert_eq!((status, json["error"].as_str()), (404, Some("not_found")));
    // Nothing reached the socket: the next frame is the one sent now.
    socket.send("after the refusals").await;
    assert_eq!(socket.recv().await["data"], "after the refusals");
}
on_every_broker!(bad_posts_get_json_errors_and_reach_nobody, super::with_api);

async fn the_api_deletes_messages_and_kicks_with_bans_on_every_node(nodes: [&TestApp; 2]) {
    let [a, b] = nodes;
    let TwoInARoom {
        ann,
        mut ann_socket,
        mut bob_socket,
        ..
    } = two_in_a_room(b, a, "moderated", "").await;
    ann_socket.send("spam spam").await;
    let id = bob_socket.recv().await["id"].as_u64().unwrap();
    ann_socket.recv().await;

    let path = format!("/api/rooms/moderated/messages/{id}");
    let (status, _, body) = api_call(a, "DELETE", &path, Some(TOKEN), None).await;
    assert_eq!((status, body), (204, Value::Null));
    for socket in [&mut ann_socket, &mut bob_socket] {
        let delete = socket.recv().await;
        assert_eq!(delete["type"], "delete");
        assert_eq!(delete["data"]["id"], id);
        assert_eq!(delete["user"]["bot"], true);
    }
    let (status, _, body) = api_call(a, "DELETE", &path, Some(TOKEN), None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("not_found")),
        "already deleted"
    );
    let (status, _, _) = api_call(
        a,
        "DELETE",
        "/api/rooms/moderated/messages/abc",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 400);

    // Kick ann (on node b) through node a, banned for 2 s: her socket closes with 4003, a
    // new one is refused with 4003 until the ban ends, then she is back.
    let kick = json!({"user_id": ann.user.id, "ban_seconds": 2}).to_string();
    let (status, _, _) = api_call(
        a,
        "POST",
        "/api/rooms/moderated/kicks",
        Some(TOKEN),
        Some(&kick),
    )
    .await;
    assert_eq!(status, 204);
    let (code, reason, _) = ann_socket.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "Kicked"));
    // Answer the close, as a browser does at once: the server then leaves the room.
    ann_socket.close().await;
    let left = bob_socket.recv().await;
    assert_eq!(
        (left["type"].as_str(), left["user"]["name"].as_str()),
        (Some("left"), Some("ann"))
    );
    for node in [a, b] {
        let mut again = node.connect(&ann, "?room=moderated").await;
        let (code, reason, frames) = again.recv_close().await;
        assert_eq!((code, reason.as_str()), (4003, "Banned"), "on every node");
        assert!(frames.is_empty(), "no history for a banned socket");
    }
    let (status, _, members) =
        api_call(b, "GET", "/api/rooms/moderated/members", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(members["members"].as_array().unwrap().len(), 1, "only bob");
    let back = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut socket = b.connect(&ann, "?room=moderated").await;
        match socket.next_event().await {
            crate::helpers::Received::Frame(_) => break,
            _ => assert!(tokio::time::Instant::now() < back, "the ban ends"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Kicks without a ban, of nobody present, and refusals.
    let kick = json!({"user_id": "nobody-here"}).to_string();
    let (status, _, _) = api_call(
        b,
        "POST",
        "/api/rooms/moderated/kicks",
        Some(TOKEN),
        Some(&kick),
    )
    .await;
    assert_eq!(status, 204);
    let too_long_ban = json!({"user_id": "x", "ban_seconds": 31_536_001}).to_string();
    for body in [
        r#"{"ban_seconds":5}"#,
        r#"{"user_id":""}"#,
        too_long_ban.as_str(),
    ] {
        let (status, _, json) = api_call(
            b,
            "POST",
            "/api/rooms/moderated/kicks",
            Some(TOKEN),
            Some(body),
        )
        .await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
}
on_every_broker!(
    the_api_deletes_messages_and_kicks_with_bans_on_every_node,
    super::with_api
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_holds_across_nodes_and_a_restart_of_the_node() {
    let redis = crate::redis_server::RedisServer::start().await;
    let a = crate::redis_server::spawn_node_with(&redis, "node-a", with_api).await;
    let b = crate::redis_server::spawn_node_with(&redis, "node-b", with_api).await;
    let ann = b.sign_in("ann").await;
    let (mut socket, _) = b.join(&ann, "strict").await;
    let kick = json!({"user_id": ann.user.id, "ban_seconds": 600}).to_string();
    let (status, _, _) = api_call(
        &a,
        "POST",
        "/api/rooms/strict/kicks",
        Some(TOKEN),
        Some(&kick),
    )
    .await;
    assert_eq!(status, 204);
    let (code, _, _) = socket.recv_close().await;
    assert_eq!(code, 4003);
    // Node b goes away and comes back (a new process state, the same Redis): the ban holds.
    b.stop().await.unwrap();
    let b = crate::redis_server::spawn_node_with(&redis, "node-b", with_api).await;
    for node in [&a, &b] {
        let mut again = node.connect(&ann, "?room=strict").await;
        let (code, reason, _) = again.recv_close().await;
        assert_eq!((code, reason.as_str()), (4003, "Banned"));
    }
    // Other rooms are open to her.
    b.join(&ann, "lobby").await;
}

#[tokio::test]
async fn each_token_has_its_own_rate_limit_and_every_request_is_counted() {
    let app = spawn_app_with(with_api).await;
    let mut limited = None;
    for n in 0..1000 {
        let (status, headers, body) =
            api_call(&app, "GET", "/api/rooms/lobby/members", Some(TOKEN), None).await;
        if status == 429 {
            assert_eq!(body["error"], "rate_limited");
            assert!(headers.get("retry-after").is_some());
            limited = Some(n);
            break;
        }
        assert_eq!(status, 200);
    }
    assert!(
        limited.is_some_and(|n| n >= 60),
        "a burst of 60: {limited:?}"
    );
    let (status, _, _) = api_call(
        &app,
        "GET",
        "/api/rooms/lobby/members",
        Some(OTHER_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "another token is not slowed");
    let metrics = app.metrics().await;
    assert!(
        crate::helpers::metric_value(
            &metrics,
            r#"confab_api_requests_total{route="GET /api/rooms/{room}/members",status="200"}"#
        ) >= 60.0
    );
    assert_eq!(
        crate::helpers::metric_value(
            &metrics,
            r#"confab_api_requests_total{route="GET /api/rooms/{room}/members",status="429"}"#
        ),
        1.0
    );
    assert!(!metrics.contains(TOKEN), "tokens never reach the metrics");
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let app = spawn_app_with(with_api).await;
    let (status, _, document) = api_call(&app, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(status, 200);
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for (path, method) in [
        ("/api/rooms/{room}/messages", "get"),
        ("/api/rooms/{room}/messages", "post"),
        ("/api/rooms/{room}/messages/{id}", "delete"),
        ("/api/rooms/{room}/members", "get"),
        ("/api/rooms/{room}/kicks", "post"),
    ] {
        let operation = &paths[path][method];
        assert!(operation.is_object(), "{method} {path}");
        // Clients and fuzzers learn from the document which room names exist.
        let room = operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|parameter| parameter["name"] == "room")
            .unwrap();
        assert_eq!(
            room["schema"]["pattern"],
            confab::room::RoomName::PATTERN,
            "{method} {path}"
        );
    }
    let schemes = &document["components"]["securitySchemes"];
    assert_eq!(schemes["api_token"]["scheme"], "bearer");
}
