//! Sign-in with a name (the tutorial's form), and sign-out.

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::app::AppState;
use crate::client::ClientInfo;
use crate::error::AppError;
use crate::metrics::Rejection;
use crate::pages::found;
use crate::user::{User, UserName};

/// The sign-in form's one field.
#[derive(Debug, Deserialize)]
pub struct SigninForm {
    #[serde(default)]
    name: String,
}

/// `GET /signin`: the sign-in form; with `CONFAB_NAME_SIGNIN=off`, a page that says to sign
/// in through the host application.
pub async fn show_signin(State(state): State<AppState>) -> Result<Response, AppError> {
    if !state.config.name_signin {
        return Ok(state.templates.token_only_signin()?.into_response());
    }
    Ok(state.templates.signin(None, "")?.into_response())
}

/// `POST /signin`: a valid name sets the cookie and redirects to `/`; an invalid one gets the
/// form again with the reason, status 400 and no cookie. A post from another site gets 403
/// (no one may be signed in behind their back), and an address that signed in too often
/// gets 429 with `Retry-After`.
pub async fn post_signin(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
    Form(form): Form<SigninForm>,
) -> Result<Response, AppError> {
    if !state.config.name_signin {
        return Err(AppError::NotFound);
    }
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return Ok((StatusCode::FORBIDDEN, "Cross-site sign-in refused.\n").into_response());
    }
    if let Err(wait) = state.signins.check(client.ip, tokio::time::Instant::now()) {
        state.metrics.reject(Rejection::SigninRateLimited);
        let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
        let reason = format!("Too many sign-ins from your network. Try again in {seconds} s.");
        let page = state.templates.signin(Some(&reason), &form.name)?;
        let retry_after = HeaderValue::from(seconds);
        return Ok((
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after)],
            page,
        )
            .into_response());
    }
    match UserName::parse(&form.name) {
        Ok(name) => {
            let user = User::sign_up(name);
            let mut response = found("/");
            response
                .headers_mut()
                .insert(header::SET_COOKIE, state.cookies.issue(&user, client.https));
            Ok(response)
        }
        Err(reason) => {
            state.metrics.reject(Rejection::InvalidName);
            let page = state
                .templates
                .signin(Some(&reason.to_string()), &form.name)?;
            Ok((StatusCode::BAD_REQUEST, page).into_response())
        }
    }
}

/// `POST /signout` (the page's form): clears the cookie and redirects to `/signin`; a post
/// from another site gets 403 and changes nothing.
pub async fn post_signout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Response {
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return (StatusCode::FORBIDDEN, "Cross-site sign-out refused.\n").into_response();
    }
    signed_out(&state, &client)
}

/// `GET /signout`: clears the cookie and redirects to `/signin`, as the tutorial did. A link
/// followed from another site changes nothing: it just goes to `/`.
pub async fn get_signout(
    State(state): State<AppState>,
    client: ClientInfo,
    headers: HeaderMap,
) -> Response {
    if state
        .origins
        .is_cross_site(&headers, client.host.as_deref())
    {
        state.metrics.reject(Rejection::CrossSite);
        return found("/");
    }
    signed_out(&state, &client)
}

fn signed_out(state: &AppState, client: &ClientInfo) -> Response {
    let mut response = found("/signin");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.cookies.removal(client.https));
    response
}
