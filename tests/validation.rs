//! Every validation rule: INVALID_ARGUMENT, a stable reason, a message that
//! names the field — and nothing reaches the vendor.

mod support;

use support::{Valet, bearer, get, reason, vendor};
use valet::config::AuthConfig;
use valet::proto::{CallRequest, Header, Operation};
use valet_testkit::MockVendor;

fn with_header(name: &str, value: &str) -> impl Fn(&mut CallRequest) + use<> {
    let (name, value) = (name.to_owned(), value.to_owned());
    move |r: &mut CallRequest| {
        r.headers.push(Header {
            name: name.clone(),
            value: value.clone(),
        })
    }
}

fn path(p: &str) -> impl Fn(&mut CallRequest) + use<> {
    let p = p.to_owned();
    move |r: &mut CallRequest| r.path = p.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_is_enforced_before_the_vendor() {
    let mock = MockVendor::start().await;
    let valet = Valet::start(vec![
        vendor("mock", &mock.base_url(), bearer()),
        vendor(
            "hdr",
            &mock.base_url(),
            AuthConfig::Header {
                name: "X-Api-Key".into(),
            },
        ),
        vendor(
            "qry",
            &mock.base_url(),
            AuthConfig::Query {
                name: "api_key".into(),
            },
        ),
    ])
    .await;
    for v in ["mock", "hdr", "qry"] {
        valet
            .put_credential("acme", v, "secret-value-for-validation")
            .await;
    }
    let key = valet
        .api_key(&["acme"], &["*"], &[Operation::Read, Operation::Write])
        .await;

    type Mutation = Box<dyn Fn(&mut CallRequest)>;
    let cases: Vec<(&str, Mutation, &str, &str)> = vec![
        (
            "empty tenant",
            Box::new(|r| r.tenant.clear()),
            "TENANT_INVALID",
            "tenant",
        ),
        (
            "tenant with slash",
            Box::new(|r| r.tenant = "acme/../x".into()),
            "TENANT_INVALID",
            "tenant",
        ),
        (
            "unknown vendor",
            Box::new(|r| r.vendor = "nope".into()),
            "VENDOR_UNKNOWN",
            "vendor",
        ),
        (
            "no operation",
            Box::new(|r| r.operation = 0),
            "OPERATION_REQUIRED",
            "operation",
        ),
        (
            "bad operation",
            Box::new(|r| r.operation = 9),
            "OPERATION_REQUIRED",
            "operation",
        ),
        (
            "lower-case method",
            Box::new(|r| r.method = "get".into()),
            "METHOD_INVALID",
            "method",
        ),
        (
            "TRACE",
            Box::new(|r| r.method = "TRACE".into()),
            "METHOD_INVALID",
            "method",
        ),
        (
            "CONNECT",
            Box::new(|r| r.method = "CONNECT".into()),
            "METHOD_INVALID",
            "method",
        ),
        (
            "DELETE as READ",
            Box::new(|r| r.method = "DELETE".into()),
            "OPERATION_METHOD_MISMATCH",
            "method",
        ),
        ("empty path", Box::new(path("")), "PATH_REQUIRED", "path"),
        (
            "absolute URL",
            Box::new(path("https://evil.example/x")),
            "PATH_NOT_RELATIVE",
            "path",
        ),
        (
            "scheme-relative",
            Box::new(path("//evil.example/x")),
            "PATH_NOT_RELATIVE",
            "path",
        ),
        (
            "scheme:",
            Box::new(path("javascript:alert(1)")),
            "PATH_NOT_RELATIVE",
            "path",
        ),
        (
            "userinfo",
            Box::new(path("@evil.example/x")),
            "PATH_NOT_RELATIVE",
            "path",
        ),
        (
            "backslash",
            Box::new(path("/\\evil.example")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "dot-dot",
            Box::new(path("/v1/../admin")),
            "PATH_TRAVERSAL",
            "path",
        ),
        (
            "encoded dot-dot",
            Box::new(path("/v1/%2e%2e/admin")),
            "PATH_TRAVERSAL",
            "path",
        ),
        (
            "double-encoded",
            Box::new(path("/v1/%252E%252E/admin")),
            "PATH_TRAVERSAL",
            "path",
        ),
        (
            "encoded slash dot-dot",
            Box::new(path("/v1/..%2Fadmin")),
            "PATH_TRAVERSAL",
            "path",
        ),
        ("dot", Box::new(path("/v1/./x")), "PATH_TRAVERSAL", "path"),
        (
            "empty segment",
            Box::new(path("/v1//x")),
            "PATH_NOT_NORMALISED",
            "path",
        ),
        (
            "control char",
            Box::new(path("/v1/\u{0}x")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "newline",
            Box::new(path("/v1/x\r\nHost: evil")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "space",
            Box::new(path("/v1/a b")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        ("fragment", Box::new(path("/v1/x#frag")), "PATH_FRAGMENT", "path"),
        (
            "bad percent",
            Box::new(path("/v1/%zz")),
            "PATH_INVALID_ENCODING",
            "path",
        ),
        (
            "too long",
            Box::new(path(&format!("/{}", "a".repeat(9000)))),
            "PATH_TOO_LONG",
            "path",
        ),
        (
            "authorization",
            Box::new(with_header("Authorization", "Bearer mine")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "proxy-authorization",
            Box::new(with_header("Proxy-Authorization", "x")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "cookie",
            Box::new(with_header("Cookie", "a=b")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "host",
            Box::new(with_header("Host", "evil.example")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "forwarded",
            Box::new(with_header("Forwarded", "for=1.2.3.4")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "x-forwarded-for",
            Box::new(with_header("X-Forwarded-For", "1.2.3.4")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "x-forwarded-host",
            Box::new(with_header("X-Forwarded-Host", "evil")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "connection",
            Box::new(with_header("Connection", "close")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "upgrade",
            Box::new(with_header("Upgrade", "websocket")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "te",
            Box::new(with_header("TE", "trailers")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "transfer-encoding",
            Box::new(with_header("Transfer-Encoding", "chunked")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "content-length",
            Box::new(with_header("Content-Length", "5")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "bad header name",
            Box::new(with_header("bad name", "v")),
            "HEADER_NAME_INVALID",
            "headers[0]",
        ),
        (
            "header CRLF",
            Box::new(with_header("x-a", "v\r\nx-b: c")),
            "HEADER_VALUE_INVALID",
            "headers[0]",
        ),
        (
            "too many headers",
            Box::new(|r: &mut CallRequest| {
                for i in 0..65 {
                    r.headers.push(Header {
                        name: format!("x-h{i}"),
                        value: "v".into(),
                    });
                }
            }),
            "HEADERS_TOO_LARGE",
            "headers",
        ),
        (
            "huge header",
            Box::new(with_header("x-big", &"v".repeat(20_000))),
            "HEADERS_TOO_LARGE",
            "headers",
        ),
        (
            "body too large",
            Box::new(|r| r.body = vec![0; (1 << 20) + 1]),
            "BODY_TOO_LARGE",
            "body",
        ),
        (
            "no reason",
            Box::new(|r| r.reason.clear()),
            "REASON_REQUIRED",
            "reason",
        ),
        (
            "blank reason",
            Box::new(|r| r.reason = "   ".into()),
            "REASON_REQUIRED",
            "reason",
        ),
        (
            "reason with newline",
            Box::new(|r| r.reason = "a\nb".into()),
            "REASON_INVALID",
            "reason",
        ),
        (
            "long reason",
            Box::new(|r| r.reason = "r".repeat(257)),
            "REASON_INVALID",
            "reason",
        ),
        (
            "vendor's own header",
            Box::new(|r: &mut CallRequest| {
                r.vendor = "hdr".into();
                r.headers.push(Header {
                    name: "x-api-key".into(),
                    value: "mine".into(),
                });
            }),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "vendor's own query parameter",
            Box::new(|r: &mut CallRequest| {
                r.vendor = "qry".into();
                r.path = "/search?q=1&API_KEY=mine".into();
            }),
            "QUERY_PARAM_FORBIDDEN",
            "path",
        ),
        (
            "NUL after dot-dot",
            Box::new(path("/v1/..%00/x")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "encoded backslash",
            Box::new(path("/v1/a%5cevil.example")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "double-encoded backslash",
            Box::new(path("/v1/a%255Cb")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "encoded CRLF",
            Box::new(path("/v1/a%0D%0AHost:%20evil")),
            "PATH_INVALID_CHARACTER",
            "path",
        ),
        (
            "credential header spelled with underscores",
            Box::new(|r: &mut CallRequest| {
                r.vendor = "hdr".into();
                r.headers.push(Header {
                    name: "x_api_key".into(),
                    value: "evil".into(),
                });
            }),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
        (
            "x_forwarded_for",
            Box::new(with_header("x_forwarded_for", "1.2.3.4")),
            "HEADER_FORBIDDEN",
            "headers[0]",
        ),
    ];
    let mut cases = cases;
    // Query names a lenient server reads as the credential parameter.
    for q in [
        "api_key%00=evil",
        "api_key[]=evil",
        "api_key.=evil",
        "api_key%5B%5D=evil",
        "Api-Key=evil",
    ] {
        let q = format!("/search?q=1&{q}");
        cases.push((
            "credential parameter in disguise",
            Box::new(move |r: &mut CallRequest| {
                r.vendor = "qry".into();
                r.path = q.clone();
            }),
            "QUERY_PARAM_FORBIDDEN",
            "path",
        ));
    }

    for (name, mutate, want_reason, field) in cases {
        let mut req = get("acme", "mock", "/v1/ok");
        mutate(&mut req);
        let err = valet.call(&key, req).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert_eq!(reason(&err), want_reason, "{name}: {}", err.message());
        assert!(
            err.message().starts_with(field),
            "{name}: message should name {field}: {}",
            err.message()
        );
        assert!(!err.message().contains("127.0.0.1"), "{name}: leaks an address");
    }
    // Every other header a caller may not set: credentials, hop-by-hop and
    // framing headers, and method or URL overrides (a READ GET must not act
    // as a DELETE).
    for name in [
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
        "X-Original-URL",
        "X-Rewrite-URL",
        "Content-Encoding",
        "Keep-Alive",
        "Trailer",
        "Proxy-Connection",
        "Accept-Encoding",
        "Expect",
        "Via",
        "X-Real-IP",
    ] {
        let mut req = get("acme", "mock", "/v1/ok");
        with_header(name, "x")(&mut req);
        let err = valet.call(&key, req).await.expect_err(name);
        assert_eq!(reason(&err), "HEADER_FORBIDDEN", "{name}");
        assert!(
            err.message().starts_with("headers[0]"),
            "{name}: {}",
            err.message()
        );
    }
    let mut req = get("acme", "mock", "/v1/ok");
    with_header("x-a", "caf\u{e9}")(&mut req);
    let err = valet.call(&key, req).await.unwrap_err();
    assert_eq!(reason(&err), "HEADER_VALUE_INVALID");

    assert!(mock.requests().is_empty(), "a refused call reached the vendor");

    // And the same request without the mutation goes through.
    let ok = valet.call(&key, get("acme", "mock", "/v1/ok")).await.unwrap();
    assert_eq!(ok.status, 200);
}

/// A `resolve_to` literal is checked when the config is read, like a literal
/// `base_url`: `valet config check` refuses it, naming the vendor and the
/// field, unless the vendor allows private addresses.
#[test]
fn config_check_refuses_a_forbidden_resolve_to_address() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let check = |body: &str| {
        let path = dir.path().join("valet.toml");
        std::fs::write(&path, body).unwrap();
        let out = Command::new(support::valet_bin())
            .args(["config", "check", "--config", path.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let entry = |resolve_to: &str, extra: &str| {
        format!(
            "[[vendors]]\nname = \"meta\"\nbase_url = \"https://meta.example\"\nauth = {{ scheme = \"bearer\" }}\nresolve_to = {resolve_to}\n{extra}"
        )
    };
    for (list, class) in [
        ("[\"169.254.169.254\"]", "link-local"),
        ("[\"93.184.216.34\", \"10.0.0.1\"]", "private"),
        ("[\"::ffff:169.254.169.254\"]", "ipv4-embedded"),
        ("[\"127.0.0.1\"]", "loopback"),
    ] {
        let (code, stderr) = check(&entry(list, ""));
        assert_eq!(code, Some(64), "{list}: {stderr}");
        assert!(stderr.contains("vendors[0].resolve_to"), "{list}: {stderr}");
        assert!(stderr.contains("'meta'"), "{list}: {stderr}");
        assert!(stderr.to_lowercase().contains(class), "{list}: {stderr}");
    }
    let (code, stderr) = check(&entry(
        "[\"169.254.169.254\"]",
        "allow_private_addresses = true\n",
    ));
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stderr) = check(&entry("[\"93.184.216.34\"]", ""));
    assert_eq!(code, Some(0), "{stderr}");
}
