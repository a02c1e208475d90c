//! The segmented audit log through the real binary: with tiny segments, a
//! kill -9 among 16 concurrent callers (so, among seals) loses no entry of
//! an answered call; the restarted server continues the chain; `valet
//! audit verify` reads across every segment.

mod support;

use support::{ValetProcess, authed, get};
use valet_audit::query::{Filter, scan};
use valet_testkit::MockVendor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_among_seals_loses_no_answered_calls_entry() {
    let mock = MockVendor::start().await;
    // A seal every few entries.
    let body = format!(
        "[audit]\nsegment_max_bytes = 1500\n[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        mock.base_url()
    );
    let first = ValetProcess::spawn(&body).await;
    let key = first.acme_mock_caller("audit-segments-secret", "read").await;
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let enough = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut callers = Vec::new();
    for _ in 0..16 {
        let (mut gateway, key) = (first.gateway().await, key.clone());
        let (answered, enough) = (answered.clone(), enough.clone());
        callers.push(tokio::spawn(async move {
            loop {
                match gateway.call(authed(get("acme", "mock", "/v1/x"), &key)).await {
                    Ok(resp) => {
                        let mut answered = answered.lock().unwrap();
                        answered.push(resp.into_inner().request_id);
                        if answered.len() == 200 {
                            enough.notify_one();
                        }
                    }
                    Err(_) => return, // the process is gone
                }
            }
        }));
    }
    enough.notified().await;
    let dir = first.kill9().await;
    for caller in callers {
        caller.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let log = dir.path().join("state/audit.log");
    let sealed = valet_audit::segment::sealed(&log).unwrap();
    assert!(sealed.len() > 20, "{} segments", sealed.len());

    // Restarted: the chain goes on, and every answered call's lease is in
    // some segment.
    let second = ValetProcess::spawn_in(dir, &body, &[]).await;
    let mut gateway = second.gateway().await;
    gateway
        .call(authed(get("acme", "mock", "/v1/x"), &key))
        .await
        .expect("a call after the restart");
    let state = second.state.clone();
    let config = second.config.clone();
    let exited = second.terminate().await;
    assert_eq!(exited.code, Some(0));
    let log = state.join("audit.log");
    let mut leased = std::collections::HashSet::new();
    let leases = Filter {
        kinds: vec!["credential_lease".into()],
        ..Filter::default()
    };
    scan(&log, &leases, |e| {
        let v: serde_json::Value = serde_json::from_str(&e.line).unwrap();
        leased.insert(v["request_id"].as_str().unwrap().to_owned());
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    for id in &answered {
        assert!(
            leased.contains(id),
            "call {id} was answered but its lease is gone"
        );
    }
    let out = std::process::Command::new(support::valet_bin())
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("segments, hash chain intact"), "{text}");

    // With the server's config, the signed index is checked too; cut the
    // tail (the current segment and the newest sealed one, leaving a valid
    // chain) and the index names what is missing.
    let verify = |log: &std::path::Path| {
        std::process::Command::new(support::valet_bin())
            .args(["audit", "verify"])
            .arg(log)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let out = verify(&log);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("the signed index lists"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, newest) = valet_audit::segment::sealed(&log).unwrap().pop().unwrap();
    std::fs::remove_file(&newest).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(valet_audit::verify(&log).is_ok(), "the chain alone cannot tell");
    let out = verify(&log);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is missing: it was deleted"),
        "{err}"
    );
    drop(exited);
}
