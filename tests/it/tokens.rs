//! Sign-in with the host application's token (`GET /signin/token`): good tokens of each
//! algorithm become the same signed cookie as a name sign-in; expired, early, wrongly signed,
//! wrongly addressed, `alg: none` and algorithm-confused tokens get `401` and no cookie; `next`
//! never leaves confab; and a moderator's role reaches the socket.

use std::process::Command;

use confab::Config;
use confab::config::{TokenConfig, TokenKey};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::helpers::{TempDir, TestApp, TestUser, decode_cookie_user, spawn_app, spawn_app_with};

const HS_KEY: &[u8] = b"host-application-shared-key-of-32-bytes-or-more";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a good token for `sub`, valid for 5 minutes.
fn claims(sub: &str, name: &str) -> Value {
    json!({"sub": sub, "name": name, "exp": now() + 300, "iat": now()})
}

fn hs256(claims: &Value, key: &[u8]) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(key).unwrap(),
    )
    .unwrap()
}

fn with_hs256(config: &mut Config) {
    config.tokens = Some(TokenConfig {
        key: TokenKey::Hs256(HS_KEY.to_vec()),
        issuer: Some("https://host.example".into()),
        audience: Some("confab".into()),
    });
}

/// `claims` with the issuer and audience `with_hs256` expects.
fn addressed(mut claims: Value) -> Value {
    claims["iss"] = json!("https://host.example");
    claims["aud"] = json!("confab");
    claims
}

/// `GET /signin/token?token=…&next=…` without following the redirect.
async fn token_signin(app: &TestApp, token: &str, next: &str) -> reqwest::Response {
    let next = urlencode(next);
    app.get(&format!("/signin/token?token={token}&next={next}"))
        .await
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The user a successful token sign-in's cookie names.
fn signed_in(response: &reqwest::Response) -> TestUser {
    let cookie = response
        .headers()
        .get("set-cookie")
        .expect("a good token sets the cookie")
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    TestUser {
        user: decode_cookie_user(&cookie),
        cookie,
    }
}

#[tokio::test]
async fn a_good_token_signs_the_user_in_with_its_claims() {
    let app = spawn_app_with(with_hs256).await;
    let mut claims = addressed(claims("host-user-42", "Ada Lovelace"));
    claims["picture"] = json!("https://cdn.host.example/ada.png");
    claims["confab_role"] = json!("moderator");
    let response = token_signin(&app, &hs256(&claims, HS_KEY), "/rooms/maths").await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/rooms/maths");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Lax"));
    let ada = signed_in(&response);
    assert_eq!(ada.user.id, "host-user-42");
    assert_eq!(ada.user.name, "Ada Lovelace");
    assert_eq!(ada.user.image, "https://cdn.host.example/ada.png");
    assert_eq!(
        ada.user.role,
        Some(confab::auth::Role::Moderator),
        "the role rides in the signed cookie"
    );
    assert_eq!(
        app.get_with_cookie("/rooms/maths", &ada.cookie)
            .await
            .status(),
        200
    );
    let (_, opening) = app.join(&ada, "maths").await;
    assert_eq!(opening.list["user"]["role"], "moderator");
    assert_eq!(
        app.metric(r#"confab_token_signins_total{result="ok"}"#)
            .await,
        1.0
    );

    // No picture: one of the page's avatars, the same every time for the same user.
    let plain = addressed(claims_without_picture());
    let first = signed_in(&token_signin(&app, &hs256(&plain, HS_KEY), "/").await);
    let again = signed_in(&token_signin(&app, &hs256(&plain, HS_KEY), "/").await);
    assert!(first.user.image.starts_with("/static/avatars/"));
    assert_eq!(first.user.image, again.user.image);
    assert_eq!(first.user.role, None);
}

