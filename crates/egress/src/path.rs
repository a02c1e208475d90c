//! Caller paths: relative to the vendor's base URL, and normalised.
//!
//! The rules refuse every way a path could point the credential somewhere
//! other than the vendor's own API: absolute URLs, network-path references
//! (`//host`), backslashes (which some servers treat as `/`) raw or
//! percent-encoded, percent-encoded control characters (`%00`, which cuts
//! the path for a C-string backend, `%0d%0a`), dot segments in
//! raw or percent-encoded form (decoded repeatedly, so `%252e%252e` is caught
//! too, and a segment still encoded after three rounds is refused), `..;`
//! (dot segments before a matrix parameter), overlong UTF-8, control and
//! non-ASCII characters, and fragments. After this, the
//! client still checks that the joined URL kept the vendor's origin.

use percent_encoding::percent_decode;

/// The longest accepted path, query included.
pub const MAX_PATH_LEN: usize = 8192;

/// Why a path was refused; each has a stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Empty.
    #[error("path is required")]
    Empty,
    /// Longer than [`MAX_PATH_LEN`].
    #[error("path is longer than 8192 characters")]
    TooLong,
    /// Does not start with a single `/` (an absolute URL, `//host`, or a
    /// relative reference).
    #[error("path must start with a single '/' and be relative to the vendor's base URL")]
    NotRelative,
    /// Holds a control, space, non-ASCII or otherwise illegal character.
    #[error(
        "path contains a character that is not allowed (control, space, non-ASCII, '\\\\', '<', '>', '\"', '{{', '}}', '|', '^' or '`')"
    )]
    BadCharacter,
    /// A percent-encoded control character or backslash (at any of the
    /// decoding rounds looked through): a server that cuts at NUL, or reads
    /// `\\` as `/`, would see a different path than the one checked.
    #[error(
        "path contains a percent-encoded control character or backslash (%00-%1F, %7F, %5C), raw or double-encoded"
    )]
    EncodedCharacter,
    /// A `%` not followed by two hex digits.
    #[error("path contains a malformed percent-encoding")]
    BadPercentEncoding,
    /// Holds a `#` fragment.
    #[error("path must not contain a fragment ('#')")]
    Fragment,
    /// Has a `.` or `..` segment, raw or percent-encoded.
    #[error("path must not contain '.' or '..' segments, raw or percent-encoded")]
    Traversal,
    /// Has an empty segment (`//`) other than a trailing slash.
    #[error("path must not contain empty segments ('//')")]
    NotNormalised,
}

impl PathError {
    /// The stable reason code callers can match on.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::Empty => "PATH_REQUIRED",
            PathError::TooLong => "PATH_TOO_LONG",
            PathError::NotRelative => "PATH_NOT_RELATIVE",
            PathError::BadCharacter => "PATH_INVALID_CHARACTER",
            PathError::EncodedCharacter => "PATH_INVALID_CHARACTER",
            PathError::BadPercentEncoding => "PATH_INVALID_ENCODING",
            PathError::Fragment => "PATH_FRAGMENT",
            PathError::Traversal => "PATH_TRAVERSAL",
            PathError::NotNormalised => "PATH_NOT_NORMALISED",
        }
    }
}

/// A checked path: its path part and optional query (without the `?`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelativePath<'a> {
    /// Starts with `/`.
    pub path: &'a str,
    /// The query string without `?`, if any.
    pub query: Option<&'a str>,
}

/// Checks a caller's path against the rules above.
pub fn parse(raw: &str) -> Result<RelativePath<'_>, PathError> {
    if raw.is_empty() {
        return Err(PathError::Empty);
    }
    if raw.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong);
    }
    for b in raw.bytes() {
        match b {
            b'#' => return Err(PathError::Fragment),
            b'\\' | b'<' | b'>' | b'"' | b'{' | b'}' | b'|' | b'^' | b'`' => {
                return Err(PathError::BadCharacter);
            }
            0x21..=0x7e => {}
            _ => return Err(PathError::BadCharacter),
        }
    }
    check_percent_encoding(raw)?;
    if !raw.starts_with('/') || raw.starts_with("//") {
        return Err(PathError::NotRelative);
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    check_segments(path)?;
    Ok(RelativePath { path, query })
}

