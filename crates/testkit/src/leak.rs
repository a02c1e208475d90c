//! Finding a canary in outputs.
//!
//! The scanner looks for exactly the forms Valet's scrubber documents (the
//! README's "scrub" step), written here independently and plainly so a test
//! does not check the scrubber with itself:
//!
//! - `raw`: the canary itself;
//! - `base64` / `base64url`: the canary inside a larger Base64'd text, at
//!   each of the three alignments (the run of characters its whole 3-byte
//!   groups encode to), padded or not;
//! - `hex`: its hex, in any case;
//!
//! and each of those also after up to three rounds of decoding, each undoing
//! percent-encoding (either case, any subset of the bytes) and JSON string
//! escapes (`\uXXXX`, surrogate pairs, `\"` `\\` `\/` `\b` `\f` `\n` `\r`
//! `\t`), with `+` read as a space. A form found only after decoding is
//! reported as `escaped <form>`.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use std::path::{Path, PathBuf};

/// Rounds of decoding looked through, as the scrubber does.
const DECODES: usize = 3;

const NAMES: [[&str; 4]; 2] = [
    ["raw", "base64", "base64url", "hex"],
    [
        "escaped raw",
        "escaped base64",
        "escaped base64url",
        "escaped hex",
    ],
];

/// The forms of `canary` found in `haystack` ("raw", "base64", "escaped
/// hex", ...).
pub fn forms_found(haystack: &[u8], canary: &str) -> Vec<&'static str> {
    let c = canary.as_bytes();
    // The needles of each form: raw, Base64 (per alignment), hex.
    let mut standard = Vec::new();
    let mut url_safe = Vec::new();
    for start in 0..3.min(c.len()) {
        let whole = (c.len() - start) / 3 * 3;
        if whole > 0 {
            standard.push(STANDARD_NO_PAD.encode(&c[start..start + whole]).into_bytes());
            url_safe.push(URL_SAFE_NO_PAD.encode(&c[start..start + whole]).into_bytes());
        }
    }
    // The URL-safe alphabet is its own form only where it differs.
    url_safe.retain(|u| !standard.contains(u));
    let hex: Vec<u8> = c.iter().flat_map(|b| format!("{b:02x}").into_bytes()).collect();
    let forms: [Vec<Vec<u8>>; 4] = [vec![c.to_vec()], standard, url_safe, vec![hex]];

    let mut found = Vec::new();
    let mut layer = haystack.to_vec();
    for round in 0..=DECODES {
        let plus = plus_as_space(&layer);
        let lower = layer.to_ascii_lowercase();
        for (i, needles) in forms.iter().enumerate() {
            let hit = needles.iter().any(|n| {
                if i == 3 {
                    contains(&lower, n)
                } else {
                    contains(&plus, &plus_as_space(n))
                }
            });
            let name = NAMES[usize::from(round > 0)][i];
            let already = found.contains(&NAMES[0][i]) || found.contains(&NAMES[1][i]);
            if hit && !already {
                found.push(name);
            }
        }
        let next = decode(&layer);
        if next == layer {
            break;
        }
        layer = next;
    }
    found
}

/// Every file under `dir` holding a form of `canary`, with the forms.
pub fn files_containing(dir: &Path, canary: &str) -> Vec<(PathBuf, Vec<&'static str>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                let forms = forms_found(&bytes, canary);
                if !forms.is_empty() {
                    found.push((path, forms));
                }
            }
        }
    }
    found
}

fn plus_as_space(bytes: &[u8]) -> Vec<u8> {
    bytes.iter().map(|&b| if b == b'+' { b' ' } else { b }).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// One round: `%XX` and JSON string escapes decoded, anything else kept.
fn decode(text: &[u8]) -> Vec<u8> {
    let hex = |i: usize| {
        text.get(i)
            .and_then(|&b| (b as char).to_digit(16))
            .map(|d| d as u8)
    };
    let u_escape = |i: usize| -> Option<u32> {
        if text.get(i) != Some(&b'\\') || text.get(i + 1) != Some(&b'u') {
            return None;
        }
        (0..4).try_fold(0u32, |v, k| Some(v << 4 | u32::from(hex(i + 2 + k)?)))
    };
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (hex(i + 1), hex(i + 2))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        if b == b'\\' {
            let simple = match text.get(i + 1) {
                Some(b'"') => Some(b'"'),
                Some(b'\\') => Some(b'\\'),
                Some(b'/') => Some(b'/'),
                Some(b'b') => Some(8),
                Some(b'f') => Some(12),
                Some(b'n') => Some(b'\n'),
                Some(b'r') => Some(b'\r'),
                Some(b't') => Some(b'\t'),
                _ => None,
            };
            if let Some(s) = simple {
                out.push(s);
                i += 2;
                continue;
            }
            if let Some(unit) = u_escape(i) {
                let (c, used) = match unit {
                    0xD800..=0xDBFF => match u_escape(i + 6) {
                        Some(low @ 0xDC00..=0xDFFF) => (
                            char::from_u32(0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)),
                            12,
                        ),
                        _ => (None, 6),
                    },
                    other => (char::from_u32(other), 6),
                };
                if let Some(c) = c {
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    i += used;
                    continue;
                }
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const CANARY: &str = "CANARY-scan-0123456789abcdef/+?~ 42";

    fn pct(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("%{b:02X}")).collect()
    }

    #[test]
    fn finds_every_documented_form() {
        let c = CANARY.as_bytes();
        let mut cases: Vec<(String, &str)> = vec![
            (format!("x {CANARY} y"), "raw"),
            (c.iter().map(|b| format!("{b:02x}")).collect(), "hex"),
            (c.iter().map(|b| format!("{b:02X}")).collect(), "hex"),
            (pct(c), "escaped raw"),
            (pct(c).to_lowercase(), "escaped raw"),
            (pct(c).replace('%', "%25"), "escaped raw"),
            (pct(pct(c).as_bytes()), "escaped raw"),
            (CANARY.replace(' ', "+").replace('/', "%2f"), "escaped raw"),
            (
                CANARY.chars().map(|ch| format!("\\u{:04X}", ch as u32)).collect(),
                "escaped raw",
            ),
            (CANARY.replace('/', "\\/"), "escaped raw"),
        ];
        for prefix in ["", "a", "ab", "Bearer ", "{\"t\":\""] {
            let plain = format!("{prefix}{CANARY}\"}}");
            cases.push((STANDARD.encode(&plain), "base64"));
            cases.push((STANDARD_NO_PAD.encode(&plain), "base64"));
            cases.push((URL_SAFE.encode(&plain), "base64url"));
            cases.push((pct(STANDARD.encode(&plain).as_bytes()), "escaped base64"));
        }
        for (text, want) in cases {
            let found = forms_found(text.as_bytes(), CANARY);
            // Where no character differs, URL-safe Base64 is the standard one.
            let ok = found.contains(&want) || (want == "base64url" && found.contains(&"base64"));
            assert!(ok, "{want} not found in {text}: {found:?}");
        }
    }

    #[test]
    fn finds_nothing_in_text_without_the_canary() {
        for text in [
            "CANARY-scan-0123456789abcdef/+?~ 4",
            "[REDACTED] %zz \\u12 \\ud800",
            "",
        ] {
            assert_eq!(forms_found(text.as_bytes(), CANARY), Vec::<&str>::new(), "{text}");
        }
    }
}
