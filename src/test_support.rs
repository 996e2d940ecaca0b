//! Helpers for the library's unit tests, shared so that each test module does not grow its own.

use axum::http::{HeaderMap, HeaderValue};

/// A header map holding `pairs` in order (a name may repeat).
pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(*name, HeaderValue::from_str(value).unwrap());
    }
    headers
}