fn claims_without_picture() -> Value {
    let mut claims = claims("host-user-7", "Grace");
    claims["picture"] = json!("javascript:alert(1)");
    claims
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_reason_and_no_cookie() {
    let app = spawn_app_with(with_hs256).await;
    let good = addressed(claims("u1", "Ann"));
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 120);
    let mut early = good.clone();
    early["nbf"] = json!(now() + 600);
    let mut wrong_audience = good.clone();
    wrong_audience["aud"] = json!("another-service");
    let mut wrong_issuer = good.clone();
    wrong_issuer["iss"] = json!("https://evil.example");
    let mut no_name = good.clone();
    no_name.as_object_mut().unwrap().remove("name");
    let mut bad_role = good.clone();
    bad_role["confab_role"] = json!("owner");
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut long_name = good.clone();
    long_name["name"] = json!("x".repeat(33));
    // alg none: a header and payload with an empty signature.
    let b64 = |value: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let cases = [
        (hs256(&expired, HS_KEY), "expired"),
        (hs256(&early, HS_KEY), "not_yet_valid"),
        (
            hs256(&good, b"another-key-that-is-also-32-bytes-long!!"),
            "bad_signature",
        ),
        (hs256(&wrong_audience, HS_KEY), "wrong_audience"),
        (hs256(&wrong_issuer, HS_KEY), "wrong_issuer"),
        (hs256(&no_name, HS_KEY), "bad_claims"),
        (hs256(&bad_role, HS_KEY), "bad_claims"),
        (hs256(&no_exp, HS_KEY), "bad_claims"),
        (hs256(&long_name, HS_KEY), "bad_claims"),
        (alg_none, "wrong_algorithm"),
        ("not.a.jwt".to_owned(), "malformed"),
        (String::new(), "malformed"),
    ];
    for (token, result) in &cases {
        let response = token_signin(&app, token, "/").await;
        assert_eq!(response.status(), 401, "{result}");
        assert!(
            response.headers().get("set-cookie").is_none(),
            "{result}: no cookie"
        );
        let reason = response.text().await.unwrap();
        assert!(!reason.trim().is_empty(), "{result}: a plain reason");
        assert!(
            !reason.contains(token.as_str()) || token.is_empty(),
            "{result}: the token is not echoed"
        );
    }
    let response = app.get("/signin/token").await;
    assert_eq!(response.status(), 401, "no token at all");
    let metrics = app.metrics().await;
    for (result, count) in [
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("bad_signature", 1.0),
        ("wrong_audience", 1.0),
        ("wrong_issuer", 1.0),
        ("bad_claims", 4.0),
        ("wrong_algorithm", 1.0),
        ("malformed", 3.0),
        ("ok", 0.0),
    ] {
        let sample = format!("confab_token_signins_total{{result=\"{result}\"}}");
        assert_eq!(
            crate::helpers::metric_value(&metrics, &sample),
            count,
            "{sample}"
        );
    }
}

#[tokio::test]
async fn next_never_leaves_confab() {
    let app = spawn_app_with(with_hs256).await;
    let token = hs256(&addressed(claims("u1", "Ann")), HS_KEY);
    for (next, location) in [
        ("/rooms/x", "/rooms/x"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("javascript:alert(1)", "/"),
    ] {
        let response = token_signin(&app, &token, next).await;
        assert_eq!(response.status(), 302, "{next}");
        assert_eq!(response.headers()["location"], location, "{next}");
    }
}

#[tokio::test]
async fn without_a_token_key_token_sign_in_does_not_exist() {
    let app = spawn_app().await;
    let token = hs256(&claims("u1", "Ann"), HS_KEY);
    assert_eq!(token_signin(&app, &token, "/").await.status(), 404);
}

#[tokio::test]
async fn name_signin_off_leaves_only_tokens() {
    let app = spawn_app_with(|config| {
        with_hs256(config);
        config.name_signin = false;
    })
    .await;
    assert_eq!(app.post_signin("ann").await.status(), 404);
    let page = app.get("/signin").await;
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("<form"), "no name form");
    assert!(html.contains("token-only"));
    let token = hs256(&addressed(claims("u1", "Ann")), HS_KEY);
    assert_eq!(token_signin(&app, &token, "/").await.status(), 302);
}

/// A key pair made with `openssl`: the private PEM (to sign) and the public key file.
fn key_pair(dir: &TempDir, kind: &str) -> (Vec<u8>, std::path::PathBuf) {
    let private = dir.path().join(format!("{kind}.pem"));
    let public = dir.path().join(format!("{kind}.pub.pem"));
    let options: &[&str] = match kind {
        "rsa" => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        _ => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    };
    let status = Command::new("openssl")
        .arg("genpkey")
        .args(options)
        .arg("-out")
        .arg(&private)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(status.success());
    let status = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .expect("openssl runs");
    assert!(status.success());
    (std::fs::read(&private).unwrap(), public)
}

