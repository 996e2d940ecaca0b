//! Sign-in with the host application's token: `GET /signin/token?token=JWT&next=PATH`.
//!
//! A host application that already knows its users signs a short-lived JWT (HS256 with
//! `CONFAB_JWT_KEY`, or RS256/ES256 with the private half of `CONFAB_JWT_PUBLIC_KEY_FILE`) and
//! sends the browser here. The token is checked by `jsonwebtoken` — signature, `alg` exactly
//! the configured one (`none` never), `exp` and `nbf` (30 s of leeway for clocks), `iss` and
//! `aud` when configured — and its claims become the user: `sub` the id, `name` the name (the
//! name form's rules), `picture` the avatar (an `http(s)` URL or a path; otherwise one of the
//! page's), `confab_role` the [`Role`]. Then the same signed cookie as a name sign-in is set.
//! The token itself is never logged or stored.

use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::info;

use super::Role;
use crate::app::AppState;
use crate::client::ClientInfo;
use crate::config::{TokenConfig, TokenKey};
use crate::error::AppError;
use crate::pages::found;
use crate::user::{User, UserName};

/// Seconds a token's `exp` and `nbf` may be off, for clocks that disagree a little.
pub const LEEWAY_SECS: u64 = 30;
/// The longest `sub` accepted, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 128;
/// The longest `picture` URL accepted, in bytes.
pub const MAX_PICTURE_BYTES: usize = 2048;

/// Checks tokens against the configured key. One per node, in [`AppState`].
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

/// Why a token was refused: the `result` label of `confab_token_signins_total`, and the plain
/// reason the `401` answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefused {
    /// Not a JWT, or not one this node can read.
    #[error("The sign-in token is not a valid JWT.")]
    Malformed,
    /// Signed with another key, or altered.
    #[error("The sign-in token's signature does not verify.")]
    BadSignature,
    /// Its `alg` is not the one configured (`none` included).
    #[error("The sign-in token is signed with an algorithm this service does not accept.")]
    WrongAlgorithm,
    /// Past its `exp`.
    #[error("The sign-in token has expired; sign in again from the application.")]
    Expired,
    /// Before its `nbf`.
    #[error("The sign-in token is not valid yet.")]
    NotYetValid,
    /// Another `iss` than `CONFAB_JWT_ISSUER`.
    #[error("The sign-in token comes from another issuer.")]
    WrongIssuer,
    /// No `aud` matching `CONFAB_JWT_AUDIENCE`.
    #[error("The sign-in token is meant for another audience.")]
    WrongAudience,
    /// A claim confab needs is missing or unusable.
    #[error("The sign-in token's claims are unusable: {0}.")]
    BadClaims(&'static str),
}

impl TokenRefused {
    /// The `result` label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaims(_) => "bad_claims",
        }
    }

    /// Every label, so that each is exported (as 0) from the start, with `ok`.
    pub const LABELS: [&'static str; 9] = [
        "ok",
        "malformed",
        "bad_signature",
        "wrong_algorithm",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "bad_claims",
    ];
}

/// The claims confab reads; others are ignored.
#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    picture: Option<String>,
    #[serde(default)]
    confab_role: Option<String>,
}

impl TokenVerifier {
    /// A verifier for `config`, whose key was checked when the settings were read.
    ///
    /// # Errors
    /// When the key material cannot be used (a PEM file that is neither an RSA nor an EC key).
    pub fn new(config: &TokenConfig) -> Result<Self, jsonwebtoken::errors::Error> {
        let (key, algorithm) = match &config.key {
            TokenKey::Hs256(secret) => (DecodingKey::from_secret(secret)?, Algorithm::HS256),
            TokenKey::Rs256(pem) => (DecodingKey::from_rsa_pem(pem)?, Algorithm::RS256),
            TokenKey::Es256(pem) => (DecodingKey::from_ec_pem(pem)?, Algorithm::ES256),
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.issuer {
            Some(issuer) => validation.set_issuer(&[issuer]),
            None => validation.iss = None,
        }
        match &config.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        Ok(Self { key, validation })
    }

    /// Checks `token` and makes the user it names.
    ///
    /// # Errors
    /// [`TokenRefused`] saying what is wrong with it.
    pub fn verify(&self, token: &str) -> Result<User, TokenRefused> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenRefused::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm => TokenRefused::WrongAlgorithm,
                ErrorKind::ExpiredSignature => TokenRefused::Expired,
                ErrorKind::ImmatureSignature => TokenRefused::NotYetValid,
                ErrorKind::InvalidIssuer => TokenRefused::WrongIssuer,
                ErrorKind::InvalidAudience => TokenRefused::WrongAudience,
                ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                    "exp" => TokenRefused::BadClaims("no exp"),
                    "sub" => TokenRefused::BadClaims("no sub"),
                    "iss" => TokenRefused::WrongIssuer,
                    "aud" => TokenRefused::WrongAudience,
                    _ => TokenRefused::BadClaims("a required claim is missing"),
                },
                ErrorKind::InvalidClaimFormat(_) => {
                    TokenRefused::BadClaims("a claim has the wrong type")
                }
                // A header this library cannot even read may still name an algorithm (`none`,
                // say): that is the answer the host application needs.
                _ if header_names_an_algorithm(token) => TokenRefused::WrongAlgorithm,
                _ => TokenRefused::Malformed,
            })?
            .claims;
        user_of(claims)
    }
}

