//! The audit log off the box (`[audit] ship`): every durable entry reaches a
//! real Redis stream, identical and in order; a hung Redis, and one
//! restarted empty, lose nothing (the backlog ships when it answers);
//! `when_behind = "refuse"` refuses calls past the limit and resumes once
//! drained; `valet audit verify --anchor` finds a cut tail, an edited last
//! line and a log rewritten with fresh hashes; the fleet query reads the
//! copy. The canary credential is in no stream entry.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::{Valet, authed, bearer, get, reason, valet_bin, vendor};
use tonic::Code;
use valet::config::{Config, ShipConfig};
use valet::proto::{self, AuditFilter, QueryAuditRequest};
use valet_audit::segment::log_id;
use valet_audit::ship::{STREAM_KEY, Shipper, WhenBehind, head_key};
use valet_testkit::leak::forms_found;
use valet_testkit::{MockVendor, RedisServer};

/// How long any awaited condition may take before the test fails.
const PATIENCE: Duration = Duration::from_secs(30);

async fn start(mock: &MockVendor, redis: &RedisServer, when_behind: WhenBehind, limit: u64) -> Valet {
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.audit.ship = Some(ShipConfig {
        redis_url: Some(redis.url()),
        behind_limit: limit,
        when_behind,
        max_stream_entries: 0,
    });
    Valet::start_with(config, tempfile::tempdir().unwrap()).await
}

fn shipper(valet: &Valet) -> Shipper {
    let app = valet.app.upgrade().expect("running");
    app.audit_ship.clone().expect("shipping configured")
}

/// Waits until Redis holds every entry the local log has made durable.
async fn all_shipped(valet: &Valet) -> u64 {
    let entries = valet_audit::verify(&valet.audit_log()).expect("chain");
    let shipper = shipper(valet);
    let done = tokio::time::timeout(PATIENCE, shipper.wait_for(|s| s.shipped >= entries)).await;
    assert!(matches!(done, Ok(true)), "not shipped: {:?}", shipper.status());
    entries
}

async fn conn(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every stream entry: (log, seq, hash, line).
async fn stream(redis: &RedisServer) -> Vec<(String, u64, String, String)> {
    let page: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(STREAM_KEY)
        .arg("-")
        .arg("+")
        .query_async(&mut conn(redis).await)
        .await
        .unwrap();
    page.into_iter()
        .map(|(_, f)| {
            let get = |k: &str| f.chunks(2).find(|kv| kv[0] == k).unwrap()[1].clone();
            (get("log"), get("seq").parse().unwrap(), get("hash"), get("line"))
        })
        .collect()
}

/// The stream holds the file exactly: every line once, in order, hashed.
async fn assert_stream_is_the_file(redis: &RedisServer, log: &Path) {
    let text = std::fs::read_to_string(log).unwrap();
    let id = log_id(log, false).unwrap().unwrap();
    let shipped = stream(redis).await;
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(shipped.len(), lines.len(), "one stream entry per line");
    for (n, ((log_id, seq, hash, line), ours)) in shipped.iter().zip(&lines).enumerate() {
        assert_eq!((log_id.as_str(), *seq), (id.as_str(), n as u64 + 1));
        assert_eq!(line, ours);
        assert_eq!(*hash, valet_audit::line_hash(ours.as_bytes()));
    }
}

async fn calls(valet: &Valet, key: &str, n: usize) -> Vec<Result<proto::CallResponse, tonic::Status>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(valet.call(key, get("acme", "mock", "/v1/things")).await);
    }
    out
}

