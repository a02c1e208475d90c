//! What a caller may ask the vendor for: method, headers, body size.
//!
//! Headers that would let a caller override or learn the credential, spoof
//! where a request came from, or desynchronise message framing are refused,
//! not silently dropped, so the caller learns at once — also when spelled
//! with `_` for `-`, which CGI-style servers merge with the real header.

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method};

/// Size limits on what a caller sends and what a vendor returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body, bytes.
    pub max_request_body_bytes: usize,
    /// Largest response body, bytes.
    pub max_response_body_bytes: usize,
    /// Most caller headers.
    pub max_header_count: usize,
    /// Largest total of caller header names and values, bytes.
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 16 << 20,
            max_header_count: 64,
            max_header_bytes: 16 << 10,
        }
    }
}

/// Why a request was refused; each has a stable reason code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not one of the allowed methods.
    #[error("method must be one of GET, HEAD, OPTIONS, POST, PUT, PATCH, DELETE (upper case)")]
    Method,
    /// READ with a method that may change state.
    #[error("method {0} is not a read; use operation WRITE, or GET, HEAD or OPTIONS for READ")]
    MethodNotRead(String),
    /// A header name that is not a valid HTTP token.
    #[error("headers[{0}]: name is not a valid HTTP header name")]
    HeaderName(usize),
    /// A header value with control or non-ASCII characters.
    #[error("headers[{index}] ({name}): value must be visible ASCII and spaces")]
    HeaderValue {
        /// Position in the request.
        index: usize,
        /// The header's name.
        name: String,
    },
    /// A header the caller may not set.
    #[error("headers[{index}] ({name}): this header may not be set by the caller")]
    HeaderForbidden {
        /// Position in the request.
        index: usize,
        /// The header's name.
        name: String,
    },
    /// Too many headers, or too many header bytes.
    #[error("headers: at most {count} headers and {bytes} bytes in total")]
    HeadersTooLarge {
        /// The count limit.
        count: usize,
        /// The byte limit.
        bytes: usize,
    },
    /// The body is larger than allowed.
    #[error("body: larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The query sets the vendor's credential parameter.
    #[error("path: query parameter '{0}' is set by Valet and may not be set by the caller")]
    QueryParamForbidden(String),
}

impl RequestError {
    /// The stable reason code.
    pub fn reason(&self) -> &'static str {
        match self {
            RequestError::Method => "METHOD_INVALID",
            RequestError::MethodNotRead(_) => "OPERATION_METHOD_MISMATCH",
            RequestError::HeaderName(_) => "HEADER_NAME_INVALID",
            RequestError::HeaderValue { .. } => "HEADER_VALUE_INVALID",
            RequestError::HeaderForbidden { .. } => "HEADER_FORBIDDEN",
            RequestError::HeadersTooLarge { .. } => "HEADERS_TOO_LARGE",
            RequestError::BodyTooLarge(_) => "BODY_TOO_LARGE",
            RequestError::QueryParamForbidden(_) => "QUERY_PARAM_FORBIDDEN",
        }
    }
}

/// Parses the caller's method. CONNECT and TRACE are refused: one tunnels,
/// the other echoes request headers — credential included — back.
pub fn method(raw: &str) -> Result<Method, RequestError> {
    match raw {
        "GET" => Ok(Method::GET),
        "HEAD" => Ok(Method::HEAD),
        "OPTIONS" => Ok(Method::OPTIONS),
        "POST" => Ok(Method::POST),
        "PUT" => Ok(Method::PUT),
        "PATCH" => Ok(Method::PATCH),
        "DELETE" => Ok(Method::DELETE),
        _ => Err(RequestError::Method),
    }
}

/// Whether `method` is safe to call a READ: a key granted only reads must not
/// be able to delete by calling it a read.
pub fn check_read(method: &Method) -> Result<(), RequestError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        Ok(())
    } else {
        Err(RequestError::MethodNotRead(method.to_string()))
    }
}

/// Headers the caller never sets: credentials and cookies, routing and
/// client-identity headers, hop-by-hop and framing headers, and the
/// method- and URL-override headers many frameworks honour — with them a
/// READ `GET` could act as a `DELETE`, or a path could be rewritten past the
/// vendor's base URL.
const FORBIDDEN: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
    "content-encoding",
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "forwarded",
    "via",
    "x-real-ip",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "accept-encoding",
    "expect",
];

