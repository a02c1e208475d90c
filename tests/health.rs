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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_secrets_manager_is_unreachable() {
    use valet::app::StartOptions;
    use valet::config::{Config, MasterKeySource, SecretsBackend};
    let mut moto = valet_testkit::Moto::start().await;
    let keys = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.server.health_probe_interval_ms = 100;
    config.secrets.backend = SecretsBackend::Aws;
    config.secrets.region = Some("us-east-1".into());
    config.secrets.endpoint_url = Some(moto.endpoint());
    config.secrets.master_key = Some(MasterKeySource::File(keys.path().join("master.key")));
    let options = StartOptions {
        aws_static_credentials: Some(("testing".into(), "testing".into())),
    };
    let valet = Valet::start_with_options(config, tempfile::tempdir().unwrap(), options).await;
    let mut watch = watch_root(channel(&valet).await).await;
    assert_eq!(next_status(&mut watch).await, ServingStatus::Serving as i32);

    moto.stop();
    assert_eq!(next_status(&mut watch).await, ServingStatus::NotServing as i32);
    let (status, body) = support::http_get(&format!("http://{}/readyz", valet.ops_addr)).await;
    assert_eq!(
        (status, body.as_str()),
        (503, "not ready: secrets manager unavailable\n")
    );
}
