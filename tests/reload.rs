//! SIGHUP reloads the config file of a running `valet serve`: vendors and
//! default quota policies change while it serves; an invalid file is
//! refused and the old config stays; other sections are named as needing a
//! restart. Before, SIGHUP ended the process (exit 129).

mod support;

use support::{ValetProcess, admin_cli, authed, get, reason, vendor_toml};
use valet_testkit::MockVendor;

async fn call(valet: &ValetProcess, key: &str, vendor: &str) -> Result<u32, tonic::Status> {
    let resp = valet
        .gateway()
        .await
        .call(authed(get("acme", vendor, "/v1/x"), key))
        .await?;
    Ok(resp.into_inner().status)
}

async fn key_for(valet: &ValetProcess, vendor: &str) -> std::process::Output {
    let args = [
        "apikey",
        "create",
        "--name",
        vendor,
        "--tenant",
        "acme",
        "--vendor",
        vendor,
        "--operation",
        "read",
    ];
    admin_cli(&valet.admin_url, &valet.key_file, &args, "").await
}

#[tokio::test]
async fn sighup_reloads_vendors_and_quota_policies_and_refuses_an_invalid_file() {
    let mock = MockVendor::start().await;
    let mut valet = ValetProcess::spawn(&vendor_toml("mock", &mock.base_url())).await;
    let key = valet
        .acme_mock_caller(&valet_testkit::canary("reload"), "read")
        .await;
    assert_eq!(call(&valet, &key, "mock").await.unwrap(), 200);
    assert!(
        !key_for(&valet, "second").await.status.success(),
        "no vendor `second` before the reload"
    );
    let original = std::fs::read_to_string(&valet.config).unwrap();

    // A call at the vendor while the file is reloaded finishes as it began.
    mock.script(
        "/slow",
        valet_testkit::Scripted::status(200).delay(std::time::Duration::from_secs(2)),
    );
    let mut gateway = valet.gateway().await;
    let slow_key = key.clone();
    let in_flight = tokio::spawn(async move {
        gateway
            .call(authed(get("acme", "mock", "/slow"), &slow_key))
            .await
    });
    mock.wait_until(|reqs, _| reqs.iter().any(|r| r.path_and_query == "/slow"))
        .await;

    // A new vendor and a policy allowing one read per hour.
    let policy = "[[quota.policies]]\ntenant = \"*\"\nvendor = \"mock\"\noperation = \"read\"\nrate = 1\nperiod = \"hour\"\nburst = 1\n";
    let telemetry = "[telemetry]\ntenant_label = false\nlog_format = \"text\"\n";
    std::fs::write(
        &valet.config,
        format!(
            "{original}\n{telemetry}\n{}\n{policy}",
            vendor_toml("second", &mock.base_url())
        ),
    )
    .unwrap();
    valet.signal("HUP").await;
    let log = valet.wait_for_stdout("config reloaded", 1).await;
    assert!(log.contains("second"), "the reload names the new vendor: {log}");
    // The log format changed with it: lines from the reload on are text.
    let reloaded = log.lines().find(|l| l.contains("config reloaded")).unwrap();
    assert!(
        !reloaded.starts_with('{'),
        "still JSON after log_format = \"text\": {reloaded}"
    );
    assert!(log.lines().next().unwrap().starts_with('{'), "JSON before: {log}");
    let slow = in_flight
        .await
        .unwrap()
        .expect("the call under way during the reload");
    assert_eq!(slow.into_inner().status, 200);
    let put = ["credential", "put", "--tenant", "acme", "--vendor", "second"];
    valet
        .admin(&put, &format!("{}\n", valet_testkit::canary("second")))
        .await;
    let created = key_for(&valet, "second").await;
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let second_key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    assert_eq!(call(&valet, &second_key, "second").await.unwrap(), 200);
    assert_eq!(
        call(&valet, &key, "mock").await.unwrap(),
        200,
        "the first call of the hour"
    );
    let refused = call(&valet, &key, "mock").await.unwrap_err();
    assert_eq!(reason(&refused), "QUOTA_EXCEEDED", "{refused:?}");
    assert!(
        !log.contains("only after a restart"),
        "all of it was reloadable: {log}"
    );
    // Metrics since the reload carry no tenant label.
    let (_, metrics) = support::http_get(&format!("{}/metrics", valet.ops_url)).await;
    let untenanted = metrics
        .lines()
        .filter(|l| l.starts_with("valet_calls_total{") && l.contains("vendor=\"second\""))
        .collect::<Vec<_>>();
    assert!(
        !untenanted.is_empty() && untenanted.iter().all(|l| !l.contains("tenant=")),
        "{metrics}"
    );

    // An invalid file changes nothing.
    std::fs::write(&valet.config, format!("{original}\nno_such_key = 1\n")).unwrap();
    valet.signal("HUP").await;
    let log = valet.wait_for_stdout("config reload refused", 1).await;
    assert!(log.contains("no_such_key"), "the refusal names the key: {log}");
    assert_eq!(call(&valet, &second_key, "second").await.unwrap(), 200);
    assert!(valet.is_running());

    // Back to the original: `second` is gone, the policy too; a section
    // that needs a restart is named.
    let server_change = original.replacen("[server]\n", "[server]\ndrain_delay_ms = 5\n", 1);
    std::fs::write(&valet.config, server_change).unwrap();
    valet.signal("HUP").await;
    let log = valet.wait_for_stdout("config reloaded", 2).await;
    assert!(log.contains("only after a restart: server"), "{log}");
    // log_format back to auto: JSON again (stdout is no terminal).
    let last = log.lines().rfind(|l| l.contains("config reloaded")).unwrap();
    assert!(last.starts_with('{'), "{last}");
    let gone = call(&valet, &second_key, "second").await.unwrap_err();
    assert_eq!(reason(&gone), "VENDOR_UNKNOWN", "{gone:?}");
    assert_eq!(
        call(&valet, &key, "mock").await.unwrap(),
        200,
        "no policy any more"
    );

    let exited = valet.terminate().await;
    assert_eq!(
        exited.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );
}
