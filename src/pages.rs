//! The HTML pages (sign-in form, chat room) rendered from `templates/` with minijinja, and the
//! small plain-text routes (`/healthz`, `/readyz`).
//!
//! Templates are embedded in the binary at build time, as are the static files (`assets`), so
//! a deployed node is one file. Their names end in `.html`, which turns minijinja's HTML escaping on: a user
//! name can never become markup.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

use crate::app::AppState;
use crate::broker::Broker;
use crate::broker::redis::keys::Partition;
use crate::error::AppError;
use crate::protocol::RoomName;
use crate::user::User;

/// The version shown in asset URLs (`?v=`), so a deploy never serves a stale cached script.
pub const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The compiled templates. One per node, read-only.
pub struct Templates {
    env: Environment<'static>,
}

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl Templates {
    /// Loads the embedded templates.
    ///
    /// # Panics
    /// If a template does not parse; the unit tests render each one, so a broken template
    /// fails the build's tests rather than a deploy.
    pub fn new() -> Self {
        let mut env = Environment::new();
        for (name, source) in [
            ("base.html", include_str!("../templates/base.html")),
            ("signin.html", include_str!("../templates/signin.html")),
            ("room.html", include_str!("../templates/room.html")),
        ] {
            env.add_template(name, source)
                .expect("embedded template parses");
        }
        Self { env }
    }

    /// The sign-in form, with the reason the last name was refused, if any.
    ///
    /// # Errors
    /// A rendering error, which the unit tests rule out for the shipped templates.
    pub fn signin(
        &self,
        error: Option<&str>,
        name: &str,
    ) -> Result<Html<String>, minijinja::Error> {
        let page = self
            .env
            .get_template("signin.html")?
            .render(context! { error, name, version => ASSET_VERSION })?;
        Ok(Html(page))
    }

    /// The sign-in page without the name form (`CONFAB_NAME_SIGNIN=off`): users sign in
    /// through the host application.
    ///
    /// # Errors
    /// As [`Templates::signin`].
    pub fn token_only_signin(&self) -> Result<Html<String>, minijinja::Error> {
        let page = self
            .env
            .get_template("signin.html")?
            .render(context! { token_only => true, version => ASSET_VERSION })?;
        Ok(Html(page))
    }

    /// The chat page of `room` for `user`.
    ///
    /// # Errors
    /// As [`Templates::signin`].
    pub fn room(
        &self,
        user: &User,
        room: &RoomName,
        max_message_chars: usize,
    ) -> Result<Html<String>, minijinja::Error> {
        let page = self.env.get_template("room.html")?.render(context! {
            user => minijinja::value::Serde(user),
            room => room.as_str(),
            // A routing hint for the socket's URL: nginx keeps a partition's sockets on one
            // node (docs/scaling.md, "Partition affinity").
            partition => Partition::of(room).index(),
            max_message_chars,
            version => ASSET_VERSION,
        })?;
        Ok(Html(page))
    }
}

/// A `302 Found` to `location`: the status the tutorial's pages used and the contract names.
pub fn found(location: &'static str) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, HeaderValue::from_static(location))],
    )
        .into_response()
}

/// `GET /`: the lobby's chat page, or `302` to `/signin` without a valid cookie.
pub async fn show_lobby(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    show(&state, &headers, &RoomName::lobby())
}

/// `GET /rooms/{room}`: a room's chat page; `404` for an invalid room name, else `302` to
/// `/signin` without a valid cookie.
pub async fn show_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let room = RoomName::parse(&room).map_err(|_| AppError::NotFound)?;
    show(&state, &headers, &room)
}

fn show(state: &AppState, headers: &HeaderMap, room: &RoomName) -> Result<Response, AppError> {
    let Some(identity) = state.cookies.identify(headers) else {
        return Ok(found("/signin"));
    };
    let page = state
        .templates
        .room(identity.user(), room, state.config.chat.max_message_chars)?;
    // The page names the signed-in user: never from a shared cache.
    Ok(([(header::CACHE_CONTROL, "private, no-store")], page).into_response())
}

/// `GET /healthz`: `200` while the process runs.
pub async fn show_health() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: `200` once this node can serve (in cluster mode: after its first Redis
/// connection and subscription), `503` before that and while draining. A Redis outage after
/// start keeps it `200` (see `RedisBroker`'s `is_ready`).
pub async fn show_readiness(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n").into_response()
    } else if !state.broker.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile_user() -> User {
        User {
            id: "\"><script>alert(1)</script>".into(),
            name: "<img src=x onerror=alert(1)> & \"quotes\" 'single'".into(),
            image: "javascript:alert(1)\"".into(),
            role: None,
            bot: false,
        }
    }

    #[test]
    fn the_room_page_escapes_a_hostile_user() {
        let page = Templates::new()
            .room(&hostile_user(), &RoomName::lobby(), 2000)
            .unwrap()
            .0;
        assert!(!page.contains("<img src=x"), "name must be escaped");
        assert!(!page.contains("<script>alert"), "id must be escaped");
        assert!(
            page.contains("&lt;img src=x onerror=alert(1)&gt;"),
            "escaped name is shown"
        );
        assert!(
            !page.contains("\"quotes\""),
            "quotes in attributes are escaped"
        );
        assert!(page.contains("data-room=\"lobby\""));
        assert!(page.contains(&format!("/static/app.js?v={ASSET_VERSION}")));
        assert!(!page.contains("<script>"), "no inline script");
    }

    #[test]
    fn the_signin_page_escapes_the_rejected_name_and_shows_the_reason() {
        let page = Templates::new()
            .signin(
                Some("A name can be at most 32 characters long."),
                "<b>bold</b>\"",
            )
            .unwrap()
            .0;
        assert!(page.contains("signin-error"));
        assert!(page.contains("at most 32 characters"));
        assert!(!page.contains("<b>bold</b>"));
        assert!(
            page.contains("&lt;b&gt;bold"),
            "the rejected name is shown, escaped"
        );
    }

    #[test]
    fn the_signin_page_without_error_has_no_error_box() {
        let page = Templates::new().signin(None, "").unwrap().0;
        assert!(!page.contains("signin-error"));
        assert!(page.contains("name=\"name\""));
    }
}
