//! A vendor that echoes the credential back — in headers and body, plain,
//! in any form the README lists under "scrub" — never gets it to the caller.

mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use support::{Valet, bearer, get, vendor};
use valet::config::AuthConfig;
use valet::proto::{CallResponse, Operation};
use valet_testkit::{MockVendor, Scripted, leak};

async fn echo_through(auth: AuthConfig, secret: &str) -> (MockVendor, CallResponse) {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), auth)]).await;
    valet.put_credential("acme", "mock", secret).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    // Unscripted paths echo the whole request, headers and query included.
    let resp = valet
        .call(&key, get("acme", "mock", "/debug/echo?x=1"))
        .await
        .unwrap();
    (mock, resp)
}

fn everything(resp: &CallResponse) -> Vec<u8> {
    let mut all = resp.body.clone();
    for h in &resp.headers {
        all.extend_from_slice(h.name.as_bytes());
        all.extend_from_slice(h.value.as_bytes());
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_bearer_token_is_scrubbed() {
    let canary = valet_testkit::canary("bearer");
    let (mock, resp) = echo_through(bearer(), &canary).await;
    // The vendor did get it...
    assert_eq!(
        mock.requests()[0].header("authorization"),
        Some(format!("Bearer {canary}").as_str())
    );
    // ...and the caller did not, though the echo is otherwise intact.
    assert_eq!(leak::forms_found(&everything(&resp), &canary), Vec::<&str>::new());
    let body = String::from_utf8(resp.body.clone()).unwrap();
    assert!(body.contains("Bearer [REDACTED]"), "{body}");
    // The length header describes the body the caller got, not the vendor's.
    let len = resp
        .headers
        .iter()
        .find(|h| h.name == "content-length")
        .map(|h| h.value.clone());
    assert_eq!(len, Some(resp.body.len().to_string()));
    assert!(
        resp.headers
            .iter()
            .any(|h| h.name == "x-echo-authorization" && h.value == "Bearer [REDACTED]")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_basic_credential_is_scrubbed_in_base64_too() {
    let canary = valet_testkit::canary("basic");
    let secret = format!("svc-user:{canary}");
    let (_mock, resp) = echo_through(AuthConfig::Basic {}, &secret).await;
    let all = everything(&resp);
    assert_eq!(leak::forms_found(&all, &canary), Vec::<&str>::new());
    assert_eq!(leak::forms_found(&all, &secret), Vec::<&str>::new());
    let b64 = STANDARD.encode(&secret);
    assert!(!String::from_utf8_lossy(&all).contains(&b64));
    // The echo did come back, with the header's value redacted.
    let body = String::from_utf8_lossy(&resp.body);
    assert!(body.contains("Basic [REDACTED]"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_query_credential_is_scrubbed_percent_encoded() {
    let canary = format!("{}/+&=", valet_testkit::canary("query"));
    let (mock, resp) = echo_through(
        AuthConfig::Query {
            name: "api_key".into(),
        },
        &canary,
    )
    .await;
    // The vendor got it percent-encoded in the query...
    let sent = &mock.requests()[0].path_and_query;
    assert!(
        sent.contains("&api_key=CANARY-query-") && sent.ends_with("%2F%2B%26%3D"),
        "{sent}"
    );
    let all = String::from_utf8_lossy(&everything(&resp)).into_owned();
    assert!(!all.contains("CANARY"), "{all}");
    assert!(all.contains("api_key=[REDACTED]"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_leak_in_a_response_header_is_scrubbed() {
    let canary = valet_testkit::canary("header");
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let pct = utf8_percent_encode(&canary, NON_ALPHANUMERIC).to_string();
    mock.script(
        "/oops",
        Scripted::status(401)
            .header(
                "www-authenticate",
                &format!("Bearer error=\"invalid_token\" token=\"{canary}\""),
            )
            .header("x-debug", &pct)
            .body(format!("{{\"token\":\"{}\"}}", STANDARD.encode(&canary))),
    );
    let resp = valet.call(&key, get("acme", "mock", "/oops")).await.unwrap();
    assert_eq!(resp.status, 401);
    let www = resp
        .headers
        .iter()
        .find(|h| h.name == "www-authenticate")
        .map(|h| h.value.as_str());
    assert_eq!(www, Some("Bearer error=\"invalid_token\" token=\"[REDACTED]\""));
    assert_eq!(resp.body, br#"{"token":"[REDACTED]"}"#);
    assert_eq!(leak::forms_found(&everything(&resp), &canary), Vec::<&str>::new());
}

/// Every form the README lists, in headers (a redirect's `Location`
/// included) and the body, comes back redacted — and the leak scanner, which
/// checks exactly that list, finds none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_form_is_scrubbed() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let canary = format!("{}/+~", valet_testkit::canary("forms"));
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![vendor("mock", &mock.base_url(), bearer())]).await;
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;

    let c = canary.as_bytes();
    let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
    let pct_lower: String = c.iter().map(|b| format!("%{b:02x}")).collect();
    let pct_upper: String = c.iter().map(|b| format!("%{b:02X}")).collect();
    let partial: String = c
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if i % 3 == 0 {
                format!("%{b:02X}")
            } else {
                (*b as char).to_string()
            }
        })
        .collect();
    let json_u: String = canary.chars().map(|ch| format!("\\u{:04x}", ch as u32)).collect();
    // Base64 of a larger plaintext, the secret at each alignment.
    let bearer_b64 = URL_SAFE_NO_PAD.encode(format!("Bearer {canary}"));
    let object_b64 = STANDARD.encode(format!("{{\"token\":\"{canary}\"}}"));
    let third_b64 = URL_SAFE.encode(format!("ab{canary}!"));
    let aligned_b64 = STANDARD_NO_PAD.encode(&canary);
    let body = format!(
        "{{\"a\":\"{object_b64}\",\"b\":\"{aligned_b64}\",\"c\":\"{}\",\"d\":\"{json_u}\",\"e\":\"{partial}\",\"f\":\"{}\"}}",
        hex.to_uppercase(),
        pct_upper.replace('%', "%25"),
    );
    mock.script(
        "/forms",
        Scripted::status(302)
            .header(
                "location",
                &format!("https://v.example/cb?state={bearer_b64}&x=1"),
            )
            .header("x-third", &third_b64)
            .header("x-hex", &hex)
            .header("x-pct", &pct_lower)
            .body(body),
    );
    let resp = valet.call(&key, get("acme", "mock", "/forms")).await.unwrap();
    assert_eq!(resp.status, 302);
    let all = everything(&resp);
    assert_eq!(leak::forms_found(&all, &canary), Vec::<&str>::new());
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
            .unwrap_or_default()
    };
    let location = header("location");
    assert!(
        location.starts_with("https://v.example/cb?state=")
            && location.contains("[REDACTED]")
            && location.ends_with("&x=1"),
        "{location}"
    );
    for name in ["x-third", "x-hex", "x-pct"] {
        assert!(header(name).contains("[REDACTED]"), "{name}: {}", header(name));
    }
    let body: serde_json::Value = serde_json::from_slice(&resp.body).expect("the body is still JSON");
    for field in ["a", "b", "c", "d", "e", "f"] {
        let value = body[field].as_str().unwrap_or_default();
        assert!(value.contains("[REDACTED]"), "{field}: {value}");
    }
}

/// The scrubber and the leak scanner are written apart; over many texts
/// with the secret in a random documented form at a random place, among
/// noise full of escape characters, the scanner finds nothing in what the
/// scrubber returns.
#[test]
fn the_scanner_finds_nothing_the_scrubber_let_through() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use valet_credentials::Secret;
    use valet_egress::Scrubber;

    let secret = "CANARY-fuzz-7f3a/+~ x=1&y";
    let scrubber = Scrubber::new(&Secret::from(secret.to_owned()), false);
    // A small deterministic generator: the same texts on every run.
    struct Rng(u64);
    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
        fn noise(&mut self, len: usize) -> String {
            const CHARS: &[u8] = b"ab%25\\u00+/=_-\"{}:AZ09 ";
            (0..len).map(|_| CHARS[self.below(CHARS.len())] as char).collect()
        }
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let pct = |bytes: &[u8], every: usize| -> String {
        bytes
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if i % every == 0 {
                    format!("%{b:02X}")
                } else {
                    (*b as char).to_string()
                }
            })
            .collect()
    };
    for round in 0..400 {
        let n = rng.below(6);
        let prefix = rng.noise(n);
        let n = rng.below(6);
        let plain = format!("{prefix}{secret}{}", rng.noise(n));
        let s = secret.as_bytes();
        let form = match rng.below(10) {
            0 => secret.to_owned(),
            1 => STANDARD.encode(&plain),
            2 => URL_SAFE.encode(&plain),
            3 => URL_SAFE_NO_PAD.encode(&plain),
            4 => s.iter().map(|b| format!("{b:02x}")).collect(),
            5 => s.iter().map(|b| format!("{b:02X}")).collect(),
            6 => pct(s, 1 + rng.below(3)),
            7 => pct(pct(s, 1).as_bytes(), 1 + rng.below(2)),
            8 => secret.chars().map(|c| format!("\\u{:04x}", c as u32)).collect(),
            _ => pct(STANDARD_NO_PAD.encode(&plain).as_bytes(), 1 + rng.below(4)),
        };
        let (a, b) = (rng.below(40), rng.below(40));
        let text = format!("{}{form}{}", rng.noise(a), rng.noise(b));
        let out = scrubber
            .scrub(text.as_bytes())
            .unwrap_or_else(|| text.clone().into_bytes());
        assert_eq!(
            leak::forms_found(&out, secret),
            Vec::<&str>::new(),
            "round {round}: {text} -> {}",
            String::from_utf8_lossy(&out)
        );
    }
}
