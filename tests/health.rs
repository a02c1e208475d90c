//! Discovery and probes on the Gateway listener: gRPC health and server
//! reflection (so grpcurl works without the .proto files).

mod support;

use support::Valet;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn channel(valet: &Valet) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://{}", valet.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_serving() {
    let valet = Valet::start(vec![]).await;
    let mut health = HealthClient::new(channel(&valet).await);
    for service in ["", "valet.v1.Gateway", "valet.v1.Admin"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "nope.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_services() {
    let valet = Valet::start(vec![]).await;
    let mut reflection = ServerReflectionClient::new(channel(&valet).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("not a service list: {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["valet.v1.Gateway", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }
    // The Admin service has its own listener; this one does not serve it.
    assert!(!names.iter().any(|n| n == "valet.v1.Admin"), "{names:?}");
}

async fn watch_root(
    channel: tonic::transport::Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    HealthClient::new(channel)
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn next_status(stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>) -> i32 {
    let next = tokio::time::timeout(std::time::Duration::from_secs(20), stream.message()).await;
    next.expect("a health change in time").unwrap().unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_a_required_backend_is_down() {
    use valet::config::{Config, MasterKeySource, QuotaBackend};
    let mut redis = valet_testkit::RedisServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.health_probe_interval_ms = 100;
    config.idempotency.backend = QuotaBackend::Redis;
    config.idempotency.redis_url = Some(redis.url());
    config.secrets.master_key = Some(MasterKeySource::File(keys.path().join("master.key")));
    let valet = Valet::start_with(config, tempfile::tempdir().unwrap()).await;
    let mut watch = watch_root(channel(&valet).await).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);

    redis.stop();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing as i32);
    let (status, body) = support::http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!(status, 503);
    assert_eq!(body, "not ready: redis (idempotency) unavailable\n");
    let (_, metrics) = support::http_get(&format!("http://{}/metrics", valet.ops_addr)).await;
    assert_eq!(support::sample(&metrics, "valet_ready", &[]), 0.0);
    let (status, _) = support::http_get(&format!("http://{}/healthz", valet.ops_addr)).await;
    assert_eq!(status, 200, "alive, just not ready");

    redis.restart().await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    let (status, _) = support::http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_when_shutdown_begins() {
    let valet = support::ValetProcess::spawn("").await;
    let channel = tonic::transport::Channel::from_shared(valet.gateway_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = watch_root(channel).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    valet.sigterm().await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing as i32);
    // The watcher hangs up on seeing it, as a load balancer would.
    drop(watch);
    let exited = valet.terminate().await;
    assert_eq!(
        exited.code,
        Some(0),
        "{}",
        String::from_utf8_lossy(&exited.stderr)
    );
}

/// How Secrets Manager fails in [`secrets_manager_outage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outage {
    /// The emulator is gone: connections are refused.
    Refused,
    /// Every request gets HTTP 503.
    Errors,
    /// Requests are taken and never answered.
    Hang,
}

/// A Secrets Manager outage while the replica holds a cached credential:
/// degraded but SERVING (calls are served from the cache) until the last
/// answer from Secrets Manager is older than `max_stale_ms`, NOT_SERVING
/// after; SERVING again once it answers.
async fn secrets_manager_outage(outage: Outage) {
    use std::time::{Duration, Instant};
    use support::{bearer, get, sample, vendor};
    use valet::app::StartOptions;
    use valet::config::{Config, MasterKeySource, SecretsBackend};
    use valet::proto::Operation;
    const MAX_STALE: Duration = Duration::from_millis(5_000);
    let mut moto = valet_testkit::Moto::start().await;
    let proxy = valet_testkit::CountingProxy::start(&moto.endpoint()).await;
    let mock = valet_testkit::MockVendor::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.health_probe_interval_ms = 100;
    config.secrets.backend = SecretsBackend::Aws;
    config.secrets.region = Some("us-east-1".into());
    config.secrets.endpoint_url = Some(match outage {
        Outage::Refused => moto.endpoint(),
        Outage::Errors | Outage::Hang => proxy.endpoint(),
    });
    config.secrets.cache_ttl_ms = 1_000;
    config.secrets.max_stale_ms = MAX_STALE.as_millis() as u64;
    config.secrets.master_key = Some(MasterKeySource::File(keys.path().join("master.key")));
    config.vendors = vec![vendor("mock", &mock.base_url(), bearer())];
    let options = StartOptions {
        aws_static_credentials: Some(("testing".into(), "testing".into())),
    };
    let valet = Valet::start_with_options(config, tempfile::tempdir().unwrap(), options).await;
    let canary = valet_testkit::canary("health");
    valet.put_credential("acme", "mock", &canary).await;
    let key = valet.api_key(&["acme"], &["mock"], &[Operation::Read]).await;
    let mut watch = watch_root(channel(&valet).await).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    let readyz = format!("http://{}/readyz", valet.ops_addr);
    let metrics = format!("http://{}/metrics", valet.ops_addr);

    let outage_began = Instant::now();
    match outage {
        Outage::Refused => moto.stop(),
        Outage::Errors => proxy.set_down(true),
        Outage::Hang => proxy.set_hang(true),
    }
    // Degraded, still ready: the first failed probe says so (a hung one
    // after its 2 s timeout). Polled: readiness has no other signal.
    let degraded = loop {
        let (status, body) = support::http_get(&readyz).await;
        if body != "ready\n" {
            break (status, body);
        }
        assert!(
            outage_began.elapsed() < MAX_STALE,
            "{outage:?}: never reported degraded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (degraded.0, degraded.1.as_str()),
        (200, "ready (degraded: secrets manager unavailable)\n"),
        "{outage:?}"
    );
    let (_, text) = support::http_get(&metrics).await;
    assert_eq!(
        (
            sample(&text, "valet_ready", &[]),
            sample(&text, "valet_secrets_manager_degraded", &[])
        ),
        (1.0, 1.0),
        "{outage:?}"
    );
    // And it can serve: the cached credential (past its TTL) is used.
    let resp = valet.call(&key, get("acme", "mock", "/x")).await.unwrap();
    assert_eq!(resp.status, 200, "{outage:?}");

    // NOT_SERVING only once no cached record can be served any more.
    assert_eq!(
        next_status(&mut watch).await,
        ServingStatus::NotServing as i32,
        "{outage:?}"
    );
    let not_serving_after = outage_began.elapsed();
    assert!(
        not_serving_after + Duration::from_millis(500) >= MAX_STALE,
        "{outage:?}: NOT_SERVING {not_serving_after:?} into the outage, before max_stale"
    );
    let (status, body) = support::http_get(&readyz).await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: secrets manager unavailable longer than max_stale\n"
        ),
        "{outage:?}"
    );
    let (_, text) = support::http_get(&metrics).await;
    assert_eq!(
        (
            sample(&text, "valet_ready", &[]),
            sample(&text, "valet_secrets_manager_degraded", &[])
        ),
        (0.0, 0.0),
        "{outage:?}"
    );
    for output in [&text, &body] {
        assert_eq!(
            valet_testkit::leak::forms_found(output.as_bytes(), &canary),
            Vec::<&str>::new()
        );
    }

    if outage == Outage::Refused {
        return; // moto's state went with it.
    }
    proxy.set_down(false);
    proxy.set_hang(false);
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);
    let (status, body) = support::http_get(&readyz).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_refusing_connections_is_degraded_until_max_stale() {
    secrets_manager_outage(Outage::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_failing_is_degraded_until_max_stale() {
    secrets_manager_outage(Outage::Errors).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_manager_hanging_is_degraded_until_max_stale() {
    secrets_manager_outage(Outage::Hang).await;
}
