//! Reading request headers the way the gate and the token carriers need them: every value of
//! a header (a repeated header is several values), the items of comma-separated lists, and a
//! header that must appear exactly once. Values that are not UTF-8 are skipped, never guessed.

use hyper::header::{HeaderMap, HeaderName};

/// Every value of `name` that is valid UTF-8, in order.
pub fn values<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    h.get_all(name).iter().filter_map(|v| v.to_str().ok())
}

/// The trimmed items of a comma-separated header, across all its values.
pub fn list_items<'a>(h: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    values(h, name).flat_map(|v| v.split(',')).map(str::trim)
}

/// Whether a comma-separated header lists `token`, case-insensitively.
pub fn lists(h: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(h, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The value of a header that appears exactly once; `None` when absent or repeated.
pub fn single<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a [u8]> {
    let mut all = h.get_all(name).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => Some(v.as_bytes()),
        _ => None,
    }
}
