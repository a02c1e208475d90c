//! Reading the audit log back (`Admin.QueryAudit`, `SummarizeAudit`,
//! `valet admin audit …`) against logs whose content the test knows: a
//! hand-chained log of 10,000 entries an hour apart for paging and time
//! ranges, and a real server's own leases for the CLI. Only keys with the
//! audit_view permission may read, admin keys included; every query is on
//! the record before it runs.

mod support;

use std::path::Path;
use support::{Valet, ValetProcess, admin_cli, authed, reason};
use tonic::Code;
use valet::config::Config;
use valet::proto::{self, AuditFilter, QueryAuditRequest};
use valet_testkit::MockVendor;
use valet_testkit::leak::{files_containing, forms_found};

/// The crafted log: entry `i` (1-based) is written at `T0 + i` hours.
const ENTRIES: u64 = 10_000;
const T0_MS: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;

/// What crafted entry `i` holds: every 100th is an API key revoke by an
/// admin, the rest leases spread over 7 tenants, 3 vendors, 5 reasons and
/// 4 caller keys.
fn crafted(i: u64) -> serde_json::Value {
    if i.is_multiple_of(100) {
        return serde_json::json!({
            "actor": "key_admin:root", "event": "api_key_revoke",
            "key_id": format!("key_{}", i % 4), "name": "svc",
        });
    }
    serde_json::json!({
        "actor": format!("key_{}:svc", i % 4),
        "event": "credential_lease",
        "tenant": format!("t{}", i % 7),
        "vendor": format!("v{}", i % 3),
        "fingerprint": "fp",
        "reason": format!("r{}", i % 5),
        "request_id": format!("req-{i}"),
        "source": format!("10.0.0.{}", i % 2),
    })
}

/// Writes the crafted entries as a chained log, as the writer would.
fn write_log(path: &Path) {
    let mut prev = valet_audit::GENESIS.to_owned();
    let mut text = String::new();
    for i in 1..=ENTRIES {
        let body = crafted(i).to_string();
        let line = format!(
            "{{\"seq\":{i},\"ts_ms\":{},\"prev\":\"{prev}\",{}",
            T0_MS + i * HOUR_MS,
            &body[1..]
        );
        prev = valet_audit::line_hash(line.as_bytes());
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).expect("write the log");
}

fn at(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: 0,
    }
}

/// Starts Valet on a state dir holding the crafted log; returns it and a
/// key with only the audit_view permission.
async fn valet_with_crafted_log() -> (Valet, String) {
    let state = tempfile::tempdir().expect("tempdir");
    let dir = state.path().join("state");
    std::fs::create_dir(&dir).expect("state dir");
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    write_log(&dir.join("audit.log"));
    // Entries from 2023 on: kept whatever their age (retention would
    // otherwise remove the old ones as soon as the first append seals
    // the crafted segment).
    let mut config = Config::default();
    config.audit.retention_days = valet::config::RetentionDays {
        security: 36_500,
        access: 36_500,
        operational: 36_500,
    };
    let valet = Valet::start_with(config, state).await;
    let reader = valet.audit_reader().await;
    (valet, reader)
}

/// Every entry the query returns, in order, paging `page` at a time.
async fn query_all(valet: &Valet, key: &str, filter: AuditFilter, page: u32) -> Vec<proto::AuditEntry> {
    let mut admin = valet.admin().await;
    let mut out: Vec<proto::AuditEntry> = Vec::new();
    loop {
        let req = QueryAuditRequest {
            filter: Some(filter.clone()),
            after_seq: out.last().map_or(0, |e| e.seq),
            limit: page,
            ..Default::default()
        };
        let mut stream = admin
            .query_audit(authed(req, key))
            .await
            .expect("query")
            .into_inner();
        let mut got = 0;
        while let Some(entry) = stream.message().await.expect("entry") {
            out.push(entry);
            got += 1;
        }
        assert!(got <= page, "a page holds at most its limit");
        if got < page {
            return out;
        }
    }
}

fn crafted_seqs(keep: impl Fn(u64, &serde_json::Value) -> bool) -> Vec<u64> {
    (1..=ENTRIES).filter(|i| keep(*i, &crafted(*i))).collect()
}