fn verify_anchor(file: &Path, redis: &RedisServer) -> (bool, String) {
    let out = std::process::Command::new(valet_bin())
        .args(["audit", "verify"])
        .arg(file)
        .args(["--anchor", &redis.url()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `lines` as a valid chain again: the lines before `from` as they are,
/// each later one with its `prev` recomputed.
fn rechain(lines: &[String], from: usize) -> String {
    let mut prev = match from {
        0 => valet_audit::GENESIS.to_owned(),
        n => valet_audit::line_hash(lines[n - 1].as_bytes()),
    };
    let mut out: String = lines[..from].iter().map(|l| format!("{l}\n")).collect();
    for line in &lines[from..] {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["prev"] = prev.clone().into();
        let body = serde_json::to_string(&v).unwrap();
        prev = valet_audit::line_hash(body.as_bytes());
        out.push_str(&body);
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn every_entry_reaches_the_stream_and_the_anchor_finds_tampering() {
    let mock = MockVendor::start().await;
    let redis = RedisServer::start().await;
    let valet = start(&mock, &redis, WhenBehind::Continue, 10_000).await;
    let canary = valet_testkit::canary("audit-ship");
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[proto::Operation::Read])
        .await;
    let valet = Arc::new(valet);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (valet, key) = (valet.clone(), key.clone());
            tokio::spawn(async move { calls(&valet, &key, 4).await })
        })
        .collect();
    for t in tasks {
        assert!(t.await.unwrap().iter().all(Result::is_ok));
    }
    let entries = all_shipped(&valet).await;
    assert!(entries > 64);
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;

    // The fleet query reads the shipped copy, paged by stream id.
    let reader = valet.audit_reader().await;
    let mut admin = valet.admin().await;
    let mut after = String::new();
    let mut leases = Vec::new();
    loop {
        let req = QueryAuditRequest {
            filter: Some(AuditFilter {
                kinds: vec!["credential_lease".into()],
                ..Default::default()
            }),
            fleet: true,
            after_id: after.clone(),
            limit: 10,
            ..Default::default()
        };
        let mut page = admin
            .query_audit(authed(req, &reader))
            .await
            .unwrap()
            .into_inner();
        let mut got = 0;
        while let Some(e) = page.message().await.unwrap() {
            assert_eq!(Some(e.log.clone()), log_id(&valet.audit_log(), false).unwrap());
            after = e.stream_id.clone();
            leases.push(e.seq);
            got += 1;
        }
        if got < 10 {
            break;
        }
    }
    assert_eq!(leases.len(), 64, "every lease, once");
    for cursor in [
        "garbage",
        "99999999999999999999-0",
        "18446744073709551615-18446744073709551615",
    ] {
        let bad = QueryAuditRequest {
            fleet: true,
            after_id: cursor.into(),
            ..Default::default()
        };
        let err = admin.query_audit(authed(bad, &reader)).await.expect_err(cursor);
        assert_eq!(
            (err.code(), reason(&err).as_str()),
            (Code::InvalidArgument, "AUDIT_CURSOR_INVALID"),
            "{cursor}"
        );
    }
    assert!(leases.windows(2).all(|w| w[0] < w[1]));

    // Nothing secret went to Redis.
    let dump = format!("{:?}", stream(&redis).await);
    assert_eq!(forms_found(dump.as_bytes(), &canary), Vec::<&str>::new());
    assert_eq!(forms_found(dump.as_bytes(), &key), Vec::<&str>::new());

    // Stopped, the file is checked against the copy.
    let log = valet.audit_log();
    let valet = Arc::into_inner(valet).expect("no other handle");
    let (_config, state) = valet.stop().await;
    let (ok, text) = verify_anchor(&log, &redis);
    assert!(ok, "{text}");
    assert!(text.contains("matches its shipped copy"), "{text}");

    let original: Vec<String> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let n = original.len();
    let tampered = state.path().join("tampered.log");
    let try_file = |text: &str| {
        std::fs::write(&tampered, text).unwrap();
        let chain = valet_audit::verify(&tampered);
        (chain.is_ok(), verify_anchor(&tampered, &redis))
    };

    // The last three lines cut off: the chain cannot tell, the anchor can.
    let (chain_ok, (ok, text)) = try_file(&(original[..n - 3].join("\n") + "\n"));
    assert!(chain_ok && !ok, "{text}");
    assert!(
        text.contains("truncated") && text.contains("3 entries cut"),
        "{text}"
    );

    // The last line edited (its actor): no later line holds its hash.
    let mut edited = original.clone();
    edited[n - 1] = edited[n - 1].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    assert_ne!(edited[n - 1], original[n - 1]);
    let (chain_ok, (ok, text)) = try_file(&(edited.join("\n") + "\n"));
    assert!(chain_ok && !ok, "{text}");
    assert!(text.contains(&format!("line {n} differs")), "{text}");

    // A middle entry changed and every later hash recomputed: a valid
    // chain, and still found.
    let mut rewritten = original.clone();
    rewritten[n / 2] = rewritten[n / 2].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    let (chain_ok, (ok, text)) = try_file(&rechain(&rewritten, n / 2));
    assert!(chain_ok && !ok, "{text}");
    assert!(text.contains(&format!("line {} differs", n / 2 + 1)), "{text}");

    // The first entry rewritten changes the log's id: not found, and the
    // logs Redis holds are named.
    let mut first = original.clone();
    first[0] = first[0].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    let (_, (ok, text)) = try_file(&rechain(&first, 0));
    assert!(!ok);
    assert!(
        text.contains("no shipped copy") && text.contains(&log_id(&log, false).unwrap().unwrap()),
        "{text}"
    );
}

#[tokio::test]
async fn a_hung_redis_and_an_emptied_one_lose_nothing() {
    let mock = MockVendor::start().await;
    let mut redis = RedisServer::start().await;
    let valet = start(&mock, &redis, WhenBehind::Continue, 10_000).await;
    valet.put_credential("acme", "mock", "audit-ship-hung").await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[proto::Operation::Read])
        .await;
    all_shipped(&valet).await;
    let shipper = shipper(&valet);

    // Hung: Redis takes connections and answers nothing for a while. Calls
    // go on; the backlog waits in the file.
    let mut c = conn(&redis).await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(4_000)
        .arg("ALL")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(calls(&valet, &key, 5).await.iter().all(Result::is_ok));
    let stalled = tokio::time::timeout(PATIENCE, shipper.wait_for(|s| !s.up && s.behind > 0)).await;
    assert!(matches!(stalled, Ok(true)), "{:?}", shipper.status());
    all_shipped(&valet).await;
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;

    // Emptied: a restart lost everything. The next entry finds the gap and
    // the whole log is shipped again, once.
    redis.restart().await;
    assert!(calls(&valet, &key, 2).await.iter().all(Result::is_ok));
    all_shipped(&valet).await;
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;
    assert!(shipper.status().failures > 0);
    let head: u64 = redis::cmd("HGET")
        .arg(head_key(&log_id(&valet.audit_log(), false).unwrap().unwrap()))
        .arg("seq")
        .query_async(&mut conn(&redis).await)
        .await
        .unwrap();
    assert_eq!(head, valet_audit::verify(&valet.audit_log()).unwrap());
}

#[tokio::test]
async fn refuse_mode_refuses_calls_past_the_limit_until_the_backlog_drains() {
    let mock = MockVendor::start().await;
    let mut redis = RedisServer::start().await;
    let valet = start(&mock, &redis, WhenBehind::Refuse, 3).await;
    valet.put_credential("acme", "mock", "audit-ship-refuse").await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[proto::Operation::Read])
        .await;
    all_shipped(&valet).await;
    let shipper = shipper(&valet);

    redis.stop();
    // Up to the limit, calls go on with the file alone.
    assert!(calls(&valet, &key, 4).await.iter().all(Result::is_ok));
    let refusing = tokio::time::timeout(PATIENCE, shipper.wait_for(|s| s.refusing)).await;
    assert!(matches!(refusing, Ok(true)), "{:?}", shipper.status());
    let before = valet_audit::verify(&valet.audit_log()).unwrap();
    let err = valet
        .call(&key, get("acme", "mock", "/v1/things"))
        .await
        .expect_err("refused while the copy is behind");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::Unavailable, "AUDIT_UNAVAILABLE")
    );
    assert_eq!(
        mock.requests().len(),
        4,
        "the refused call never reached the vendor"
    );
    assert_eq!(
        valet_audit::verify(&valet.audit_log()).unwrap(),
        before,
        "no entry written"
    );
    // `valet status` says so.
    let status = valet
        .admin()
        .await
        .get_server_status(authed(proto::GetServerStatusRequest {}, &valet.admin_key))
        .await
        .unwrap()
        .into_inner();
    let sink = &status.audit_sinks[0];
    assert_eq!(
        (sink.sink.as_str(), sink.up, sink.refusing),
        ("redis", false, true),
        "{sink:?}"
    );
    assert!(sink.behind > 3 && !sink.error.is_empty(), "{sink:?}");
    // Refusing is not ready: a load balancer sends calls elsewhere.
    assert!(!valet.app.upgrade().unwrap().probe().await);
    let (status, body) = support::http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!(status, 503, "{body}");

    // Redis back (empty): the log ships again from its start, then calls
    // are accepted.
    redis.restart().await;
    let drained = tokio::time::timeout(PATIENCE, shipper.wait_for(|s| !s.refusing)).await;
    assert!(matches!(drained, Ok(true)), "{:?}", shipper.status());
    assert!(calls(&valet, &key, 1).await.iter().all(Result::is_ok));
    all_shipped(&valet).await;
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;
}

