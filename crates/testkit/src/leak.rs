//! Finding a canary in outputs.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use std::path::{Path, PathBuf};

/// The forms of `canary` found in `haystack` ("raw", "base64", ...).
pub fn forms_found(haystack: &[u8], canary: &str) -> Vec<&'static str> {
    let percent = utf8_percent_encode(canary, NON_ALPHANUMERIC).to_string();
    let json = serde_json::to_string(canary).unwrap_or_default();
    let json = json.trim_matches('"');
    let forms = [
        ("raw", canary.to_owned()),
        ("base64", STANDARD.encode(canary)),
        ("base64url", URL_SAFE_NO_PAD.encode(canary)),
        ("percent", percent.clone()),
        ("percent-lower", percent.to_ascii_lowercase()),
        ("percent-plus", percent.replace("%20", "+")),
        ("json", json.to_owned()),
        ("json-slash", json.replace('/', "\\/")),
    ];
    forms
        .into_iter()
        .filter(|(_, f)| contains(haystack, f.as_bytes()))
        .map(|(name, _)| name)
        .collect()
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