fn seqs(entries: &[proto::AuditEntry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

#[tokio::test]
async fn every_filter_pages_and_time_ranges_match_the_known_log() {
    let (valet, reader) = valet_with_crafted_log().await;

    // Everything, a thousand at a time: the 10,000 crafted entries first,
    // in order and as written.
    let all = query_all(&valet, &reader, AuditFilter::default(), 1000).await;
    assert_eq!(&seqs(&all)[..ENTRIES as usize], (1..=ENTRIES).collect::<Vec<_>>());
    // The crafted entries are sealed in their own segment by the first
    // append (their first one is years old): read every segment.
    let on_disk: String = valet_audit::segment::files(&valet.audit_log())
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    for (entry, line) in all.iter().zip(on_disk.lines()) {
        assert_eq!(entry.json, line, "an entry is returned exactly as written");
    }
    assert_eq!(all[41].time, Some(at(T0_MS + 42 * HOUR_MS)));
    assert_eq!((all[41].tenant.as_str(), all[41].vendor.as_str()), ("t0", "v0"));

    let tenant = |t: &str| AuditFilter {
        tenant: t.into(),
        ..Default::default()
    };
    let cases: Vec<(&str, AuditFilter, Vec<u64>)> = vec![
        ("tenant", tenant("t3"), crafted_seqs(|_, e| e["tenant"] == "t3")),
        (
            "vendor",
            AuditFilter {
                vendor: "v2".into(),
                ..Default::default()
            },
            crafted_seqs(|_, e| e["vendor"] == "v2"),
        ),
        (
            "actor by key id",
            AuditFilter {
                actor: "key_1".into(),
                ..Default::default()
            },
            crafted_seqs(|_, e| e["actor"] == "key_1:svc"),
        ),
        (
            "kind",
            AuditFilter {
                kinds: vec!["api_key_revoke".into()],
                ..Default::default()
            },
            crafted_seqs(|i, _| i.is_multiple_of(100)),
        ),
        (
            "reason",
            AuditFilter {
                reason: "r4".into(),
                ..Default::default()
            },
            crafted_seqs(|_, e| e["reason"] == "r4"),
        ),
        (
            "request id",
            AuditFilter {
                request_id: "req-4242".into(),
                ..Default::default()
            },
            vec![4242],
        ),
        (
            // Since is inclusive, until exclusive: entries 2,000..2,999.
            "time range",
            AuditFilter {
                since: Some(at(T0_MS + 2000 * HOUR_MS)),
                until: Some(at(T0_MS + 3000 * HOUR_MS)),
                ..Default::default()
            },
            (2000..3000).collect(),
        ),
        (
            "tenant, vendor and range together",
            AuditFilter {
                tenant: "t5".into(),
                vendor: "v1".into(),
                since: Some(at(T0_MS + 5000 * HOUR_MS)),
                ..Default::default()
            },
            crafted_seqs(|i, e| e["tenant"] == "t5" && e["vendor"] == "v1" && i >= 5000),
        ),
    ];
    for (what, filter, want) in cases {
        assert!(!want.is_empty(), "{what}: the case selects something");
        // Pages that do not divide the matches evenly, and one page.
        for page in [97, 10_000] {
            let got = query_all(&valet, &reader, filter.clone(), page).await;
            assert_eq!(seqs(&got), want, "{what}, pages of {page}");
        }
    }

    // The summary counts what the filter matched.
    let summary = valet
        .admin()
        .await
        .summarize_audit(authed(
            proto::SummarizeAuditRequest {
                filter: Some(tenant("t3")),
                ..Default::default()
            },
            &reader,
        ))
        .await
        .expect("summary")
        .into_inner();
    let want = crafted_seqs(|_, e| e["tenant"] == "t3");
    assert_eq!(summary.entries, want.len() as u64);
    assert_eq!(summary.first, Some(at(T0_MS + want[0] * HOUR_MS)));
    assert_eq!(summary.last, Some(at(T0_MS + want.last().unwrap() * HOUR_MS)));
    assert_eq!(summary.caller_keys, 4);
    let sources: u64 = summary.by_source.iter().map(|c| c.count).sum();
    assert_eq!(sources, want.len() as u64);
    let r0 = summary.by_reason.iter().find(|c| c.name == "r0").expect("r0");
    assert_eq!(
        r0.count,
        crafted_seqs(|_, e| e["tenant"] == "t3" && e["reason"] == "r0").len() as u64
    );
    assert!(summary.examined > ENTRIES);

    // Each query and summary above was recorded before it ran: 1 + 11
    // pages for everything, 2 paged runs per case, 1 summary; and this one.
    let queries = query_all(
        &valet,
        &reader,
        AuditFilter {
            kinds: vec!["audit_query".into()],
            ..Default::default()
        },
        10_000,
    )
    .await;
    let pages_of_97: usize = [
        crafted_seqs(|_, e| e["tenant"] == "t3").len(),
        crafted_seqs(|_, e| e["vendor"] == "v2").len(),
        crafted_seqs(|_, e| e["actor"] == "key_1:svc").len(),
        100,
        crafted_seqs(|_, e| e["reason"] == "r4").len(),
        1,
        1000,
        crafted_seqs(|i, e| e["tenant"] == "t5" && e["vendor"] == "v1" && i >= 5000).len(),
    ]
    .iter()
    .map(|n| n / 97 + 1)
    .sum();
    let first_listing = all.iter().filter(|e| e.kind == "audit_query").count();
    assert!(first_listing >= 1, "the first listing sees its own record");
    let everything_pages = (all.len() / 1000) + 1;
    assert_eq!(queries.len(), everything_pages + pages_of_97 + 8 + 1 + 1);
    let last: serde_json::Value = serde_json::from_str(&queries.last().unwrap().json).unwrap();
    assert_eq!(last["filter"]["kinds"][0], "audit_query");
    assert!(last["actor"].as_str().unwrap().ends_with(":ops-audit"));
    assert_eq!(
        valet_audit::verify(&valet.audit_log()).expect("chain intact") as usize,
        all.len() + queries.len() - first_listing
    );
}

#[tokio::test]
async fn only_audit_view_reads_and_bad_filters_are_refused_by_name() {
    let (valet, reader) = valet_with_crafted_log().await;
    let mut admin = valet.admin().await;
    let ask = |key: &str, filter: AuditFilter, limit: u32| {
        let req = QueryAuditRequest {
            filter: Some(filter),
            after_seq: 0,
            limit,
            ..Default::default()
        };
        authed(req, key)
    };

    // The bootstrap admin key manages everything but may not read the log.
    let err = admin
        .query_audit(ask(&valet.admin_key, AuditFilter::default(), 1))
        .await
        .expect_err("admin key");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::PermissionDenied, "PERMISSION_REQUIRED")
    );
    assert!(err.message().contains("audit_view"), "{}", err.message());
    let err = admin
        .summarize_audit(authed(proto::SummarizeAuditRequest::default(), &valet.admin_key))
        .await
        .expect_err("admin key");
    assert_eq!(err.code(), Code::PermissionDenied);
    let gateway_key = valet.api_key(&["t1"], &["*"], &[proto::Operation::Read]).await;
    let err = admin
        .query_audit(ask(&gateway_key, AuditFilter::default(), 1))
        .await
        .expect_err("gateway key");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = admin
        .query_audit(ask("vk_not-a-key", AuditFilter::default(), 1))
        .await
        .expect_err("no key");
    assert_eq!(err.code(), Code::Unauthenticated);

    // Refused queries read nothing and leave no audit_query behind; each
    // refusal of a key is on the record, the keyless one is not.
    let log = std::fs::read_to_string(valet.audit_log()).unwrap();
    assert!(!log.contains("\"audit_query\""));
    let denied: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == "access_denied")
        .collect();
    assert_eq!(denied.len(), 3, "{denied:?}");
    for entry in &denied {
        assert_eq!(entry["asked"], "audit_view");
        assert_eq!(entry["refused"], "PERMISSION_REQUIRED");
        assert_eq!(entry["source"], "127.0.0.1");
    }
    assert!(denied[0]["actor"].as_str().unwrap().ends_with(":bootstrap-admin"));
    assert!(denied[2]["actor"].as_str().unwrap().ends_with(":test-caller"));

    let refusals = [
        (
            AuditFilter {
                kinds: vec!["credential_leese".into()],
                ..Default::default()
            },
            1,
            "AUDIT_KIND_UNKNOWN",
        ),
        (
            AuditFilter {
                since: Some(at(T0_MS + 10 * HOUR_MS)),
                until: Some(at(T0_MS + 10 * HOUR_MS)),
                ..Default::default()
            },
            1,
            "AUDIT_RANGE_INVALID",
        ),
        (
            AuditFilter {
                since: Some(prost_types::Timestamp {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            1,
            "AUDIT_RANGE_INVALID",
        ),
        (AuditFilter::default(), 10_001, "AUDIT_LIMIT_INVALID"),
    ];
    for (filter, limit, want) in refusals {
        let err = admin
            .query_audit(ask(&reader, filter, limit))
            .await
            .expect_err(want);
        assert_eq!((err.code(), reason(&err).as_str()), (Code::InvalidArgument, want));
    }
    let err = admin
        .query_audit(ask(
            &reader,
            AuditFilter {
                kinds: vec!["nope".into()],
                ..Default::default()
            },
            1,
        ))
        .await
        .expect_err("unknown kind");
    assert!(
        err.message().contains("credential_lease"),
        "names the kinds: {}",
        err.message()
    );
}

fn mock_body(mock: &MockVendor) -> String {
    format!(
        "[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        mock.base_url()
    )
}

#[tokio::test]
async fn the_cli_lists_and_summarises_a_tenants_leases_without_the_secret() {
    let mock = MockVendor::start().await;
    let valet = ValetProcess::spawn(&mock_body(&mock)).await;
    let canary = valet_testkit::canary("audit-query");
    let key = valet.acme_mock_caller(&canary, "read").await;
    let mut gateway = valet.gateway().await;
    for n in 0..3 {
        let mut req = support::get("acme", "mock", "/v1/things");
        req.reason = format!("ticket-{}", n % 2);
        gateway.call(authed(req, &key)).await.expect("call");
    }
    let created = valet
        .admin(
            &[
                "apikey",
                "create",
                "--name",
                "ops-audit",
                "--permission",
                "audit-view",
            ],
            "",
        )
        .await;
    let reader_file = valet.state.join("../ops-audit.key");
    // The key's creation names its permission as everywhere else.
    let log = std::fs::read_to_string(valet.state.join("audit.log")).unwrap();
    let creation = log
        .lines()
        .find(|l| l.contains("\"name\":\"ops-audit\""))
        .expect("api_key_create");
    assert!(
        creation.contains("\"permissions\":[\"audit_view\"]"),
        "{creation}"
    );
    std::fs::write(&reader_file, created.trim()).unwrap();
    let cli = |args: Vec<&'static str>| {
        let (url, file) = (valet.admin_url.clone(), reader_file.clone());
        async move { admin_cli(&url, &file, &args, "").await }
    };

    let listed = cli(vec![
        "audit",
        "query",
        "--tenant",
        "acme",
        "--kind",
        "credential_lease",
        "--since",
        "1h",
    ])
    .await;
    assert!(
        listed.status.success(),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json lines when not a terminal"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["tenant"] == "acme" && l["source"] == "127.0.0.1")
    );
    assert_eq!(lines[1]["reason"], "ticket-1");

    let table = cli(vec![
        "audit",
        "query",
        "--tenant",
        "acme",
        "--kind",
        "credential_lease",
        "--output",
        "table",
        "--limit",
        "2",
    ])
    .await;
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success());
    assert_eq!(
        text.lines().filter(|l| l.contains("credential_lease")).count(),
        2,
        "{text}"
    );
    assert!(String::from_utf8_lossy(&table.stderr).contains("--after"));

    let summary = cli(vec![
        "audit", "summary", "--tenant", "acme", "--since", "7d", "--output", "table",
    ])
    .await;
    let text = String::from_utf8_lossy(&summary.stdout).into_owned();
    assert!(
        summary.status.success(),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    // The put and the three leases, by the admin key and the caller's.
    assert!(text.starts_with("4 entries"), "{text}");
    for needle in [
        "3  credential_lease",
        "1  credential_put",
        "2  ticket-0",
        "3  127.0.0.1",
        "distinct caller keys: 2",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
    // Not on a terminal, the summary is one JSON object.
    let json = cli(vec!["audit", "summary", "--tenant", "acme"]).await;
    let object: serde_json::Value = serde_json::from_slice(&json.stdout).expect("a JSON summary");
    assert_eq!(object["entries"], 4);
    assert_eq!(object["by_kind"]["credential_lease"], 3);
    assert_eq!(object["by_source"]["127.0.0.1"], 3);
    assert_eq!(object["caller_keys"], 2);

    // The admin key is told what it lacks; a bad --since is refused locally.
    let denied = admin_cli(&valet.admin_url, &valet.key_file, &["audit", "summary"], "").await;
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("audit_view"));
    let bad = cli(vec!["audit", "query", "--since", "yesterday"]).await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("2026-12-01T09:00:00Z"));

    // A key used beyond its grant, and from outside its networks: both on
    // the record, found by tenant and kind.
    let mut other = support::get("globex", "mock", "/v1/things");
    other.reason = "probe".into();
    let err = gateway
        .call(authed(other, &key))
        .await
        .expect_err("not its tenant");
    assert_eq!(reason(&err), "TENANT_NOT_ALLOWED");
    let probe_id = err
        .metadata()
        .get("x-request-id")
        .expect("request id")
        .to_str()
        .unwrap()
        .to_owned();
    let bound = valet
        .admin(
            &[
                "apikey",
                "create",
                "--name",
                "bound",
                "--tenant",
                "acme",
                "--vendor",
                "mock",
                "--operation",
                "read",
                "--allow-cidr",
                "10.0.0.0/8",
            ],
            "",
        )
        .await;
    let req = support::get("acme", "mock", "/v1/things");
    let err = gateway
        .call(authed(req, bound.trim()))
        .await
        .expect_err("outside its networks");
    assert_eq!(reason(&err), "SOURCE_NOT_ALLOWED");
    let listed = cli(vec!["audit", "query", "--kind", "access_denied"]).await;
    let denied: Vec<serde_json::Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        denied.len(),
        3,
        "the admin key's summary, then these two: {denied:?}"
    );
    let probe = &denied[1];
    assert_eq!(
        (probe["tenant"].as_str(), probe["vendor"].as_str()),
        (Some("globex"), Some("mock"))
    );
    assert_eq!(
        (probe["asked"].as_str(), probe["refused"].as_str()),
        (Some("read"), Some("TENANT_NOT_ALLOWED"))
    );
    assert_eq!(probe["request_id"], probe_id.as_str());
    assert!(probe["actor"].as_str().unwrap().ends_with(":caller"));
    let outside = &denied[2];
    assert_eq!(
        (outside["asked"].as_str(), outside["refused"].as_str()),
        (Some("use"), Some("SOURCE_NOT_ALLOWED"))
    );
    assert_eq!(outside["source"], "127.0.0.1");
    assert!(outside["actor"].as_str().unwrap().ends_with(":bound"));
    let by_tenant = cli(vec!["audit", "query", "--tenant", "globex"]).await;
    assert_eq!(String::from_utf8_lossy(&by_tenant.stdout).lines().count(), 1);

    let exited = valet.terminate().await;
    for (what, bytes) in [
        ("query", &listed.stdout),
        ("table", &table.stdout),
        ("summary", &summary.stdout),
        ("stdout", &exited.stdout),
        ("stderr", &exited.stderr),
    ] {
        assert_eq!(
            forms_found(bytes, &canary),
            Vec::<&str>::new(),
            "canary in {what}"
        );
    }
    assert_eq!(files_containing(&exited.state_dir(), &canary), vec![]);
}

