//! Safe by default: security headers, CSRF, trusted proxies, abuse limits, request caps.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app, spawn_app_with};
use crate::redis_server::{CLUSTER_SECRET, RedisServer, TestCertificates};
use crate::startup::ConfabProcess;

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    let responses = [
        app.get_with_cookie("/", &user.cookie).await,
        app.get("/signin").await,
        app.get("/static/app.js").await,
        app.get("/nope").await,
        app.post_signin("").await,
    ];
    for response in responses {
        let url = response.url().clone();
        let headers = response.headers();
        assert_eq!(headers["content-security-policy"], CSP, "{url}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{url}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{url}");
        assert_eq!(headers["x-frame-options"], "DENY", "{url}");
    }
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_https() {
    let app = spawn_app_with(|config| {
        config.abuse.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]
    })
    .await;
    let response = client()
        .post(app.url("/signin"))
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "chat.example.com")
        .form(&[("name", "ann")])
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    let untrusted = spawn_app().await;
    let response = client()
        .post(untrusted.url("/signin"))
        .header("x-forwarded-proto", "https")
        .form(&[("name", "ann")])
        .send()
        .await
        .unwrap();
    let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
    assert!(
        !set_cookie.contains("Secure"),
        "an untrusted peer cannot claim HTTPS: {set_cookie}"
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_origin_is_checked_against_the_forwarded_host() {
    let app = spawn_app_with(|config| {
        config.abuse.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]
    })
    .await;
    let user = app.sign_in("ann").await;
    let upgrade = |origin: &'static str| {
        let url = app.url("/ws/chat");
        let cookie = user.cookie.clone();
        async move {
            client()
                .get(url)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .header("x-forwarded-host", "chat.example.com")
                .header("origin", origin)
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(upgrade("https://chat.example.com").await, 101);
    assert_eq!(
        upgrade(Box::leak(format!("http://{}", app.addr).into_boxed_str())).await,
        403
    );
}

#[tokio::test]
async fn a_cross_site_post_to_signout_does_nothing() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    let response = client()
        .post(app.url("/signout"))
        .header("cookie", &user.cookie)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        response.headers().get("set-cookie").is_none(),
        "the cookie is untouched"
    );
    assert_eq!(
        app.get_with_cookie("/", &user.cookie).await.status(),
        200,
        "still signed in"
    );

    let response = client()
        .get(app.url("/signout"))
        .header("cookie", &user.cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert_eq!(
        response.headers()["location"],
        "/",
        "a cross-site link just goes home"
    );
    assert!(response.headers().get("set-cookie").is_none());

    let response = client()
        .post(app.url("/signout"))
        .header("cookie", &user.cookie)
        .header("origin", format!("http://{}", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 302);
    assert!(
        response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(
        app.metric(r#"confab_rejected_total{reason="cross_site"}"#)
            .await
            >= 2.0
    );
}

#[tokio::test]
async fn a_cross_site_sign_in_is_refused() {
    let app = spawn_app().await;
    let response = client()
        .post(app.url("/signin"))
        .header("origin", "https://evil.example")
        .form(&[("name", "mallory")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(response.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn a_sign_in_flood_gets_429_with_retry_after() {
    let app = spawn_app_with(|config| config.abuse.signins_per_minute = 3).await;
    for n in 0..3 {
        assert_eq!(app.post_signin(&format!("user{n}")).await.status(), 302);
    }
    let response = app.post_signin("one-too-many").await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "Retry-After {retry_after}");
    assert!(response.headers().get("set-cookie").is_none());
    assert!(response.text().await.unwrap().contains("Too many sign-ins"));
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="signin_rate_limited"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn sockets_beyond_the_per_user_limit_are_closed_with_1008() {
    let app = spawn_app_with(|config| config.abuse.max_sockets_per_user = 2).await;
    let ann = app.sign_in("ann").await;
    let (first, _) = app.join(&ann, "lobby").await;
    let (_second, _) = app.join(&ann, "lobby").await;
    let mut third = app.connect(&ann, "").await;
    let (code, reason, frames) = third.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "Too many connections for this user")
    );
    assert!(frames.is_empty());
    let (_bob, _) = app.join(&app.sign_in("bob").await, "lobby").await;
    first.close().await;
    crate::helpers::eventually("a slot to free up", || async {
        app.state.socket_limits.tracked().0 == 2
    })
    .await;
    app.join(&ann, "lobby").await;
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="too_many_sockets_for_user"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn sockets_beyond_the_per_address_limit_are_closed_with_1008() {
    let app = spawn_app_with(|config| config.abuse.max_sockets_per_address = 3).await;
    let mut sockets = Vec::new();
    for n in 0..3 {
        sockets.push(
            app.join(&app.sign_in(&format!("user{n}")).await, "lobby")
                .await
                .0,
        );
    }
    let mut fourth = app.connect(&app.sign_in("user3").await, "").await;
    let (code, reason, _) = fourth.recv_close().await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "Too many connections from this address")
    );
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="too_many_sockets_from_address"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_node_at_its_connection_limit_answers_503_at_the_upgrade() {
    let app = spawn_app_with(|config| config.chat.max_connections = 2).await;
    let ann = app.sign_in("ann").await;
    let _one = app.join(&ann, "lobby").await;
    let _two = app.join(&ann, "lobby").await;
    match app.try_connect(Some(&ann), "", None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("expected 503, got {:?}", other.map(|_| "a socket")),
    }
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="too_many_connections"}"#)
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    let app = spawn_app().await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut received = Vec::new();
    tokio::time::timeout(
        confab::server::HEADER_READ_TIMEOUT + Duration::from_secs(5),
        stream.read_to_end(&mut received),
    )
    .await
    .expect("the server gives up on the slow client")
    .expect("the connection ends cleanly");
    assert!(started.elapsed() >= confab::server::HEADER_READ_TIMEOUT - Duration::from_secs(1));
    let answer = String::from_utf8_lossy(&received);
    assert!(
        received.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversized_headers_and_bodies_are_refused() {
    let app = spawn_app().await;
    let response = client()
        .get(app.url("/signin"))
        .header("x-filler", "x".repeat(20 * 1024))
        .send()
        .await;
    assert_eq!(response.unwrap().status(), 431, "headers over the cap");
    let response = client()
        .post(app.url("/signin"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("name={}", "x".repeat(20 * 1024)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413, "bodies over 16 KiB");
}

/// Runs a node process on `redis` with debug logs, signs in, chats, and returns everything it
/// logged, with the cookie and the message that went through it.
async fn chat_through_a_logged_node(
    redis: &RedisServer,
    extra_env: &[(&str, &str)],
) -> (String, String, String) {
    let url = redis.url();
    let mut env = vec![
        ("CONFAB_REDIS_URL", url.as_str()),
        ("CONFAB_SECRET", CLUSTER_SECRET),
        ("CONFAB_NODE_ID", "logged"),
        ("RUST_LOG", "debug"),
    ];
    env.extend_from_slice(extra_env);
    let mut process = ConfabProcess::start(&env).await;
    let http = reqwest::Client::new();
    crate::helpers::eventually("the node to be ready", || async {
        http.get(format!("http://{}/readyz", process.addr))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    })
    .await;
    let app = process.client();
    let ann = app.sign_in("ann").await;
    let (mut socket, _) = app.join(&ann, "lobby").await;
    let text = "a private message 7f3a9c";
    socket.send(text).await;
    assert_eq!(
        socket.recv_until_chat(text).await.last().unwrap()["data"],
        text
    );
    socket.close().await;
    process.signal("TERM");
    process.wait().await;
    (process.output(), ann.cookie, text.to_owned())
}

#[tokio::test]
async fn a_redis_password_in_the_url_works_and_no_secret_reaches_the_logs() {
    let password = "redis-pw-5b0e1d";
    let redis = RedisServer::start_with_password(password).await;
    let (logs, cookie, text) = chat_through_a_logged_node(&redis, &[]).await;
    assert!(
        logs.contains("listening on"),
        "the logs were captured: {logs}"
    );
    let cookie_value = cookie.strip_prefix("name=").unwrap();
    for (secret, what) in [
        (password, "the Redis password"),
        (CLUSTER_SECRET, "the cookie secret"),
        (cookie_value, "the cookie"),
        (&cookie_value[..44], "the cookie's signature"),
        (text.as_str(), "a message body"),
    ] {
        assert!(
            !logs.contains(secret),
            "{what} appears in the logs:\n{logs}"
        );
    }
}

#[tokio::test]
async fn rediss_urls_connect_over_tls() {
    let certificates = TestCertificates::create();
    let redis = RedisServer::start_with_tls(&certificates, "tls-pw-9c1d").await;
    assert!(redis.url().starts_with("rediss://"));
    let (logs, _, _) =
        chat_through_a_logged_node(&redis, &[("SSL_CERT_FILE", &certificates.ca_cert)]).await;
    assert!(!logs.contains("tls-pw-9c1d"));
}

#[tokio::test]
async fn api_tokens_sign_in_tokens_and_their_keys_never_reach_the_logs() {
    let api_token = "api-token-that-must-never-be-logged-4d2a9e";
    let jwt_key = "jwt-key-that-must-never-be-logged-0b7c5f1e";
    let dir = crate::helpers::TempDir::new("log-secrets");
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, format!("{api_token}\n")).unwrap();
    let tokens_path = tokens_file.to_str().unwrap().to_owned();
    let mut process = ConfabProcess::start(&[
        ("RUST_LOG", "debug"),
        ("CONFAB_API_TOKENS_FILE", &tokens_path),
        ("CONFAB_JWT_KEY", jwt_key),
    ])
    .await;
    let base = format!("http://{}", process.addr);
    let http = client();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "u-logs", "name": "Logs", "exp": now + 60}),
        &jsonwebtoken::EncodingKey::from_secret(jwt_key.as_bytes()).unwrap(),
    )
    .unwrap();
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "u-logs", "name": "Logs", "exp": now - 600}),
        &jsonwebtoken::EncodingKey::from_secret(jwt_key.as_bytes()).unwrap(),
    )
    .unwrap();
    for (token, status) in [(&jwt, 302), (&expired, 401)] {
        let response = http
            .get(format!("{base}/signin/token?token={token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
    }
    let wrong = "a-wrong-api-token-that-is-long-enough-77";
    for (token, status) in [(api_token, 201), (wrong, 401)] {
        let response = http
            .post(format!("{base}/api/rooms/lobby/messages"))
            .header("authorization", format!("Bearer {token}"))
            .body(r#"{"text":"from a bot","user":{"id":"b","name":"Bot"}}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
    }
    process.signal("TERM");
    process.wait().await;
    let logs = process.output();
    assert!(
        logs.contains("bot message posted"),
        "the logs were captured: {logs}"
    );
    for (secret, what) in [
        (api_token, "the API token"),
        (wrong, "a wrong API token"),
        (jwt_key, "the JWT key"),
        (jwt.as_str(), "a sign-in token"),
        (expired.as_str(), "a refused sign-in token"),
    ] {
        assert!(
            !logs.contains(secret),
            "{what} appears in the logs:\n{logs}"
        );
    }
}