/// Whether the token's header is JSON with an `alg` (one that `decode` refused).
fn header_names_an_algorithm(token: &str) -> bool {
    use base64::Engine;
    #[derive(Deserialize)]
    struct JoseHeader {
        alg: String,
    }
    token
        .split('.')
        .next()
        .and_then(|header| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header.trim_end_matches('='))
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<JoseHeader>(&json).ok())
        .is_some_and(|header| !header.alg.is_empty())
}

/// The user a token's claims name.
fn user_of(claims: Claims) -> Result<User, TokenRefused> {
    let id = claims
        .sub
        .filter(|sub| {
            !sub.is_empty() && sub.len() <= MAX_SUBJECT_BYTES && !sub.chars().any(char::is_control)
        })
        .ok_or(TokenRefused::BadClaims(
            "sub must be 1 to 128 bytes, no control characters",
        ))?;
    let name = claims
        .name
        .as_deref()
        .ok_or(TokenRefused::BadClaims("no name"))
        .and_then(|name| {
            UserName::parse(name).map_err(|_| {
                TokenRefused::BadClaims("name must be 1 to 32 characters, no control characters")
            })
        })?;
    let role = match claims.confab_role.as_deref() {
        None => None,
        Some(claim) => Some(Role::parse(claim).ok_or(TokenRefused::BadClaims(
            "confab_role must be moderator or admin",
        ))?),
    };
    let image = claims
        .picture
        .filter(|picture| is_image_url(picture))
        .unwrap_or_else(|| User::default_image(&id));
    Ok(User {
        id,
        name: name.as_str().to_owned(),
        image,
        role,
        bot: false,
    })
}

/// Whether `picture` may go into the page's `<img src>`: an `http(s)` URL or a path on this
/// site, short, with nothing that could end the attribute or the URL.
fn is_image_url(picture: &str) -> bool {
    let lower = picture.to_ascii_lowercase();
    let allowed_start = lower.starts_with("https://")
        || lower.starts_with("http://")
        || (picture.starts_with('/') && !picture.starts_with("//"));
    allowed_start
        && picture.len() <= MAX_PICTURE_BYTES
        && !picture
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '"' | '<' | '>' | '\\'))
}

/// Where to go after signing in: `next` when it is a path inside confab, else `/`.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.starts_with("/\\")
                && !path.chars().any(|c| c.is_control() || c == '\\') =>
        {
            path
        }
        _ => "/",
    }
}

/// The query of `GET /signin/token`.
#[derive(Debug, Deserialize)]
pub struct TokenSignin {
    token: Option<String>,
    next: Option<String>,
}

/// `GET /signin/token`: a valid token sets the user cookie and redirects to `next`; a bad one
/// answers `401` with the reason and sets nothing. `404` when no token key is configured.
pub async fn get_token_signin(
    State(state): State<AppState>,
    client: ClientInfo,
    Query(query): Query<TokenSignin>,
) -> Result<Response, AppError> {
    let Some(verifier) = state.tokens.as_ref() else {
        return Err(AppError::NotFound);
    };
    let metrics = &state.metrics;
    let user = match query.token.as_deref().map(|token| verifier.verify(token)) {
        Some(Ok(user)) => user,
        refused => {
            let refused = match refused {
                Some(Err(refused)) => refused,
                _ => TokenRefused::Malformed,
            };
            metrics
                .token_signins
                .with_label_values(&[refused.label()])
                .inc();
            info!(result = refused.label(), "token sign-in refused");
            return Ok((
                StatusCode::UNAUTHORIZED,
                [(header::CACHE_CONTROL, "no-store")],
                format!("{refused}\n"),
            )
                .into_response());
        }
    };
    metrics.token_signins.with_label_values(&["ok"]).inc();
    // A path with characters a header cannot carry goes to `/` too.
    let location = HeaderValue::from_str(safe_next(query.next.as_deref()))
        .unwrap_or(HeaderValue::from_static("/"));
    let mut response = found("/");
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.cookies.issue(&user, client.https));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_inside_confab() {
        for (next, expected) in [
            (Some("/rooms/x"), "/rooms/x"),
            (Some("/"), "/"),
            (Some("/rooms/x?a=b"), "/rooms/x?a=b"),
            (Some("//evil.example/"), "/"),
            (Some("/\\evil.example/"), "/"),
            (Some("https://evil.example/"), "/"),
            (Some("rooms/x"), "/"),
            (Some("/rooms/x\n"), "/"),
            (Some(""), "/"),
            (None, "/"),
        ] {
            assert_eq!(safe_next(next), expected, "{next:?}");
        }
    }

    #[test]
    fn only_web_and_site_pictures_are_used() {
        for (picture, allowed) in [
            ("https://cdn.example/a.png", true),
            ("HTTP://cdn.example/a.png", true),
            ("/static/avatars/1.svg", true),
            ("javascript:alert(1)", false),
            ("data:image/svg+xml,<svg/>", false),
            ("//cdn.example/a.png", false),
            ("https://cdn.example/a b.png", false),
            ("https://cdn.example/\"onerror=", false),
        ] {
            assert_eq!(is_image_url(picture), allowed, "{picture}");
        }
    }
}
