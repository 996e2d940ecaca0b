//! The page's static files under `/static/`: the script, the stylesheet, the favicon and the
//! avatars.
//!
//! They are compiled into the binary from the repository's `static/` (with rust-embed, in
//! debug builds too, so tests run what ships), so a node serves its page whatever its working
//! directory and a deploy is one file. `CONFAB_STATIC_DIR` swaps them for a directory on disk,
//! for people who restyle the page; `app.rs` then mounts `ServeDir` there instead of
//! [`get_asset`].
//!
//! Both answer alike: a content type from the extension, `Last-Modified`, an `ETag`, `304` for a
//! matching `If-None-Match` (or, without one, `If-Modified-Since`), and on `2xx` and `304` only
//! [`CACHE_CONTROL`]. The pages ask for the script and the stylesheet with `?v=` (see
//! `pages::ASSET_VERSION`), so an hour of caching never hides a deploy. A `404` is not cached.
//!
//! An embedded file's `ETag` is its SHA-256, worked out at build time, so it changes exactly
//! when the bytes do; `ServeDir`'s, made of size and modification time, would not for a build
//! that stamps every file with one time (`SOURCE_DATE_EPOCH`). Unlike `ServeDir`, the built-in
//! files ignore `Range` and send no `Accept-Ranges`: each is a few KiB, and RFC 9110 lets a
//! server answer a range request with the whole file.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use axum::response::IntoResponse;
use rust_embed::{Embed, EmbeddedFile};

use crate::error::AppError;

/// `Cache-Control` of a found file (`200`) or a revalidated one (`304`).
pub const CACHE_CONTROL: &str = "public, max-age=3600";

/// The repository's `static/`, read at build time. A file added there needs a rebuild, which
/// `build.rs` triggers.
#[derive(Embed)]
#[folder = "static/"]
struct Embedded;

/// `GET /static/{*path}` (and `HEAD`, which axum answers with the same headers and no body):
/// one embedded file, or `304` when the browser's copy is current, or `404`.
pub async fn get_asset(Path(path): Path<String>, request: HeaderMap) -> Response<Body> {
    match Embedded::get(&path) {
        Some(file) => answer(file, &request),
        None => AppError::NotFound.into_response(),
    }
}

/// Adds [`CACHE_CONTROL`] to a `2xx` or `304` answer; a `404` must not be cached, or a file
/// added by the next deploy would stay missing for an hour.
pub fn cache_when_found<B>(mut response: Response<B>) -> Response<B> {
    if response.status().is_success() || response.status() == StatusCode::NOT_MODIFIED {
        response.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(CACHE_CONTROL),
        );
    }
    response
}

/// The answer for `file` given the request's conditional headers.
fn answer(file: EmbeddedFile, request: &HeaderMap) -> Response<Body> {
    let modified = file.metadata.last_modified();
    let etag = entity_tag(&file.metadata.sha256_hash());
    let fresh = is_fresh(request, &etag, modified);
    let mut response = Response::builder().header(header::ETAG, etag);
    if let Some(seconds) = modified {
        response = response.header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(seconds)),
        );
    }
    let response = if fresh {
        response
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
    } else {
        response
            .header(header::CONTENT_TYPE, file.metadata.mimetype())
            .body(Body::from(file.data))
    };
    // Quoted hex digits, an HTTP date and a MIME type guessed from an extension are all valid
    // header values.
    cache_when_found(response.expect("the headers of an embedded file are valid"))
}

/// A strong entity tag from the file's SHA-256: `"` + 64 hex digits + `"`.
fn entity_tag(hash: &[u8; 32]) -> String {
    let mut tag = String::with_capacity(2 + 2 * hash.len());
    tag.push('"');
    for byte in hash {
        // Writing to a String cannot fail.
        let _ = write!(tag, "{byte:02x}");
    }
    tag.push('"');
    tag
}