#[tokio::test]
async fn an_append_only_redis_user_is_enough_to_ship() {
    let mock = MockVendor::start().await;
    let redis = RedisServer::start().await;
    // The rights the README names, and nothing that deletes or trims.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("valet-audit")
        .arg("on")
        .arg(">audit-pw")
        .arg("resetkeys")
        .arg("~valet:{audit}:*")
        .arg("-@all")
        .arg("+evalsha")
        .arg("+eval")
        .arg("+script|load")
        .arg("+xadd")
        .arg("+hset")
        .arg("+sadd")
        .arg("+hget")
        .arg("+xrange")
        .arg("+smembers")
        .arg("+hgetall")
        .query_async(&mut conn(&redis).await)
        .await
        .unwrap();
    let url = redis.url().replace("redis://", "redis://valet-audit:audit-pw@");
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.audit.ship = Some(ShipConfig {
        redis_url: Some(url.clone()),
        behind_limit: 10_000,
        when_behind: WhenBehind::Continue,
        max_stream_entries: 0,
    });
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    valet.put_credential("acme", "mock", "audit-ship-acl").await;
    all_shipped(&valet).await;
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;

    // That user cannot remove what it shipped.
    let mut limited = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for cmd in [
        redis::cmd("DEL").arg(STREAM_KEY).clone(),
        redis::cmd("XTRIM").arg(STREAM_KEY).arg("MAXLEN").arg(0).clone(),
    ] {
        let refused = cmd
            .query_async::<redis::Value>(&mut limited)
            .await
            .expect_err("refused");
        assert!(refused.to_string().to_lowercase().contains("noperm"), "{refused}");
    }
}

