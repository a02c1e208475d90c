use super::*;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

const SECRET: &str = "tok-en.with_unreserved~and/reserved+chars 42";

fn scrub(secret: &str, basic: bool, text: &str) -> String {
    let s = Scrubber::new(&Secret::from(secret.to_owned()), basic);
    match s.scrub(text.as_bytes()) {
        Some(out) => String::from_utf8(out).unwrap(),
        None => text.to_owned(),
    }
}

/// `text` with the secret in it comes back as `want`.
#[track_caller]
fn check(text: &str, want: &str) {
    assert_eq!(scrub(SECRET, false, text), want, "in: {text}");
}

fn pct_all(bytes: &[u8], upper: bool) -> String {
    bytes
        .iter()
        .map(|b| {
            if upper {
                format!("%{b:02X}")
            } else {
                format!("%{b:02x}")
            }
        })
        .collect()
}

#[test]
fn raw() {
    check(&format!("a {SECRET} b"), "a [REDACTED] b");
    check(&format!("{SECRET}{SECRET}"), "[REDACTED]");
    assert!(
        Scrubber::new(&Secret::from(SECRET.to_owned()), false)
            .scrub(b"nothing here")
            .is_none()
    );
}

#[test]
fn base64_at_every_alignment_in_a_larger_plaintext() {
    for prefix in ["", "B", "Be", "Bearer ", "{\"token\":\""] {
        for suffix in ["", "x", "\"}", "-tail"] {
            let plain = format!("{prefix}{SECRET}{suffix}");
            for (name, encoded) in [
                ("standard", STANDARD.encode(&plain)),
                ("standard unpadded", STANDARD_NO_PAD.encode(&plain)),
                ("url-safe", URL_SAFE.encode(&plain)),
                ("url-safe unpadded", URL_SAFE_NO_PAD.encode(&plain)),
            ] {
                let out = scrub(SECRET, false, &format!("<{encoded}>"));
                assert!(out.contains("[REDACTED]"), "{name} {plain:?}: {out}");
                // Every character that carries a bit of the secret is gone:
                // what is left decodes to no more than the prefix and suffix.
                let left = out
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .split("[REDACTED]")
                    .map(|p| p.trim_end_matches('='))
                    .collect::<Vec<_>>();
                assert_eq!(left.len(), 2, "{name} {plain:?}: {out}");
                assert!(
                    left[0].len() <= prefix.len() * 4 / 3 + 1 && left[1].len() <= suffix.len() * 4 / 3 + 1,
                    "{name} {plain:?}: {out}"
                );
            }
        }
    }
}

#[test]
fn base64_padding_goes_with_the_secret_at_every_length() {
    // The secret alone, or ending a Base64'd text: nothing of it is left,
    // padding included, whatever its length.
    for cut in 0..3 {
        let secret = &SECRET[cut..];
        for prefix in ["", "B", "Be", "Bearer "] {
            let plain = format!("{prefix}{secret}");
            for encoded in [STANDARD.encode(&plain), URL_SAFE.encode(&plain)] {
                let out = scrub(secret, false, &format!("\"{encoded}\""));
                let (before, after) = out.split_once("[REDACTED]").expect(&out);
                assert_eq!(after, "\"", "{plain:?}: {out}");
                assert!(before.len() <= 1 + prefix.len() * 4 / 3 + 1, "{plain:?}: {out}");
            }
        }
    }
}