/// Whether the browser's copy is current (RFC 9110 §13.2.2): `If-None-Match` decides when it is
/// sent, compared weakly as §13.1.2 requires (a `W/` prefix is ignored); only without it does
/// `If-Modified-Since` count.
fn is_fresh(request: &HeaderMap, etag: &str, modified: Option<u64>) -> bool {
    let mut if_none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if if_none_match.peek().is_some() {
        return if_none_match
            .filter_map(|value| value.to_str().ok())
            // A list split at every comma: our tags hold none, and a piece of a foreign tag
            // cut at its comma lacks one of its quotes, so it can never equal ours.
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    let since = request
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| httpdate::parse_http_date(value).ok());
    match (since, modified) {
        (Some(since), Some(modified)) => UNIX_EPOCH + Duration::from_secs(modified) <= since,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.clone(), HeaderValue::from_str(value).unwrap()))
            .collect()
    }

    #[test]
    fn every_file_the_pages_name_is_embedded() {
        for path in [
            "app.js",
            "style.css",
            "favicon.svg",
            "avatars/0.svg",
            "avatars/11.svg",
        ] {
            assert!(Embedded::get(path).is_some(), "{path} is embedded");
        }
        assert!(
            Embedded::get("avatars").is_none(),
            "directories are not files"
        );
        assert!(Embedded::get("../Cargo.toml").is_none());
    }

    #[test]
    fn the_entity_tag_is_the_quoted_hex_of_the_hash() {
        let tag = entity_tag(&[0xab; 32]);
        assert_eq!(tag, format!("\"{}\"", "ab".repeat(32)));
    }

    #[test]
    fn if_none_match_is_compared_weakly_and_decides_alone() {
        let etag = entity_tag(&[7; 32]);
        let other = entity_tag(&[8; 32]);
        let long_ago = "Thu, 01 Jan 1970 00:00:00 GMT";
        let far_future = "Fri, 01 Jan 2100 00:00:00 GMT";
        let cases = [
            (
                vec![(header::IF_NONE_MATCH, etag.clone())],
                true,
                "the same tag",
            ),
            (
                vec![(header::IF_NONE_MATCH, format!("W/{etag}"))],
                true,
                "a weak tag",
            ),
            (
                vec![(header::IF_NONE_MATCH, format!("{other}, W/{etag}"))],
                true,
                "one tag of a list",
            ),
            (
                vec![
                    (header::IF_NONE_MATCH, other.clone()),
                    (header::IF_NONE_MATCH, etag.clone()),
                ],
                true,
                "a tag on a second header line",
            ),
            (vec![(header::IF_NONE_MATCH, "*".into())], true, "any tag"),
            (
                vec![(header::IF_NONE_MATCH, other.clone())],
                false,
                "another tag",
            ),
            (
                vec![(header::IF_NONE_MATCH, format!("\"x,{}", &etag[1..]))],
                false,
                "a foreign tag with a comma",
            ),
            (
                vec![
                    (header::IF_NONE_MATCH, other.clone()),
                    (header::IF_MODIFIED_SINCE, far_future.into()),
                ],
                false,
                "If-None-Match outranks If-Modified-Since",
            ),
            (
                vec![(header::IF_MODIFIED_SINCE, far_future.into())],
                true,
                "not modified since",
            ),
            (
                vec![(header::IF_MODIFIED_SINCE, long_ago.into())],
                false,
                "modified since",
            ),
            (
                vec![(header::IF_MODIFIED_SINCE, "yesterday".into())],
                false,
                "a date that does not parse",
            ),
            (vec![], false, "no condition"),
        ];
        for (pairs, fresh, case) in cases {
            let pairs: Vec<_> = pairs.iter().map(|(n, v)| (n.clone(), v.as_str())).collect();
            assert_eq!(
                is_fresh(&headers(&pairs), &etag, Some(1_700_000_000)),
                fresh,
                "{case}"
            );
        }
    }
}
