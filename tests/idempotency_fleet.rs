//! Idempotency across a fleet: three Valet processes sharing one Redis let a
//! key reach the vendor once, and keep the stored answer sealed.

mod support;

use std::time::Duration;
use support::{ValetProcess, authed, reason};
use tonic::Code;
use valet::proto::{CallRequest, Operation};
use valet_testkit::{MockVendor, RedisServer, Scripted, leak};

fn write(key: &str) -> CallRequest {
    CallRequest {
        tenant: "acme".into(),
        vendor: "mock".into(),
        operation: Operation::Write as i32,
        method: "POST".into(),
        path: "/v1/charges".into(),
        body: b"{\"amount\":5}".to_vec(),
        idempotency_key: key.into(),
        reason: "billing".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_reaches_the_vendor_once_across_three_processes() {
    let canary = valet_testkit::canary("idem-fleet");
    let redis = RedisServer::start().await;
    let mock = MockVendor::start().await;
    mock.script(
        "/v1/charges",
        Scripted::status(201)
            .body(canary.clone())
            .delay(Duration::from_millis(400)),
    );
    // Replicas share the master key: each must open what the others sealed.
    let keys = tempfile::tempdir().unwrap();
    let master = keys.path().join("master.key");
    valet_credentials::MasterKey::load_or_create(&master).unwrap();
    let body = format!(
        "[secrets]\nmaster_key = {{ file = \"{}\" }}\n[idempotency]\nbackend = \"redis\"\nredis_url = \"{}\"\n[[vendors]]\nname = \"mock\"\nbase_url = \"{}\"\nallow_insecure_http = true\nauth = {{ scheme = \"bearer\" }}\n",
        master.display(),
        redis.url(),
        mock.base_url()
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        let p = ValetProcess::spawn(&body).await;
        let key = p.acme_mock_caller("idem-fleet-secret-001", "write").await;
        fleet.push((p, key));
    }

    let mut calls = Vec::new();
    for (p, key) in &fleet {
        let gateway = p.gateway().await;
        for _ in 0..33 {
            let (mut gateway, key) = (gateway.clone(), key.clone());
            calls.push(tokio::spawn(async move {
                gateway.call(authed(write("k-fleet"), &key)).await
            }));
        }
    }
    let mut first = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(r) if !r.get_ref().replayed => first += 1,
            Ok(_) => {}
            Err(e) => assert_eq!(
                (e.code(), reason(&e).as_str()),
                (Code::Aborted, "IDEMPOTENCY_IN_FLIGHT")
            ),
        }
    }
    assert_eq!(first, 1);
    assert_eq!(
        mock.requests().len(),
        1,
        "one vendor request for 99 calls on three processes"
    );

    // Another replica replays the answer.
    let (p, key) = &fleet[2];
    let again = p
        .gateway()
        .await
        .call(authed(write("k-fleet"), key))
        .await
        .unwrap()
        .into_inner();
    assert!(again.replayed);
    assert_eq!(again.body, canary.as_bytes());

    // In Redis the stored answer is ciphertext.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("valet:idem:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1);
    let stored: String = redis::cmd("GET")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(stored.contains("\"completed\""), "{stored}");
    assert_eq!(leak::forms_found(stored.as_bytes(), &canary), Vec::<&str>::new());

    // Offboarding removes the tenant's records from Redis.
    let said = fleet[0]
        .0
        .admin(&["tenant", "erase-records", "--tenant", "acme"], "")
        .await;
    assert!(said.contains("erased 1 stored responses"), "{said}");
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("valet:idem:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");

    for (p, _) in fleet {
        assert_eq!(p.terminate().await.code, Some(0));
    }
}