fn check_percent_encoding(raw: &str) -> Result<(), PathError> {
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let ok = bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(PathError::BadPercentEncoding);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// How many rounds of percent-decoding are looked through; a segment that
/// still decodes further is refused rather than trusted.
const MAX_DECODES: usize = 3;

/// Walks the segments of the path part. Each is decoded up to
/// [`MAX_DECODES`] times (a proxy or framework on the way may decode again),
/// split again on decoded `/` and `\`, and no piece may be `.` or `..` —
/// also not before a `;` parameter, which Tomcat and Spring strip (`..;`).
/// A decoded segment must be UTF-8, which refuses overlong forms such as
/// `%c0%ae`.
fn check_segments(path: &str) -> Result<(), PathError> {
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() {
            if i == last {
                continue; // a trailing slash is a real, distinct resource
            }
            return Err(PathError::NotNormalised);
        }
        let mut decoded = segment.as_bytes().to_vec();
        for _ in 0..MAX_DECODES {
            check_dots(&decoded)?;
            check_decoded_characters(&decoded)?;
            let next: Vec<u8> = percent_decode(&decoded).collect();
            if next == decoded {
                break;
            }
            std::str::from_utf8(&next).map_err(|_| PathError::BadPercentEncoding)?;
            decoded = next;
        }
        check_dots(&decoded)?;
        check_decoded_characters(&decoded)?;
        if percent_decode(&decoded).ne(decoded.iter().copied()) {
            return Err(PathError::BadPercentEncoding);
        }
    }
    Ok(())
}

/// A decoded segment may hold no control character (a NUL cuts the path
/// for C-string backends, CR LF splits a request line) and no backslash
/// (which some servers read as `/`) — the raw forms are refused by
/// [`parse`] already.
fn check_decoded_characters(segment: &[u8]) -> Result<(), PathError> {
    if segment.iter().any(|&b| b < 0x20 || b == 0x7f || b == b'\\') {
        Err(PathError::EncodedCharacter)
    } else {
        Ok(())
    }
}

fn check_dots(segment: &[u8]) -> Result<(), PathError> {
    let dot_segment = segment
        .split(|b| *b == b'/' || *b == b'\\')
        .map(|piece| piece.split(|b| *b == b';').next().unwrap_or(piece))
        .any(|piece| piece == b"." || piece == b"..");
    if dot_segment {
        Err(PathError::Traversal)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for ok in [
            "/",
            "/v1/users",
            "/v1/users/",
            "/v1/users?page=2&q=a%20b",
            "/users/@me",
            "/files/report.v2.json",
            "/a/...",
            "/a%2Fb",
            "/a;v=1/b",
            "/caf%C3%A9",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        let p = parse("/v1/users?page=2").unwrap();
        assert_eq!((p.path, p.query), ("/v1/users", Some("page=2")));
    }

    #[test]
    fn refuses_escapes() {
        let cases = [
            ("", PathError::Empty),
            ("http://evil.example/x", PathError::NotRelative),
            ("//evil.example/x", PathError::NotRelative),
            ("v1/users", PathError::NotRelative),
            ("@evil.example/x", PathError::NotRelative),
            ("/a\\b", PathError::BadCharacter),
            ("/a b", PathError::BadCharacter),
            ("/a\tb", PathError::BadCharacter),
            ("/a\u{7f}", PathError::BadCharacter),
            ("/caf\u{e9}", PathError::BadCharacter),
            ("/a#frag", PathError::Fragment),
            ("/a/../b", PathError::Traversal),
            ("/a/./b", PathError::Traversal),
            ("/..", PathError::Traversal),
            ("/a/%2e%2e/b", PathError::Traversal),
            ("/a/%2E./b", PathError::Traversal),
            ("/a/%252e%252e/b", PathError::Traversal),
            ("/a/..%2fb", PathError::Traversal),
            ("/a/..%5cb", PathError::Traversal),
            ("/a//b", PathError::NotNormalised),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%2", PathError::BadPercentEncoding),
            ("/a/..;/b", PathError::Traversal),
            ("/a/.;x=1/b", PathError::Traversal),
            ("/a/%2e%2e;/b", PathError::Traversal),
            ("/a/%c0%ae%c0%ae/b", PathError::BadPercentEncoding),
            ("/a/%2525252e%2525252e/b", PathError::BadPercentEncoding),
            // A backend that cuts at NUL would see `..`; one that treats a
            // decoded backslash as `/` would see another segment.
            ("/v1/..%00/x", PathError::EncodedCharacter),
            ("/v1/a%00b", PathError::EncodedCharacter),
            ("/v1/a%0d%0aHost:%20evil", PathError::EncodedCharacter),
            ("/v1/a%7F", PathError::EncodedCharacter),
            ("/v1/a%5cb", PathError::EncodedCharacter),
            ("/v1/a%5Cb", PathError::EncodedCharacter),
            ("/v1/a%255cb", PathError::EncodedCharacter),
            ("/v1/a%2500b", PathError::EncodedCharacter),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path).unwrap_err(), want, "{path:?}");
        }
        assert_eq!(PathError::EncodedCharacter.reason(), "PATH_INVALID_CHARACTER");
        assert_eq!(
            parse(&format!("/{}", "a".repeat(MAX_PATH_LEN))).unwrap_err(),
            PathError::TooLong
        );
    }
}
