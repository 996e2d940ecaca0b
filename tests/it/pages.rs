//! The HTTP routes: sign-in, pages, static files, health, metrics.

use std::path::PathBuf;

use crate::helpers::{TempDir, decode_cookie_user, spawn_app, spawn_app_with, tampered};

#[tokio::test]
async fn the_lobby_without_a_cookie_redirects_to_signin() {
    let app = spawn_app().await;
    let response = app.get("/").await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/signin");
}

#[tokio::test]
async fn the_signin_form_has_one_name_field() {
    let app = spawn_app().await;
    let response = app.get("/signin").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = response.text().await.unwrap();
    assert!(
        page.contains(r#"method="post""#) && page.contains(r#"action="/signin""#),
        "{page}"
    );
    assert!(page.contains(r#"name="name""#));
}

#[tokio::test]
async fn a_valid_sign_in_sets_a_signed_http_only_cookie_and_redirects_home() {
    let app = spawn_app().await;
    let response = app.post_signin("  Ann  ").await;
    assert_eq!(response.status(), 302);
    assert_eq!(response.headers()["location"], "/");
    let set_cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(set_cookie.starts_with("name="), "{set_cookie}");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(
            set_cookie.contains(attribute),
            "{attribute} missing from {set_cookie}"
        );
    }
    let user = decode_cookie_user(set_cookie.split(';').next().unwrap());
    assert_eq!(user.name, "Ann", "the name is trimmed");
    assert_eq!(user.id.len(), 32);
    assert!(user.image.starts_with("/static/avatars/"));
    let cookie = set_cookie.split(';').next().unwrap();
    let page = app.get_with_cookie("/", cookie).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Ann"));
}

#[tokio::test]
async fn cjk_and_emoji_names_round_trip() {
    let app = spawn_app().await;
    for name in ["王小明", "🦀🎉 Ferris", "Zoë Ångström", "ありがとう"] {
        let user = app.sign_in(name).await;
        assert_eq!(user.user.name, name);
        let page = app.get_with_cookie("/", &user.cookie).await;
        assert_eq!(page.status(), 200, "{name}");
        assert!(
            page.text().await.unwrap().contains(name),
            "the page shows {name}"
        );
        let (mut socket, opening) = app.join(&user, "lobby").await;
        assert_eq!(opening.list["user"]["name"], name);
        socket.send("hi").await;
        assert_eq!(
            socket.recv_until_chat("hi").await.last().unwrap()["user"]["name"],
            name
        );
    }
}

#[tokio::test]
async fn invalid_names_get_400_with_the_reason_and_no_cookie() {
    let app = spawn_app().await;
    let cases = [
        ("", "Please enter a name"),
        ("    ", "Please enter a name"),
        (&"x".repeat(33), "at most 32 characters"),
        (&"漢".repeat(33), "at most 32 characters"),
        ("tab\there", "control characters"),
        ("line\nbreak", "control characters"),
    ];
    for (name, reason) in cases {
        let response = app.post_signin(name).await;
        assert_eq!(response.status(), 400, "name {name:?}");
        assert!(
            response.headers().get("set-cookie").is_none(),
            "no cookie for {name:?}"
        );
        let page = response.text().await.unwrap();
        assert!(
            page.contains(reason),
            "reason {reason:?} for {name:?} in {page}"
        );
        assert!(page.contains(r#"name="name""#), "the form again");
    }
    assert!(
        app.metric(r#"confab_rejected_total{reason="invalid_name"}"#)
            .await
            >= 6.0
    );
}

#[tokio::test]
async fn thirty_two_characters_are_accepted_whatever_their_bytes() {
    let app = spawn_app().await;
    assert_eq!(app.post_signin(&"漢".repeat(32)).await.status(), 302);
    assert_eq!(app.post_signin(&"😀".repeat(32)).await.status(), 302);
}

#[tokio::test]
async fn forged_and_edited_cookies_name_nobody() {
    use base64::Engine;
    let app = spawn_app().await;
    let genuine = app.sign_in("ann").await;
    let mut mallory = genuine.user.clone();
    mallory.name = "mallory".into();
    let forged_json =
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&mallory).unwrap());
    let value = genuine.cookie.strip_prefix("name=").unwrap();
    let cases = [
        (
            "the tutorial's unsigned cookie",
            format!("name={forged_json}"),
        ),
        (
            "a genuine signature on an edited payload",
            format!("name={}{forged_json}", &value[..44]),
        ),
        ("a flipped signature byte", tampered(&genuine.cookie)),
    ];
    for (case, cookie) in cases {
        let response = app.get_with_cookie("/", &cookie).await;
        assert_eq!(response.status(), 302, "{case}");
        assert_eq!(response.headers()["location"], "/signin", "{case}");
    }
    let other_node = spawn_app().await;
    let stranger = other_node.sign_in("ann").await;
    let response = app.get_with_cookie("/", &stranger.cookie).await;
    assert_eq!(
        response.status(),
        200,
        "nodes sharing CONFAB_SECRET accept each other's cookies"
    );
}

#[tokio::test]
async fn room_pages_exist_for_valid_names_only() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    let cases = [
        ("/rooms/dev-ops_2", 200),
        ("/rooms/a", 200),
        ("/rooms/abcdefghijklmnopqrstuvwxyz012345", 200),
        ("/rooms/abcdefghijklmnopqrstuvwxyz0123456", 404),
        ("/rooms/Dev", 404),
        ("/rooms/-dev", 404),
        ("/rooms/caf%C3%A9", 404),
        ("/rooms/a%20b", 404),
    ];
    for (path, status) in cases {
        assert_eq!(
            app.get_with_cookie(path, &user.cookie).await.status(),
            status,
            "{path}"
        );
    }
    let response = app.get("/rooms/dev").await;
    assert_eq!(response.status(), 302, "a valid room without a cookie");
    assert_eq!(response.headers()["location"], "/signin");
    let page = app
        .get_with_cookie("/rooms/dev", &user.cookie)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(r#"data-room="dev""#));
}

#[tokio::test]
async fn signing_out_clears_the_cookie_and_redirects_to_signin() {
    let app = spawn_app().await;
    let user = app.sign_in("ann").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for request in [
        client.get(app.url("/signout")),
        client.post(app.url("/signout")),
    ] {
        let response = request.header("cookie", &user.cookie).send().await.unwrap();
        assert_eq!(response.status(), 302);
        assert_eq!(response.headers()["location"], "/signin");
        let set_cookie = response.headers()["set-cookie"].to_str().unwrap();
        assert!(set_cookie.starts_with("name=;"), "{set_cookie}");
        assert!(set_cookie.contains("Max-Age=0"), "{set_cookie}");
        assert!(set_cookie.contains("Path=/"), "{set_cookie}");
    }
}

#[tokio::test]
async fn static_files_have_a_content_type_and_caching_headers() {
    let checkout = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/static"));
    // Built in, and from a CONFAB_STATIC_DIR: the same answers.
    for static_dir in [None, Some(checkout)] {
        let source = format!("static_dir {static_dir:?}");
        let app = spawn_app_with(|config| config.static_dir = static_dir).await;
        let cases = [
            ("/static/app.js", "javascript"),
            ("/static/style.css", "text/css"),
            ("/static/favicon.svg", "image/svg+xml"),
            ("/static/avatars/0.svg", "image/svg+xml"),
        ];
        for (path, content_type) in cases {
            let response = app.get(path).await;
            assert_eq!(response.status(), 200, "{source}: {path}");
            let headers = response.headers();
            assert!(
                headers["content-type"]
                    .to_str()
                    .unwrap()
                    .contains(content_type),
                "{source}: {path}: {headers:?}"
            );
            assert!(
                headers["cache-control"]
                    .to_str()
                    .unwrap()
                    .contains("max-age="),
                "{source}: {path}: {headers:?}"
            );
            assert!(
                headers.contains_key("last-modified") && headers.contains_key("etag"),
                "{source}: {path}: {headers:?}"
            );
        }
        let missing = app.get("/static/missing.js").await;
        assert_eq!(missing.status(), 404, "{source}");
        assert!(
            missing.headers().get("cache-control").is_none(),
            "{source}: a 404 is not cached"
        );
        assert_eq!(
            app.get("/static/../Cargo.toml").await.status(),
            404,
            "{source}"
        );
        assert_eq!(
            app.get("/static/..%2FCargo.toml").await.status(),
            404,
            "{source}"
        );
    }
}

#[tokio::test]
async fn built_in_static_files_answer_a_matching_etag_with_304() {
    let app = spawn_app().await;
    let client = reqwest::Client::new();
    let script = app.get("/static/app.js").await;
    let etag = script.headers()["etag"].to_str().unwrap().to_owned();
    let length = script.bytes().await.unwrap().len();
    assert!(
        etag.len() == 66
            && etag.starts_with('"')
            && etag.ends_with('"')
            && etag[1..65].bytes().all(|b| b.is_ascii_hexdigit()),
        "a strong tag holding the SHA-256: {etag}"
    );
    let stylesheet = app.get("/static/style.css").await;
    assert_ne!(
        stylesheet.headers()["etag"],
        etag.as_str(),
        "one tag per file"
    );

    let cases = [
        (etag.clone(), 304, "the same tag"),
        (format!("W/{etag}"), 304, "the same tag, weak"),
        (format!("\"0\", {etag}"), 304, "the tag in a list"),
        ("*".to_owned(), 304, "any tag"),
        ("\"0\"".to_owned(), 200, "another tag"),
    ];
    for (if_none_match, status, case) in cases {
        let response = client
            .get(app.url("/static/app.js"))
            .header("if-none-match", &if_none_match)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{case}: {if_none_match}");
        let headers = response.headers().clone();
        assert_eq!(headers["etag"], etag.as_str(), "{case}");
        assert_eq!(headers["cache-control"], "public, max-age=3600", "{case}");
        let body = response.bytes().await.unwrap();
        assert_eq!(body.len(), if status == 304 { 0 } else { length }, "{case}");
    }

    let head = client.head(app.url("/static/app.js")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["etag"], etag.as_str());
    assert_eq!(head.headers()["content-type"], "text/javascript");
    assert_eq!(
        head.headers()["content-length"],
        length.to_string().as_str()
    );
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");
    let post = client.post(app.url("/static/app.js")).send().await.unwrap();
    assert_eq!(post.status(), 405);
}

#[tokio::test]
async fn a_static_dir_serves_its_own_files_instead_of_the_built_in_ones() {
    let restyled = TempDir::new("restyled");
    restyled.write("app.js", "// restyled\n");
    let dir = restyled.path().to_owned();
    let app = spawn_app_with(|config| config.static_dir = Some(dir)).await;
    let script = app.get("/static/app.js").await;
    assert_eq!(script.status(), 200);
    assert!(
        script.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript")
    );
    assert_eq!(script.text().await.unwrap(), "// restyled\n");
    assert_eq!(
        app.get("/static/style.css").await.status(),
        404,
        "the directory replaces the built-in files; it does not add to them"
    );
}

#[tokio::test]
async fn health_and_readiness_answer_200_while_serving() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert_eq!(app.get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn unknown_routes_get_404() {
    let app = spawn_app().await;
    for path in ["/nope", "/rooms", "/rooms/", "/ws", "/static"] {
        assert_eq!(app.get(path).await.status(), 404, "{path}");
    }
}
