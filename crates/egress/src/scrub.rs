//! Scrubbing: no form of the credential leaves in a vendor's answer.
//!
//! Vendors echo requests (debug endpoints, error pages, reflected headers).
//! Before a response goes back to the caller, every occurrence of the secret
//! — raw, Base64 (standard and URL-safe), percent-encoded (upper and lower
//! case hex, `+` for space), JSON-escaped, and for basic auth the password
//! alone — is replaced with `[REDACTED]` in header values and the body.

use crate::vendor::QUERY_VALUE;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use memchr::memmem;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use valet_credentials::Secret;
use zeroize::Zeroizing;

/// What replaces a credential.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The forms of one secret to remove. Zeroed on drop: they are the secret.
pub struct Scrubber {
    forms: Vec<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} forms)", self.forms.len())
    }
}

impl Scrubber {
    /// The forms of `secret`; `basic` adds the password of `user:password`.
    pub fn new(secret: &Secret, basic: bool) -> Self {
        let raw = secret.expose();
        let mut bases: Vec<&[u8]> = vec![raw];
        if basic && let Some(i) = raw.iter().position(|b| *b == b':') {
            bases.push(&raw[i + 1..]);
        }
        let mut forms: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        for base in bases {
            let text = std::str::from_utf8(base).unwrap_or_default();
            let pct = Zeroizing::new(utf8_percent_encode(text, NON_ALPHANUMERIC).to_string());
            // The form the query scheme sends (unreserved characters kept).
            let sent = Zeroizing::new(utf8_percent_encode(text, QUERY_VALUE).to_string());
            let candidates = [
                sent.as_bytes().to_vec(),
                sent.to_ascii_lowercase().into_bytes(),
                base.to_vec(),
                STANDARD.encode(base).into_bytes(),
                URL_SAFE.encode(base).into_bytes(),
                URL_SAFE_NO_PAD.encode(base).into_bytes(),
                pct.as_bytes().to_vec(),
                pct.to_ascii_lowercase().into_bytes(),
                pct.replace("%20", "+").into_bytes(),
                json_escape(text, false).into_bytes(),
                json_escape(text, true).into_bytes(),
                html_safe_json(text).into_bytes(),
            ];
            for c in candidates {
                let c = Zeroizing::new(c);
                if !c.is_empty() && !forms.contains(&c) {
                    forms.push(c);
                }
            }
        }
        // Longest first, so a form that contains another is removed whole.
        forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
        Self { forms }
    }

    /// `bytes` with every form replaced; `None` when nothing was found.
    pub fn scrub(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut current: Option<Vec<u8>> = None;
        for form in &self.forms {
            let haystack = current.as_deref().unwrap_or(bytes);
            if let Some(replaced) = replace_all(haystack, form, REDACTED) {
                current = Some(replaced);
            }
        }
        current
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let finder = memmem::Finder::new(needle);
    let mut hits = finder.find_iter(haystack).peekable();
    hits.peek()?;
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for at in hits {
        if at < last {
            continue; // overlapping match inside one already replaced
        }
        out.extend_from_slice(&haystack[last..at]);
        out.extend_from_slice(with);
        last = at + needle.len();
    }
    out.extend_from_slice(&haystack[last..]);
    Some(out)
}

/// JSON as Go's encoder (and others) write it: `<`, `>`, `&` as `\u003c`,
/// `\u003e`, `\u0026`.
fn html_safe_json(text: &str) -> String {
    json_escape(text, false)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

fn json_escape(text: &str, escape_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '/' if escape_slash => out.push_str("\\/"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_the_form_the_query_scheme_sends() {
        let secret = Secret::from("tok-en.with_unreserved~and/reserved".to_owned());
        let sent = utf8_percent_encode("tok-en.with_unreserved~and/reserved", QUERY_VALUE).to_string();
        assert!(sent.contains('-') && sent.contains("%2F"));
        let out = Scrubber::new(&secret, false)
            .scrub(format!("?api_key={sent}").as_bytes())
            .unwrap();
        assert_eq!(out, b"?api_key=[REDACTED]");
    }

    #[test]
    fn removes_html_safe_json_escapes() {
        let secret = Secret::from("tok<en>&more-0123456789".to_owned());
        let body = br#"{"echo":"tok\u003cen\u003e\u0026more-0123456789"}"#;
        let out = Scrubber::new(&secret, false).scrub(body).unwrap();
        assert_eq!(out, br#"{"echo":"[REDACTED]"}"#);
    }

    #[test]
    fn removes_every_form() {
        let secret = Secret::from("user:p@ss/w+rd canary".to_owned());
        let s = Scrubber::new(&secret, true);
        let raw = "user:p@ss/w+rd canary";
        let b64 = STANDARD.encode(raw);
        let pct = utf8_percent_encode(raw, NON_ALPHANUMERIC).to_string();
        let body = format!(
            "a {raw} b {b64} c {pct} d {} e {} f p@ss/w+rd canary g {}",
            pct.to_lowercase(),
            "user:p@ss\\/w+rd canary",
            pct.replace("%20", "+")
        );
        let out = String::from_utf8(s.scrub(body.as_bytes()).unwrap()).unwrap();
        assert!(!out.contains("canary"), "{out}");
        assert!(!out.contains(&b64), "{out}");
        assert!(out.starts_with("a [REDACTED] b [REDACTED]"), "{out}");
        assert!(s.scrub(b"nothing here").is_none());
    }
}