#[test]
fn hex_in_either_case() {
    let lower = hex_lower(SECRET.as_bytes());
    check(&format!("x={lower};"), "x=[REDACTED];");
    check(&format!("x={};", lower.to_uppercase()), "x=[REDACTED];");
    let mixed: String = lower
        .chars()
        .enumerate()
        .map(|(i, c)| if i % 3 == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    check(&format!("x={mixed};"), "x=[REDACTED];");
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn percent_encoding_full_partial_and_double() {
    let b = SECRET.as_bytes();
    check(&format!("?k={}&x", pct_all(b, true)), "?k=[REDACTED]&x");
    check(&format!("?k={}&x", pct_all(b, false)), "?k=[REDACTED]&x");
    // As a query sends it (unreserved kept), and with `+` for space.
    let sent = utf8_percent_encode(SECRET, NON_ALPHANUMERIC).to_string();
    check(&format!("?k={sent}&x"), "?k=[REDACTED]&x");
    check(&format!("?k={}&x", sent.replace("%20", "+")), "?k=[REDACTED]&x");
    check(&format!("?k={}&x", sent.to_lowercase()), "?k=[REDACTED]&x");
    // Every other byte encoded.
    let partial: String = SECRET
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            if i % 2 == 0 {
                format!("%{c:02x}")
            } else {
                (c as char).to_string()
            }
        })
        .collect();
    check(&format!("?k={partial}&x"), "?k=[REDACTED]&x");
    // Double- and triple-encoded.
    let double = pct_all(b, true).replace('%', "%25");
    check(&format!("?k={double}&x"), "?k=[REDACTED]&x");
    check(
        &format!("?k={}&x", pct_all(pct_all(b, false).as_bytes(), true)),
        "?k=[REDACTED]&x",
    );
    check(&format!("?k={}&x", double.replace('%', "%25")), "?k=[REDACTED]&x");
}