/// Hop-by-hop headers, removed from vendor responses too.
pub const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Checks and converts caller headers. `reserved` are the vendor's own
/// credential header (if its scheme uses a custom one) and its idempotency
/// header: Valet sets those.
pub fn headers<'a>(
    raw: impl IntoIterator<Item = (&'a str, &'a str)>,
    reserved: &[&HeaderName],
    limits: &Limits,
) -> Result<HeaderMap, RequestError> {
    let mut map = HeaderMap::new();
    let mut bytes = 0usize;
    let too_large = RequestError::HeadersTooLarge {
        count: limits.max_header_count,
        bytes: limits.max_header_bytes,
    };
    for (index, (name, value)) in raw.into_iter().enumerate() {
        if index >= limits.max_header_count {
            return Err(too_large);
        }
        bytes += name.len() + value.len();
        if bytes > limits.max_header_bytes {
            return Err(too_large);
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| RequestError::HeaderName(index))?;
        // CGI, WSGI and Rack read `X_Api_Key` and `X-Api-Key` as the same
        // HTTP_X_API_KEY, so names are compared with `_` as `-`.
        let canonical = canonical_name(name.as_str());
        let forbidden = FORBIDDEN.contains(&canonical.as_str())
            || canonical.starts_with("x-forwarded-")
            || reserved.iter().any(|r| canonical_name(r.as_str()) == canonical);
        if forbidden {
            return Err(RequestError::HeaderForbidden {
                index,
                name: name.to_string(),
            });
        }
        let legal = value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || (0x21..=0x7e).contains(&b));
        let value = HeaderValue::from_str(value)
            .ok()
            .filter(|_| legal)
            .ok_or_else(|| RequestError::HeaderValue {
                index,
                name: name.to_string(),
            })?;
        map.append(name, value);
    }
    Ok(map)
}

/// A header name as servers that merge `-` and `_` see it (already lower
/// case: [`HeaderName`]s are).
fn canonical_name(name: &str) -> String {
    name.replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods() {
        assert_eq!(method("GET").unwrap(), Method::GET);
        for bad in ["get", "TRACE", "CONNECT", "", "BREW"] {
            assert_eq!(method(bad).unwrap_err(), RequestError::Method, "{bad}");
        }
        assert!(check_read(&Method::HEAD).is_ok());
        assert!(check_read(&Method::DELETE).is_err());
    }

    #[test]
    fn header_rules() {
        let limits = Limits::default();
        let custom = HeaderName::from_static("x-api-key");
        let ok = headers(
            [("Accept", "application/json"), ("X-Trace", "a b")],
            &[&custom],
            &limits,
        )
        .unwrap();
        assert_eq!(ok["accept"], "application/json");
        for name in [
            "Authorization",
            "cookie",
            "Host",
            "X-Forwarded-For",
            "Connection",
            "Content-Length",
            "X-Api-Key",
        ] {
            let err = headers([(name, "v")], &[&custom], &limits).unwrap_err();
            assert_eq!(err.reason(), "HEADER_FORBIDDEN", "{name}");
        }
        // CGI and WSGI servers map `-` and `_` alike (HTTP_X_API_KEY), so
        // an underscore spelling would be merged with the real header.
        for name in [
            "x_api_key",
            "X_Api-Key",
            "x_forwarded_for",
            "X-Forwarded_Host",
            "x_real_ip",
            "proxy_authorization",
        ] {
            let err = headers([(name, "evil")], &[&custom], &limits).unwrap_err();
            assert_eq!(err.reason(), "HEADER_FORBIDDEN", "{name}");
        }
        let underscored = HeaderName::from_static("x_vendor_key");
        for name in ["x-vendor-key", "X_Vendor_Key"] {
            let err = headers([(name, "evil")], &[&underscored], &limits).unwrap_err();
            assert_eq!(err.reason(), "HEADER_FORBIDDEN", "{name}");
        }
        assert!(headers([("x_trace_id", "1")], &[&custom], &limits).is_ok());
        assert_eq!(
            headers([("bad name", "v")], &[], &limits).unwrap_err().reason(),
            "HEADER_NAME_INVALID"
        );
        assert_eq!(
            headers([("x-a", "v\r\nx: y")], &[], &limits)
                .unwrap_err()
                .reason(),
            "HEADER_VALUE_INVALID"
        );
        let many: Vec<(&str, &str)> = (0..65).map(|_| ("x-a", "v")).collect();
        assert_eq!(
            headers(many, &[], &limits).unwrap_err().reason(),
            "HEADERS_TOO_LARGE"
        );
    }
}