#[tokio::test]
async fn a_fleet_query_without_shipping_is_refused_by_name() {
    let valet = Valet::start(Vec::new()).await;
    let reader = valet.audit_reader().await;
    let req = QueryAuditRequest {
        fleet: true,
        ..Default::default()
    };
    let err = valet
        .admin()
        .await
        .query_audit(authed(req, &reader))
        .await
        .expect_err("not shipped");
    assert_eq!(
        (err.code(), reason(&err).as_str()),
        (Code::FailedPrecondition, "AUDIT_NOT_SHIPPED")
    );
}

fn revoke_event(n: u64) -> valet_audit::Event {
    valet_audit::Event::ApiKeyRevoke {
        key_id: format!("key_{n}"),
        name: "n".into(),
    }
}

/// Retention and the anchor together: removals recorded and shipped pass;
/// a deletion explained only by a record appended to the file afterwards
/// (a valid chain, so `verify` alone accepts it) does not.
#[tokio::test]
async fn the_anchor_accepts_shipped_removals_and_not_a_record_added_later() {
    use valet_audit::log::Segmenting;
    use valet_audit::retention::{Retention, expire};
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let segmenting = Segmenting {
        max_bytes: 600,
        max_age_ms: 0,
    };
    let log =
        valet_audit::AuditLog::open_with(&path, valet_audit::Durability::BeforeSend, segmenting).unwrap();
    let settings = valet_audit::ship::ShipSettings {
        behind_limit: 10_000,
        when_behind: WhenBehind::Continue,
    };
    let to = valet_audit::ship::RedisShipping {
        redis_url: redis.url(),
        max_stream_entries: 0,
        replica: "test".into(),
    };
    let shipper = Shipper::start(&log, settings, to).unwrap();
    for n in 0..30 {
        let event = valet_audit::Event::CredentialLease {
            tenant: "acme".into(),
            vendor: "mock".into(),
            fingerprint: "fp".into(),
            reason: format!("r{n}"),
            request_id: format!("req-{n}"),
            scopes: None,
            source: None,
        };
        log.append("tester", event).await.unwrap();
    }
    let now = valet_audit::log::now_ms() + 100 * 86_400_000;
    let expired = expire(&log, Retention::default(), now).await.unwrap();
    assert!(expired.entries > 10, "{expired:?}");
    for n in 0..3 {
        log.append("tester", revoke_event(n)).await.unwrap();
    }
    let last = valet_audit::verify_report(&path).unwrap().last_seq;
    let shipped = tokio::time::timeout(PATIENCE, shipper.wait_for(|s| s.shipped >= last)).await;
    assert!(matches!(shipped, Ok(true)));
    let matched = valet_audit::anchor::check(&path, &redis.url(), None)
        .await
        .expect("recorded removals pass");
    assert!(matched.compared < matched.shipped, "{matched:?}");
    drop(shipper);
    drop(log);

    // Forged: the entry before the last one deleted, and a record
    // appended, chained to the last line, that "removed" it.
    let victim = last - 1;
    let mut victim_line = String::new();
    for file in valet_audit::segment::files(&path).unwrap() {
        let text = std::fs::read_to_string(&file).unwrap();
        let (gone, kept): (Vec<&str>, Vec<&str>) = text
            .lines()
            .partition(|l| l.starts_with(&format!("{{\"seq\":{victim},")));
        if let Some(line) = gone.first() {
            victim_line = (*line).to_owned();
            std::fs::write(&file, kept.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
        }
    }
    assert!(!victim_line.is_empty());
    let text = std::fs::read_to_string(&path).unwrap();
    let last_line = text.lines().last().unwrap().to_owned();
    // In the writer's own field order.
    let forged = format!(
        r#"{{"seq":{},"ts_ms":1,"prev":"{}","actor":"valet","event":"audit_expired","ranges":[{{"first_seq":{victim},"last_seq":{victim},"last_hash":"{}"}}],"segments":[]}}"#,
        last + 1,
        valet_audit::line_hash(last_line.as_bytes()),
        valet_audit::line_hash(victim_line.as_bytes())
    );
    std::fs::write(&path, format!("{text}{forged}\n")).unwrap();
    let chain = valet_audit::verify(&path);
    assert!(chain.is_ok(), "the chain alone accepts it: {chain:?}");
    let err = valet_audit::anchor::check(&path, &redis.url(), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("entry {victim} was shipped but is not in the file")),
        "{err}"
    );
}