#[test]
fn json_escapes() {
    // Every character as \u00XX, either case.
    let all: String = SECRET.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
    check(&format!(r#"{{"t":"{all}"}}"#), r#"{"t":"[REDACTED]"}"#);
    check(
        &format!(r#"{{"t":"{}"}}"#, all.to_uppercase().replace("\\U", "\\u")),
        r#"{"t":"[REDACTED]"}"#,
    );
    // As encoders write it: `\/`, and Go's HTML-safe `\u003c`.
    check(
        r#"{"t":"tok-en.with_unreserved~and\/reserved+chars 42"}"#,
        r#"{"t":"[REDACTED]"}"#,
    );
    let html = "tok<en>&more-0123456789";
    let out = scrub(
        html,
        false,
        r#"{"echo":"tok\u003cen\u003e\u0026more-0123456789"}"#,
    );
    assert_eq!(out, r#"{"echo":"[REDACTED]"}"#);
    // Non-ASCII, and a character beyond the BMP as a surrogate pair.
    let wide = "s\u{e9}cret-\u{1F511}-0123456789";
    let out = scrub(wide, false, r#"["s\u00e9cret-\ud83d\udd11-0123456789"]"#);
    assert_eq!(out, r#"["[REDACTED]"]"#);
}

#[test]
fn forms_stacked_through_decoding_rounds() {
    // Base64 of the secret, percent-encoded in a URL, inside a JSON string.
    let b64 = STANDARD.encode(format!("Bearer {SECRET}"));
    let in_url = utf8_percent_encode(&b64, NON_ALPHANUMERIC).to_string();
    let json = format!(r#"{{"next":"https:\/\/v.example\/cb?s={in_url}"}}"#);
    let out = scrub(SECRET, false, &json);
    assert!(
        out.contains("[REDACTED]") && !out.contains(&in_url[8..20]),
        "{out}"
    );
    // Hex, JSON-escaped.
    let hex: String = hex_lower(SECRET.as_bytes())
        .chars()
        .map(|c| format!("\\u{:04x}", c as u32))
        .collect();
    check(&format!("[\"{hex}\"]"), "[\"[REDACTED]\"]");
}

#[test]
fn the_basic_password_alone_in_every_form() {
    let secret = "svc-user:p@ss/w+rd canary";
    let password = "p@ss/w+rd canary";
    for text in [
        password.to_owned(),
        STANDARD.encode(password),
        URL_SAFE_NO_PAD.encode(format!("xx{password}")),
        hex_lower(password.as_bytes()),
        pct_all(password.as_bytes(), false),
        STANDARD.encode(secret),
    ] {
        let out = scrub(secret, true, &format!("<{text}>"));
        // Only the characters of the "xx" before it may be left.
        let (before, after) = out.split_once("[REDACTED]").expect(&out);
        assert!(
            before.len() <= 3 && after.trim_start_matches('=') == ">",
            "{text}: {out}"
        );
    }
}

#[test]
fn the_rest_of_the_text_is_kept_byte_for_byte() {
    let text = "caf\u{e9} 100% \\n \\u12 %zz %4 \\uD800 {\"a\":\"b\"} \u{1F511} +";
    let s = Scrubber::new(&Secret::from(SECRET.to_owned()), false);
    assert!(s.scrub(text.as_bytes()).is_none());
    let with = format!("{text}{SECRET}{text}");
    assert_eq!(
        String::from_utf8(s.scrub(with.as_bytes()).unwrap()).unwrap(),
        format!("{text}[REDACTED]{text}")
    );
    // Escapes cut off at the end are left alone.
    for tail in ["%", "%4", "\\", "\\u00", "\\ud83d\\ud"] {
        let with = format!("{SECRET}{tail}");
        assert_eq!(
            String::from_utf8(s.scrub(with.as_bytes()).unwrap()).unwrap(),
            format!("[REDACTED]{tail}")
        );
    }
}

#[test]
fn scrubbing_is_linear() {
    // A large body of near-misses and escapes: bounded work per byte.
    let s = Scrubber::new(&Secret::from(SECRET.to_owned()), false);
    let mut body = String::new();
    while body.len() < 4 << 20 {
        body.push_str(&SECRET[..SECRET.len() - 1]);
        body.push_str("%25%2\\u00\\\\");
    }
    let started = std::time::Instant::now();
    assert!(s.scrub(body.as_bytes()).is_none());
    // Generous: a few hundred ms in a debug build on a loaded 2-core box.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn debug_does_not_print_the_secret() {
    let s = Scrubber::new(&Secret::from(SECRET.to_owned()), true);
    let shown = format!("{s:?}");
    assert!(
        shown.starts_with("Scrubber(") && !shown.contains("tok"),
        "{shown}"
    );
}

// The tests from before the automaton, unchanged.

#[test]
fn removes_the_form_the_query_scheme_sends() {
    use crate::vendor::QUERY_VALUE;
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

#[test]
fn escapes_that_start_mid_secret_and_deeper_rounds_mid_text() {
    // The first escape (and the first double escape) come after part of
    // the secret has already gone by: the rounds pick up where the text is.
    check(
        "x tok-en.with_unreserved~and%2Freserved+chars 42 y",
        "x [REDACTED] y",
    );
    check(
        "x tok-en.with_unreserved~and%252Freserved%2Bchars%2042 y",
        "x [REDACTED] y",
    );
    let long = "z".repeat(3 * CHUNK + 7);
    check(
        &format!("{long}%41 tok-en.with_unreserved~and%25252Freserved+chars 42{long}"),
        &format!("{long}%41 [REDACTED]{long}"),
    );
}

#[test]
fn more_forms_than_one_table_word_holds() {
    // Eleven secrets of up to 14 forms each: the table's bits span
    // more than one word.
    let others: Vec<Secret> = (0..10)
        .map(|i| Secret::from(format!("other-canary-{i}-0123456789")))
        .collect();
    let s = Scrubber::with_others(&Secret::from(SECRET.to_owned()), false, &others);
    assert!(s.forms.forms.len() > 64, "{}", s.forms.forms.len());
    for i in 0..10 {
        let other = format!("other-canary-{i}-0123456789");
        for form in [
            other.clone(),
            STANDARD.encode(format!("x{other}")),
            hex_lower(other.as_bytes()).to_uppercase(),
            pct_all(other.as_bytes(), false),
        ] {
            let text = format!("<{form}>");
            let out = String::from_utf8(s.scrub(text.as_bytes()).expect(&form)).unwrap();
            assert!(
                !out.contains("canary") && out.contains("[REDACTED]"),
                "{form} -> {out}"
            );
        }
    }
}

#[test]
fn a_secret_that_repeats_itself_in_a_text_that_does_too() {
    // The compare's worst case: every byte ends a form and nearly matches.
    let secret = "a".repeat(40);
    let s = Scrubber::new(&Secret::from(secret.clone()), false);
    let mut text = "a".repeat(39);
    text.push('b');
    let body = text.repeat(20_000);
    assert!(s.scrub(body.as_bytes()).is_none());
    let out = String::from_utf8(s.scrub(format!("{body}{secret}").as_bytes()).unwrap()).unwrap();
    assert!(out.ends_with("b[REDACTED]"), "{}", &out[out.len() - 20..]);
}
