//! Request paths in one canonical form before routing, so that routing,
//! the policies bound to routes and the backend all read the same path.
//!
//! Without it `/public/../admin` is routed by its `/public` prefix while a
//! backend that resolves dot segments serves `/admin`, past whatever the
//! `/admin` route demands. So, once per request and for every protocol:
//! - percent-encoded unreserved characters are decoded (`%2e` is `.`,
//!   `%41` is `A`) and other escapes get upper-case hex (RFC 3986 §6.2.2);
//! - dot segments are removed (RFC 3986 §5.2.4; `..` stops at the root);
//! - runs of slashes are merged into one, unless the listener says
//!   `merge_slashes = false` (a backend that merges them before resolving
//!   dot segments would otherwise read `/a//../b` differently);
//! - a malformed escape (`%zz`) or an encoded NUL is refused, and so is a segment that would
//!   become a dot segment once an escaped slash or a backslash in it is
//!   read as `/` (`..%2Fadmin`): some backends decode those first.
//!
//! The forwarded path is the normalized one; the query is left as it came.
//! The common case, a path with nothing to change, costs one scan.

use http::Uri;
use http::uri::PathAndQuery;

/// Why a request path was refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// `%` not followed by two hex digits.
    BadEscape,
    /// A segment that an escaped slash or a backslash would turn into `.` or `..`.
    HiddenDotSegment,
    /// `%00`: a NUL ends the path early for backends written in C (nginx refuses it too).
    EncodedNul,
}

impl PathError {
    pub fn message(self) -> &'static str {
        match self {
            PathError::BadEscape => "the request path has a malformed percent-encoding",
            PathError::HiddenDotSegment => "the request path hides a dot segment behind an escaped slash",
            PathError::EncodedNul => "the request path has an encoded NUL (%00)",
        }
    }
}

/// The request target with its path normalized; `Ok(None)` when it already
/// was (or is not a path: `*`, or a CONNECT's authority).
pub fn normalize_uri(uri: &Uri, merge_slashes: bool) -> Result<Option<Uri>, PathError> {
    // An absolute-form target with an empty path and a query (`http://h?q`):
    // its origin form needs the `/` (RFC 9112 §3.2.1), or the backend is sent
    // a request line `GET ?q HTTP/1.1`, which it cannot parse.
    if let Some(pq) = uri.path_and_query().filter(|pq| pq.as_str().starts_with('?')) {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query =
            Some(PathAndQuery::try_from(format!("/{}", pq.as_str())).map_err(|_| PathError::BadEscape)?);
        return Ok(Some(Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?));
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Ok(None);
    }
    let Some(normal) = normalize_path(path, merge_slashes)? else { return Ok(None) };
    let with_query = match uri.query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = uri.clone().into_parts();
    // Only unreserved characters were decoded and only segments removed:
    // what is left is made of what a valid path already had.
    parts.path_and_query = Some(PathAndQuery::try_from(with_query).map_err(|_| PathError::BadEscape)?);
    Ok(Some(Uri::from_parts(parts).map_err(|_| PathError::BadEscape)?))
}

/// `path` (starting with `/`) normalized, or `None` if it already is.
pub fn normalize_path(path: &str, merge_slashes: bool) -> Result<Option<String>, PathError> {
    if is_normal(path.as_bytes(), merge_slashes) {
        return Ok(None);
    }
    let decoded = decode_unreserved(path.as_bytes())?;
    let mut out: Vec<&[u8]> = Vec::new();
    // Whether the result ends in `/` although its last segment is not empty.
    let mut trailing_slash = false;
    let mut segments = decoded[1..].split(|&b| b == b'/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        trailing_slash = false;
        match segment {
            b"." => trailing_slash = true,
            b".." => {
                out.pop();
                trailing_slash = true;
            }
            b"" if merge_slashes && !last => {}
            _ => {
                if hides_dot_segment(segment) {
                    return Err(PathError::HiddenDotSegment);
                }
                out.push(segment);
            }
        }
    }
    let mut normal = Vec::with_capacity(decoded.len());
    for segment in &out {
        normal.push(b'/');
        normal.extend_from_slice(segment);
    }
    if normal.is_empty() || trailing_slash {
        normal.push(b'/');
    }
    if normal == path.as_bytes() {
        return Ok(None);
    }
    // Decoding produced only unreserved ASCII; the rest is the input's bytes.
    Ok(Some(String::from_utf8(normal).map_err(|_| PathError::BadEscape)?))
}

/// True when nothing in `path` needs changing: no escapes, no backslash, no
/// dot segment and (when merging) no empty segment.
fn is_normal(path: &[u8], merge_slashes: bool) -> bool {
    let mut previous = b'/';
    for (i, &b) in path.iter().enumerate().skip(1) {
        match b {
            b'%' | b'\\' => return false,
            b'/' if previous == b'/' && merge_slashes => return false,
            b'.' if previous == b'/' => {
                // `.` or `..` as a whole segment.
                let rest = &path[i..];
                let segment = rest.split(|&c| c == b'/').next().unwrap_or_default();
                if segment == b"." || segment == b".." {
                    return false;
                }
            }
            _ => {}
        }
        previous = b;
    }
    true
}