/// Both sinks at once, a real OTLP receiver and a real Redis: each gets
/// every entry, identical and in order; the collector refusing for a while
/// loses nothing (the backlog drains when it takes logs again); the canary
/// is in neither.
#[tokio::test]
async fn the_otlp_and_redis_sinks_get_identical_ordered_copies_and_a_backlog_drains() {
    let mock = MockVendor::start().await;
    let redis = RedisServer::start().await;
    let collector = valet_testkit::OtlpReceiver::start().await;
    let mut config = Config {
        vendors: vec![vendor("mock", &mock.base_url(), bearer())],
        ..Config::default()
    };
    config.audit.ship = Some(ShipConfig {
        redis_url: Some(redis.url()),
        behind_limit: 10_000,
        when_behind: WhenBehind::Continue,
        max_stream_entries: 0,
    });
    config.audit.otlp = Some(valet::config::OtlpShipConfig {
        endpoint: Some(collector.endpoint.clone()),
        behind_limit: 10_000,
        when_behind: WhenBehind::Continue,
    });
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    let canary = valet_testkit::canary("audit-otlp");
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet
        .api_key(&["acme"], &["mock"], &[proto::Operation::Read])
        .await;
    assert!(calls(&valet, &key, 5).await.iter().all(Result::is_ok));
    let otlp = valet
        .app
        .upgrade()
        .unwrap()
        .audit_otlp
        .clone()
        .expect("otlp sink");
    let shipped_to_otlp = |n: u64| {
        let otlp = otlp.clone();
        async move {
            let done = tokio::time::timeout(PATIENCE, otlp.wait_for(|s| s.shipped >= n)).await;
            assert!(matches!(done, Ok(true)), "{:?}", otlp.status());
        }
    };
    let n = all_shipped(&valet).await;
    shipped_to_otlp(n).await;

    // The collector down for a while: calls go on, the backlog waits.
    collector.refuse_logs(true);
    assert!(calls(&valet, &key, 5).await.iter().all(Result::is_ok));
    let stalled = tokio::time::timeout(PATIENCE, otlp.wait_for(|s| !s.up && s.behind > 0)).await;
    assert!(matches!(stalled, Ok(true)), "{:?}", otlp.status());
    collector.refuse_logs(false);
    let n = all_shipped(&valet).await;
    shipped_to_otlp(n).await;

    let text: String = valet_audit::segment::files(&valet.audit_log())
        .unwrap()
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let lines: Vec<&str> = text.lines().collect();
    let logs = collector.logs();
    let bodies: Vec<&str> = logs.iter().map(|l| l.body.as_str()).collect();
    assert_eq!(bodies, lines, "every entry once, in order, exactly as written");
    let id = log_id(&valet.audit_log(), false).unwrap().unwrap();
    for (n, (log, line)) in logs.iter().zip(&lines).enumerate() {
        assert_eq!(log.attributes["valet.audit.seq"], (n + 1).to_string());
        assert_eq!(
            log.attributes["valet.audit.hash"],
            valet_audit::line_hash(line.as_bytes())
        );
        assert_eq!(log.attributes["valet.audit.log"], id);
        assert_eq!(log.service_name, "valet");
    }
    assert_stream_is_the_file(&redis, &valet.audit_log()).await;
    assert_eq!(forms_found(&collector.raw(), &canary), Vec::<&str>::new());
}