#[tokio::test]
async fn rs256_and_es256_tokens_are_checked_with_the_public_key_file() {
    let dir = TempDir::new("tokens");
    type FromPem = fn(&[u8]) -> jsonwebtoken::errors::Result<EncodingKey>;
    for (kind, algorithm, encoding) in [
        (
            "rsa",
            Algorithm::RS256,
            EncodingKey::from_rsa_pem as FromPem,
        ),
        ("ec", Algorithm::ES256, EncodingKey::from_ec_pem as FromPem),
    ] {
        let (private, public) = key_pair(&dir, kind);
        let public_pem = std::fs::read(&public).unwrap();
        let config = confab::Config::from_args([
            "confab".to_owned(),
            format!("--jwt-public-key-file={}", public.display()),
        ])
        .expect("the public key file is accepted");
        let key = config.tokens.clone().unwrap().key;
        let app = spawn_app_with(move |config| {
            config.tokens = Some(TokenConfig {
                key,
                issuer: None,
                audience: None,
            });
        })
        .await;
        let claims = claims("u-asym", "Asym");
        let token = jsonwebtoken::encode(
            &Header::new(algorithm),
            &claims,
            &encoding(&private).unwrap(),
        )
        .unwrap();
        let response = token_signin(&app, &token, "/").await;
        assert_eq!(response.status(), 302, "{kind}");
        assert_eq!(signed_in(&response).user.id, "u-asym");

        // Algorithm confusion: an HS256 token whose secret is the public key itself.
        let confused = hs256(&claims, &public_pem);
        let response = token_signin(&app, &confused, "/").await;
        assert_eq!(response.status(), 401, "{kind}: HS256 with the public key");
        assert!(response.headers().get("set-cookie").is_none());
    }
}

#[tokio::test]
async fn a_moderator_deletes_anyones_message_but_edits_only_their_own() {
    let app = spawn_app_with(with_hs256).await;
    let mut moderator_claims = addressed(claims("mod-1", "Mo"));
    moderator_claims["confab_role"] = json!("moderator");
    let mo = signed_in(&token_signin(&app, &hs256(&moderator_claims, HS_KEY), "/").await);
    let ann = signed_in(
        &token_signin(
            &app,
            &hs256(&addressed(claims("ann-1", "Ann")), HS_KEY),
            "/",
        )
        .await,
    );
    let mut mo_socket = app.connect(&mo, "?room=modroom&v=2").await;
    mo_socket.recv_opening().await;
    let mut ann_socket = app.connect(&ann, "?room=modroom&v=2").await;
    ann_socket.recv_opening().await;
    assert_eq!(mo_socket.recv().await["type"], "join");
    ann_socket
        .send(&json!({"type": "chat", "data": "spam"}).to_string())
        .await;
    let id = mo_socket.recv().await["id"].as_u64().unwrap();
    ann_socket.recv().await;

    mo_socket
        .send(&json!({"type": "edit", "id": id, "data": "nicer"}).to_string())
        .await;
    let refused = mo_socket.recv().await;
    assert_eq!(
        (refused["type"].as_str(), refused["code"].as_str()),
        (Some("error"), Some("forbidden"))
    );

    mo_socket
        .send(&json!({"type": "delete", "id": id}).to_string())
        .await;
    let deleted = ann_socket.recv().await;
    assert_eq!(deleted["type"], "delete");
    assert_eq!(deleted["data"]["id"], id);
    assert_eq!(deleted["user"]["id"], "mod-1");
    assert_eq!(deleted["user"]["role"], "moderator");

    // A user without a role still cannot delete the moderator's message.
    mo_socket
        .send(&json!({"type": "chat", "data": "rules"}).to_string())
        .await;
    let rules = ann_socket.recv().await["id"].as_u64().unwrap();
    ann_socket
        .send(&json!({"type": "delete", "id": rules}).to_string())
        .await;
    assert_eq!(ann_socket.recv().await["code"], "forbidden");

    // Kicks: refused to users, done for moderators (the socket closes with 4003, and the
    // ban refuses the next one).
    ann_socket
        .send(&json!({"type": "kick", "user_id": "mod-1"}).to_string())
        .await;
    assert_eq!(ann_socket.recv().await["code"], "forbidden");
    mo_socket
        .send(&json!({"type": "kick", "user_id": "ann-1", "ban_seconds": 60}).to_string())
        .await;
    let (code, reason, _) = ann_socket.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "Kicked"));
    let mut again = app.connect(&ann, "?room=modroom&v=2").await;
    let (code, reason, _) = again.recv_close().await;
    assert_eq!((code, reason.as_str()), (4003, "Banned"));
    assert_eq!(
        app.metric(r#"confab_rejected_total{reason="banned"}"#)
            .await,
        1.0
    );
}