/// From outside: Python's grpcio with hand-encoded protobuf (no generated
/// stubs), streaming a page and hanging up half-way through another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_streams_a_query_and_can_hang_up() {
    let ready = std::process::Command::new("python3")
        .args(["-c", "import grpc"])
        .output();
    if !ready.is_ok_and(|o| o.status.success()) {
        println!("skipped: needs python3 with grpcio (pip install -r examples/python/requirements.txt)");
        return;
    }
    let (valet, reader) = valet_with_crafted_log().await;
    let script = r#"
import grpc, json, sys

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, wire, payload):
    return varint(num << 3 | wire) + payload

def text(num, s):
    b = s.encode()
    return field(num, 2, varint(len(b)) + b)

def decode(buf):
    i, out = 0, {}
    while i < len(buf):
        key, i = read_varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, i = read_varint(buf, i)
        elif wire == 2:
            n, i = read_varint(buf, i)
            value, i = buf[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wire)
        out[num] = value
    return out

def read_varint(buf, i):
    shift = n = 0
    while True:
        b = buf[i]; i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i

addr, key = sys.argv[1], sys.argv[2]
channel = grpc.insecure_channel(addr)
query = channel.unary_stream("/valet.v1.Admin/QueryAudit")
meta = [("authorization", "Bearer " + key)]
# filter { tenant: "t3" }, limit: 50
request = field(1, 2, varint(len(text(1, "t3"))) + text(1, "t3")) + field(3, 0, varint(50))
seqs = []
for raw in query(request, metadata=meta, timeout=30):
    entry = decode(raw)
    line = json.loads(entry[7])
    assert line["tenant"] == "t3", line
    seqs.append(entry[1])
# Hang up after 5 entries of an unbounded listing.
stream = query(field(3, 0, varint(10000)), metadata=meta, timeout=30)
got = 0
for raw in stream:
    got += 1
    if got == 5:
        stream.cancel()
        break
print(json.dumps({"seqs": seqs, "before_hang_up": got}))
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &valet.admin_addr.to_string(), &reader])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<u64> = crafted_seqs(|_, e| e["tenant"] == "t3")
        .into_iter()
        .take(50)
        .collect();
    assert_eq!(got["seqs"], serde_json::json!(want));
    assert_eq!(got["before_hang_up"], 5);
    // The server is fine after the hang-up: the next query answers in full.
    let again = query_all(&valet, &reader, AuditFilter::default(), 10_000).await;
    assert!(again.len() as u64 > ENTRIES);
}