/// Decodes escapes of unreserved characters and upper-cases the hex of the
/// others (RFC 3986 §2.3, §6.2.2.1).
fn decode_unreserved(path: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (path.get(i + 1).and_then(hex), path.get(i + 2).and_then(hex)) else {
            return Err(PathError::BadEscape);
        };
        let value = hi << 4 | lo;
        if value == 0 {
            return Err(PathError::EncodedNul);
        }
        if value.is_ascii_alphanumeric() || b"-._~".contains(&value) {
            out.push(value);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        }
        i += 3;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// Whether `segment`, cut at escaped slashes (`%2F`, `%5C`) and
/// backslashes, has a `.` or `..` piece: a backend that decodes those
/// before resolving dot segments would climb out of the routed prefix.
fn hides_dot_segment(segment: &[u8]) -> bool {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < segment.len() {
        let separator = if segment[i] == b'\\' {
            1
        } else if segment[i..].starts_with(b"%2F") || segment[i..].starts_with(b"%5C") {
            3
        } else {
            0
        };
        if separator > 0 {
            pieces.push(&segment[start..i]);
            i += separator;
            start = i;
        } else {
            i += 1;
        }
    }
    if pieces.is_empty() {
        return false;
    }
    pieces.push(&segment[start..]);
    pieces.iter().any(|p| *p == b"." || *p == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize_path(path, true).map(|n| n.unwrap_or_else(|| path.to_string()))
    }

    #[test]
    fn normal_paths_are_left_alone() {
        for path in ["/", "/a", "/a/b/", "/a.b/c..d/.well-known/x", "/a-b_c~d", "/api/v1/items"] {
            assert_eq!(normalize_path(path, true), Ok(None), "{path}");
        }
    }

    #[test]
    fn dot_segments_are_removed_as_rfc_3986_says() {
        assert_eq!(norm("/public/../admin").unwrap(), "/admin");
        assert_eq!(norm("/a/./b/../c").unwrap(), "/a/c");
        assert_eq!(norm("/a/b/..").unwrap(), "/a/");
        assert_eq!(norm("/a/.").unwrap(), "/a/");
        assert_eq!(norm("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(norm("/..").unwrap(), "/");
    }

    #[test]
    fn escaped_unreserved_characters_are_decoded_before_dot_segments_go() {
        assert_eq!(norm("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(norm("/public/%2E./admin").unwrap(), "/admin");
        assert_eq!(norm("/%61dmin").unwrap(), "/admin");
        // Reserved characters stay escaped, in upper case.
        assert_eq!(norm("/a%2fb%3a").unwrap(), "/a%2Fb%3A");
        assert_eq!(norm("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn slashes_are_merged_unless_the_listener_keeps_them() {
        assert_eq!(norm("//a///b//").unwrap(), "/a/b/");
        assert_eq!(norm("/public//../admin").unwrap(), "/admin");
        assert_eq!(normalize_path("//a//b", false), Ok(None));
        assert_eq!(normalize_path("/a//../b", false).unwrap().unwrap(), "/a/b");
    }

    #[test]
    fn malformed_escapes_and_dot_segments_behind_escaped_slashes_are_refused() {
        for bad in ["/a%zz", "/a%4", "/a%"] {
            assert_eq!(norm(bad), Err(PathError::BadEscape), "{bad}");
        }
        assert_eq!(norm("/file.txt%00.png"), Err(PathError::EncodedNul));
        for hidden in ["/public/..%2fadmin", "/public/..%5Cadmin", "/public/..\\admin", "/a/x%2F..%2Fy"] {
            assert_eq!(norm(hidden), Err(PathError::HiddenDotSegment), "{hidden}");
        }
        // An escaped slash inside an ordinary name is a name.
        assert_eq!(norm("/projects/group%2fproject").unwrap(), "/projects/group%2Fproject");
    }

    #[test]
    fn the_query_is_kept_as_it_came() {
        let uri: Uri = "/a/../b?x=%2e%2e&y=/../".parse().unwrap();
        assert_eq!(normalize_uri(&uri, true).unwrap().unwrap(), "/b?x=%2e%2e&y=/../");
        let absolute: Uri = "http://example.com/a/./b".parse().unwrap();
        assert_eq!(normalize_uri(&absolute, true).unwrap().unwrap(), "http://example.com/a/b");
        assert_eq!(normalize_uri(&"*".parse().unwrap(), true), Ok(None));
    }

    #[test]
    fn an_absolute_target_with_a_query_and_no_path_gets_its_slash() {
        let uri: Uri = "http://example.com?m/x".parse().unwrap();
        let normal = normalize_uri(&uri, true).unwrap().unwrap();
        assert_eq!(normal, "http://example.com/?m/x");
        assert_eq!(normal.path_and_query().unwrap().as_str(), "/?m/x");
    }
}
