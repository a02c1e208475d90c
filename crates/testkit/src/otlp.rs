//! A real OTLP receiver: the collector's `TraceService`, `MetricsService`
//! and `LogsService` over gRPC on a free loopback port, keeping what it
//! receives.

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{LogsService, LogsServiceServer};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// One received span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Its name.
    pub name: String,
    /// Trace id, hex.
    pub trace_id: String,
    /// Span id, hex.
    pub span_id: String,
    /// Parent span id, hex; empty for a root.
    pub parent_span_id: String,
    /// `SpanKind` as a number (2 = server, 3 = client).
    pub kind: i32,
    /// Attributes as text.
    pub attributes: BTreeMap<String, String>,
    /// Status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// Status message.
    pub status_message: String,
    /// `service.name` of the resource that sent it.
    pub service_name: String,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One received log record, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    /// Its body, as text.
    pub body: String,
    /// Attributes as text.
    pub attributes: BTreeMap<String, String>,
    /// Its time, Unix nanoseconds.
    pub time_unix_nano: u64,
    /// `service.name` of the resource that sent it.
    pub service_name: String,
}

#[derive(Default)]
struct Received {
    logs: Vec<ReceivedLog>,
    spans: Vec<ReceivedSpan>,
    /// Every export request, protobuf-encoded, for leak scans.
    raw: Vec<u8>,
    metric_names: Vec<String>,
    /// Spans received, kept or not.
    span_count: u64,
    /// Log records received, kept or not.
    log_count: u64,
}

#[derive(Clone, Default)]
struct Shared {
    received: Arc<Mutex<Received>>,
    changed: Arc<Notify>,
    /// Count spans and drop them (for benchmarks: memory stays flat).
    count_only: bool,
    /// Answer log exports with UNAVAILABLE (a collector that is down).
    refusing_logs: Arc<std::sync::atomic::AtomicBool>,
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT`, for `otlp_endpoint`.
    pub endpoint: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        Self::serve(Shared::default()).await
    }

    /// Starts a receiver that only counts spans and log records
    /// ([`Self::span_count`], [`Self::log_count`]) and keeps nothing else of
    /// them: a collector that costs the sender what a
    /// real one does, with memory that stays flat under any load.
    pub async fn start_counting() -> Self {
        Self::serve(Shared {
            count_only: true,
            ..Shared::default()
        })
        .await
    }

    async fn serve(shared: Shared) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(shared.clone()))
            .add_service(MetricsServiceServer::new(shared.clone()))
            .add_service(LogsServiceServer::new(shared.clone()))
            .serve_with_incoming(incoming);
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Self {
            endpoint: format!("http://{addr}"),
            shared,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.received.lock().expect("lock").spans.clone()
    }

    /// Spans received so far (kept or only counted).
    pub fn span_count(&self) -> u64 {
        self.shared.received.lock().expect("lock").span_count
    }

    /// Refuse log exports (UNAVAILABLE) while `on`, as a collector that is
    /// down would.
    pub fn refuse_logs(&self, on: bool) {
        self.shared
            .refusing_logs
            .store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// Log records received so far (kept or only counted).
    pub fn log_count(&self) -> u64 {
        self.shared.received.lock().expect("lock").log_count
    }

    /// Every log record received so far.
    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.shared.received.lock().expect("lock").logs.clone()
    }

    /// Waits until at least `n` log records have arrived.
    pub async fn wait_for_logs(&self, n: usize) {
        loop {
            let changed = self.shared.changed.notified();
            if self.logs().len() >= n {
                return;
            }
            changed.await;
        }
    }

    /// Names of metrics received over OTLP so far.
    pub fn metric_names(&self) -> Vec<String> {
        self.shared.received.lock().expect("lock").metric_names.clone()
    }

    /// Every export request received, protobuf-encoded back to back.
    pub fn raw(&self) -> Vec<u8> {
        self.shared.received.lock().expect("lock").raw.clone()
    }

    /// Waits (up to `limit`) until `done` holds for the spans received, and
    /// returns them; panics with what arrived if it never does.
    pub async fn wait_for_spans(
        &self,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        self.wait(limit, |r| done(&r.spans)).await;
        self.spans()
    }

    /// Waits (up to `limit`) until a metric called `name` arrived.
    pub async fn wait_for_metric(&self, limit: Duration, name: &str) {
        self.wait(limit, |r| r.metric_names.iter().any(|n| n == name))
            .await;
    }

    async fn wait(&self, limit: Duration, done: impl Fn(&Received) -> bool) {
        let waited = tokio::time::timeout(limit, async {
            loop {
                let changed = self.shared.changed.notified();
                if done(&self.shared.received.lock().expect("lock")) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        if waited.is_err() {
            let received = self.shared.received.lock().expect("lock");
            let names: Vec<_> = received.spans.iter().map(|s| s.name.as_str()).collect();
            panic!(
                "OTLP receiver: condition not met within {limit:?}; spans so far: {names:?}; metrics: {:?}",
                received.metric_names
            );
        }
    }
}

#[tonic::async_trait]
impl TraceService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let mut received = self.received.lock().expect("lock");
        received.span_count += request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len() as u64)
            .sum::<u64>();
        if self.count_only {
            return Ok(tonic::Response::new(ExportTraceServiceResponse::default()));
        }
        received.raw.extend(request.encode_to_vec());
        for resource in &request.resource_spans {
            let service_name = service_name(resource.resource.as_ref());
            for scope in &resource.scope_spans {
                for span in &scope.spans {
                    let status = span.status.clone().unwrap_or_default();
                    received.spans.push(ReceivedSpan {
                        name: span.name.clone(),
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        kind: span.kind,
                        attributes: attributes(&span.attributes),
                        status_code: status.code,
                        status_message: status.message,
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        drop(received);
        self.changed.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.count_only {
            return Ok(tonic::Response::new(ExportMetricsServiceResponse::default()));
        }
        let request = request.into_inner();
        let mut received = self.received.lock().expect("lock");
        received.raw.extend(request.encode_to_vec());
        for resource in &request.resource_metrics {
            for scope in &resource.scope_metrics {
                for metric in &scope.metrics {
                    received.metric_names.push(metric.name.clone());
                }
            }
        }
        drop(received);
        self.changed.notify_waiters();
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Shared {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        if self.refusing_logs.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("the receiver is refusing logs"));
        }
        let request = request.into_inner();
        let mut received = self.received.lock().expect("lock");
        received.log_count += request
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .map(|s| s.log_records.len() as u64)
            .sum::<u64>();
        if self.count_only {
            drop(received);
            self.changed.notify_waiters();
            return Ok(tonic::Response::new(ExportLogsServiceResponse::default()));
        }
        received.raw.extend(request.encode_to_vec());
        for resource in &request.resource_logs {
            let service_name = service_name(resource.resource.as_ref());
            for scope in &resource.scope_logs {
                for record in &scope.log_records {
                    received.logs.push(ReceivedLog {
                        body: text(record.body.as_ref()),
                        attributes: attributes(&record.attributes),
                        time_unix_nano: record.time_unix_nano,
                        service_name: service_name.clone(),
                    });
                }
            }
        }
        drop(received);
        self.changed.notify_waiters();
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

/// The `service.name` of the resource that sent a batch.
fn service_name(resource: Option<&opentelemetry_proto::tonic::resource::v1::Resource>) -> String {
    resource
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .map(|kv| text(kv.value.as_ref()))
        .unwrap_or_default()
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}
