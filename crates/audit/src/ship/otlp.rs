//! The OTLP sink: every entry as an OTLP log record to a collector, which
//! forwards it to whatever SIEM it is configured for. The record's body is
//! the entry exactly as written; its attributes carry the log's id, the
//! entry's seq, hash and kind, so the SIEM can check order and the chain.
//!
//! Why the collector's protobuf client rather than the SDK's log exporter:
//! the SDK's batch processor drops records when its queue is full and says
//! nothing per record. Here each batch is sent, acknowledged, and only then
//! is the cursor moved, so a collector that is down gets the backlog when
//! it returns.
//!
//! A collector keeps no head to ask, so where shipping stands is kept
//! beside the log, in `<audit.log>.otlp-cursor` ("<log id> <seq>"), written
//! after each acknowledged batch (replaced atomically, not fsync'd). After
//! a crash or power loss the cursor may lag behind what the collector got:
//! delivery is at least once, and a duplicate has the same seq and hash.

use super::{Line, ShipError, Sink, TIMEOUT};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use std::path::{Path, PathBuf};

/// Where to ship over OTLP.
#[derive(Debug, Clone)]
pub struct OtlpShipping {
    /// The collector's OTLP/gRPC endpoint (`http://collector:4317`).
    pub endpoint: String,
    /// This replica's name, as the records' `host.name`.
    pub replica: String,
}

/// The sink shipping to a collector.
pub(super) struct OtlpSink {
    client: LogsServiceClient<tonic::transport::Channel>,
    cursor: PathBuf,
    replica: String,
}

impl OtlpSink {
    pub(super) fn new(log: &Path, otlp: OtlpShipping) -> Result<Self, ShipError> {
        // The endpoint itself is not echoed: it may carry credentials.
        let bad = |e: &dyn std::fmt::Display| ShipError::Url(format!("audit.otlp endpoint: {e}"));
        let mut endpoint = tonic::transport::Endpoint::from_shared(otlp.endpoint.clone())
            .map_err(|e| bad(&e))?
            .connect_timeout(TIMEOUT)
            .timeout(TIMEOUT);
        if otlp.endpoint.starts_with("https://") {
            let tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
            endpoint = endpoint.tls_config(tls).map_err(|e| bad(&e))?;
        }
        let mut cursor = log.as_os_str().to_owned();
        cursor.push(".otlp-cursor");
        Ok(Self {
            client: LogsServiceClient::new(endpoint.connect_lazy()),
            cursor: PathBuf::from(cursor),
            replica: otlp.replica,
        })
    }

    fn record(id: &str, line: &Line) -> LogRecord {
        #[derive(serde::Deserialize)]
        struct Head {
            ts_ms: u64,
            event: String,
        }
        let head: Option<Head> = serde_json::from_str(&line.text).ok();
        let ts_ns = head.as_ref().map_or(0, |h| h.ts_ms.saturating_mul(1_000_000));
        let kind = head.map(|h| h.event).unwrap_or_default();
        LogRecord {
            time_unix_nano: ts_ns,
            observed_time_unix_nano: ts_ns,
            severity_number: SeverityNumber::Info as i32,
            severity_text: "INFO".into(),
            body: Some(text(&line.text)),
            attributes: vec![
                attr("valet.audit.log", text(id)),
                attr("valet.audit.seq", int(line.seq)),
                attr("valet.audit.hash", text(&line.hash)),
                attr("valet.audit.event", text(&kind)),
            ],
            event_name: kind,
            ..LogRecord::default()
        }
    }
}

fn text(s: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(s.to_owned())),
    }
}

fn int(n: u64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(i64::try_from(n).unwrap_or(i64::MAX))),
    }
}

fn attr(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..KeyValue::default()
    }
}

impl Sink for OtlpSink {
    const NAME: &'static str = "otlp";

    async fn head(&self, id: &str) -> Result<u64, String> {
        match tokio::fs::read_to_string(&self.cursor).await {
            Ok(text) => Ok(match text.trim().split_once(' ') {
                Some((log, seq)) if log == id => seq.parse().unwrap_or(0),
                _ => 0, // another log's cursor: this one starts over
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(format!("cannot read {}: {e}", self.cursor.display())),
        }
    }

    async fn send(&self, id: &str, _head: u64, batch: &[Line]) -> Result<u64, String> {
        let Some(last) = batch.last() else {
            return Err("nothing to send".into());
        };
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        attr("service.name", text("valet")),
                        attr("host.name", text(&self.replica)),
                    ],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "valet.audit".into(),
                        ..InstrumentationScope::default()
                    }),
                    log_records: batch.iter().map(|line| Self::record(id, line)).collect(),
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        let answer = self
            .client
            .clone()
            .export(request)
            .await
            .map_err(|s| format!("otlp: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        if let Some(partial) = answer.partial_success
            && partial.rejected_log_records > 0
        {
            return Err(format!(
                "otlp: the collector rejected {} records: {}",
                partial.rejected_log_records, partial.error_message
            ));
        }
        let mut tmp = self.cursor.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let moved = async {
            tokio::fs::write(&tmp, format!("{id} {}\n", last.seq)).await?;
            tokio::fs::rename(&tmp, &self.cursor).await
        };
        moved
            .await
            .map_err(|e| format!("cannot write {}: {e}", self.cursor.display()))?;
        Ok(last.seq)
    }
}
