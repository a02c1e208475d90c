//! The JSON log line: one flat object per event, written straight into the
//! line buffer.
//!
//! The same object `tracing-subscriber`'s JSON format makes with
//! `flatten_event(true)` and no span context — `timestamp` (RFC 3339, UTC,
//! microseconds), `level`, the event's fields (`message` among them) at top
//! level, `target` — but without its detour through `serde_json` and an
//! `io::Write` adaptor, which was a tenth of a proxied call's instructions.
//! A unit test holds the two formats to the same objects.

use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as flat JSON lines.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlatJson;

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        writer.write_str("{\"timestamp\":\"")?;
        timestamp(&mut writer, SystemTime::now())?;
        writer.write_str("\",\"level\":\"")?;
        writer.write_str(meta.level().as_str())?;
        writer.write_char('"')?;
        let mut fields = Fields {
            out: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_str(",\"target\":")?;
        string(&mut writer, meta.target())?;
        writer.write_str("}\n")
    }
}

/// Writes each field as `,"name":value`.
struct Fields<'w, 'a> {
    out: &'w mut Writer<'a>,
    result: fmt::Result,
}

impl Fields<'_, '_> {
    fn field(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char(',')?;
                string(self.out, field.name())?;
                self.out.write_char(':')?;
                value(self.out)
            })();
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.field(field, |out| string(out, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.field(field, |out| {
            out.write_char('"')?;
            write!(Escaping(out), "{value:?}")?;
            out.write_char('"')
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // `{:?}` is the shortest form that reads back as the same number;
        // JSON has no NaN or infinity (serde_json writes null too).
        self.field(field, |out| match value.is_finite() {
            true => write!(out, "{value:?}"),
            false => out.write_str("null"),
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.field(field, |out| write!(out, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.field(field, |out| write!(out, "{value}"));
    }

    // 128-bit integers go through `record_debug`, as strings: what
    // tracing-subscriber's JSON writes too.
}

/// `s` as a JSON string.
fn string(out: &mut Writer<'_>, s: &str) -> fmt::Result {
    out.write_char('"')?;
    Escaping(out).write_str(s)?;
    out.write_char('"')
}

/// Writes what it is given with JSON's string escapes, as serde_json does:
/// `"`, `\` and control characters; nothing else.
struct Escaping<'w, 'a>(&'w mut Writer<'a>);

impl fmt::Write for Escaping<'_, '_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut plain = 0;
        for (i, b) in s.bytes().enumerate() {
            let escape = match b {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&s[plain..i])?;
            match escape {
                "" => write!(self.0, "\\u{b:04x}")?,
                escape => self.0.write_str(escape)?,
            }
            plain = i + 1;
        }
        self.0.write_str(&s[plain..])
    }
}

/// `now` as RFC 3339 in UTC with microseconds: `2026-12-04T01:51:49.353425Z`.
fn timestamp(out: &mut Writer<'_>, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Memory;
    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Debug)]
    #[allow(dead_code)] // only its Debug form is logged
    struct Shape {
        name: &'static str,
    }

    fn events() {
        let error = std::io::Error::other("disk \"full\"\n");
        tracing::info!(
            request_id = "req_1",
            tenant = "acme \"quoted\" \\ back\tslash \u{1} ctl é",
            grpc_status = 0u64,
            delta = -3i64,
            big = u128::MAX,
            latency_ms = 5.734628000000001,
            whole = 5.0,
            nan = f64::NAN,
            replayed = false,
            shape = ?Shape { name: "a\"b" },
            error = %error,
            "call"
        );
        tracing::warn!(target: "valet::other", n = 1, "with {} args", 2);
    }

    fn lines(
        layer: impl FnOnce(
            Memory,
        )
            -> Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>,
    ) -> Vec<serde_json::Value> {
        let memory = Memory::default();
        let subscriber = tracing_subscriber::registry().with(layer(memory.clone()));
        tracing::subscriber::with_default(subscriber, events);
        let text = String::from_utf8(memory.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    #[test]
    fn the_same_objects_as_tracing_subscribers_json() {
        let ours = lines(|m| {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(m)
                    .event_format(FlatJson),
            )
        });
        let theirs = lines(|m| {
            Box::new(
                tracing_subscriber::fmt::layer()
                    .with_writer(m)
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
        });
        assert_eq!(ours.len(), 2);
        for (mut ours, mut theirs) in ours.into_iter().zip(theirs) {
            let (a, b) = (ours["timestamp"].take(), theirs["timestamp"].take());
            let (a, b) = (a.as_str().unwrap(), b.as_str().unwrap());
            assert_eq!(a.len(), b.len(), "{a} vs {b}");
            assert_eq!(a[..16], b[..16], "{a} vs {b}");
            // serde_json reads 5.0 back as a float, as our line writes it.
            assert_eq!(ours, theirs);
        }
    }

    #[test]
    fn keys_keep_tracing_subscribers_order() {
        let memory = Memory::default();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_writer(memory.clone())
                .event_format(FlatJson),
        );
        tracing::subscriber::with_default(subscriber, || tracing::info!(a = 1, "m"));
        let text = String::from_utf8(memory.0.lock().unwrap().clone()).unwrap();
        let rest = text.split_once("\",\"level\"").unwrap().1;
        assert_eq!(
            rest,
            ":\"INFO\",\"message\":\"m\",\"a\":1,\"target\":\"valet_telemetry::json::tests\"}\n"
        );
    }

    #[test]
    fn timestamps_in_utc() {
        let mut s = String::new();
        let at = |secs: u64, micros: u32| UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000);
        for (when, want) in [
            (at(0, 0), "1970-01-01T00:00:00.000000Z"),
            (at(951_782_400, 7), "2000-02-29T00:00:00.000007Z"),
            (at(1_796_349_109, 353_425), "2026-12-04T01:51:49.353425Z"),
            (at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z"),
        ] {
            s.clear();
            timestamp(&mut Writer::new(&mut s), when).unwrap();
            assert_eq!(s, want);
        }
    }
}
