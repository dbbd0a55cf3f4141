//! The access log's line format: one line per request on target
//! [`ACCESS_TARGET`], written straight from the event's typed fields.
//!
//! The general formatter renders every field through `Debug` and
//! `core::fmt`; on a small cached hit that was about a twentieth of lasti's
//! CPU. This one writes integers with `itoa`, floats with `ryu` and strings
//! as they are, in the same layout (timestamp, level, target, then
//! `key=value` pairs, or one JSON object), and hands every other event to
//! the general formatter. The event still goes through `tracing`, so log
//! filters and `RUST_LOG` treat it like any other.

use std::fmt;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The target of the access log's events.
pub const ACCESS_TARGET: &str = "lasti::access";

/// Formats access events itself and every other event with `other`.
pub struct AccessOr<F> {
    other: F,
    json: bool,
}

impl<F> AccessOr<F> {
    /// Human-readable access lines: `key=value` pairs.
    pub fn human(other: F) -> Self {
        AccessOr { other, json: false }
    }

    /// Access lines as flat JSON objects, as the JSON formatter writes them.
    pub fn json(other: F) -> Self {
        AccessOr { other, json: true }
    }
}

impl<S, N, F> FormatEvent<S, N> for AccessOr<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if event.metadata().target() != ACCESS_TARGET {
            return self.other.format_event(ctx, writer, event);
        }
        let level = event.metadata().level().as_str();
        if self.json {
            write_json(writer, SystemTime::now(), level, event)
        } else {
            write_human(writer, SystemTime::now(), level, event)
        }
    }
}

fn write_human(
    mut out: Writer<'_>,
    now: SystemTime,
    level: &str,
    event: &Event<'_>,
) -> fmt::Result {
    let ansi = out.has_ansi_escapes();
    let time = humantime::format_rfc3339_micros(now);
    match ansi {
        true => write!(
            out,
            "\x1b[2m{time}\x1b[0m \x1b[32m{level:>5}\x1b[0m \x1b[2m{ACCESS_TARGET}\x1b[0m\x1b[2m:\x1b[0m"
        )?,
        false => write!(out, "{time} {level:>5} {ACCESS_TARGET}:")?,
    }
    let mut fields = Fields::new(&mut out, false);
    event.record(&mut fields);
    fields.result?;
    out.write_char('\n')
}

fn write_json(mut out: Writer<'_>, now: SystemTime, level: &str, event: &Event<'_>) -> fmt::Result {
    let time = humantime::format_rfc3339_micros(now);
    write!(
        out,
        "{{\"timestamp\":\"{time}\",\"level\":\"{level}\",\"target\":\"{ACCESS_TARGET}\""
    )?;
    let mut fields = Fields::new(&mut out, true);
    event.record(&mut fields);
    fields.result?;
    out.write_str("}\n")
}

/// Writes each field as it is visited, as ` key=value` or `,"key":value`.
struct Fields<'w, 'a> {
    out: &'w mut Writer<'a>,
    json: bool,
    result: fmt::Result,
}

impl<'w, 'a> Fields<'w, 'a> {
    fn new(out: &'w mut Writer<'a>, json: bool) -> Self {
        Fields {
            out,
            json,
            result: Ok(()),
        }
    }

    fn key(&mut self, field: &Field) -> fmt::Result {
        match self.json {
            true => {
                self.out.write_str(",\"")?;
                self.out.write_str(field.name())?;
                self.out.write_str("\":")
            }
            false => {
                self.out.write_char(' ')?;
                self.out.write_str(field.name())?;
                self.out.write_char('=')
            }
        }
    }

    fn put(&mut self, field: &Field, value: impl FnOnce(&mut Writer<'a>, bool) -> fmt::Result) {
        if self.result.is_ok() {
            self.result = self.key(field).and_then(|()| value(self.out, self.json));
        }
    }
}

impl Visit for Fields<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, |out, json| match json {
            true => json_string(out, value),
            false => human_string(out, value),
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, |out, _| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, |out, _| {
            out.write_str(itoa::Buffer::new().format(value))
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, |out, _| {
            out.write_str(if value { "true" } else { "false" })
        });
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, |out, json| match (value.is_finite(), json) {
            (true, _) => out.write_str(ryu::Buffer::new().format_finite(value)),
            (false, true) => out.write_str("null"),
            (false, false) => write!(out, "{value}"),
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, |out, json| match json {
            true => json_string(out, &format!("{value:?}")),
            false => write!(out, "{value:?}"),
        });
    }
}

/// A string that needs no quotes stays bare (paths, methods, outcomes);
/// one with spaces, quotes, `=` or control characters is quoted and escaped.
fn human_string(out: &mut Writer<'_>, value: &str) -> fmt::Result {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != 0x7f);
    match bare {
        true => out.write_str(value),
        false => write!(out, "{value:?}"),
    }
}

/// A JSON string literal, escaped as RFC 8259 requires.
fn json_string(out: &mut Writer<'_>, value: &str) -> fmt::Result {
    out.write_char('"')?;
    let mut plain = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.write_str(&value[plain..i])?;
        match escape {
            "" => write!(out, "\\u{b:04x}")?,
            e => out.write_str(e)?,
        }
        plain = i + 1;
    }
    out.write_str(&value[plain..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::Format;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    fn lines(json: bool, emit: impl FnOnce()) -> String {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false);
        let subscriber: Box<dyn Subscriber + Send + Sync> =
            match json {
                false => Box::new(
                    tracing_subscriber::registry()
                        .with(layer.event_format(AccessOr::human(Format::default()))),
                ),
                true => Box::new(
                    tracing_subscriber::registry().with(layer.json().event_format(AccessOr::json(
                        Format::default().json().flatten_event(true),
                    ))),
                ),
            };
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    use tracing_subscriber::layer::SubscriberExt as _;

    fn access(path: &str) {
        tracing::info!(
            target: "lasti::access",
            method = "GET",
            path,
            status = 200u64,
            bytes = 183u64,
            outcome = "hit",
            error = "-",
            complete = true,
            ms = 0.125,
        );
    }

    #[test]
    fn human_lines_carry_every_field_bare() {
        let out = lines(false, || access("/v2/library/alpine/blobs/sha256:ab"));
        let line = out.strip_suffix('\n').expect("one line");
        let (time, rest) = line.split_once(' ').expect("timestamp first");
        assert!(time.ends_with('Z') && time.len() == 27, "{time}");
        assert_eq!(
            rest,
            " INFO lasti::access: method=GET path=/v2/library/alpine/blobs/sha256:ab \
             status=200 bytes=183 outcome=hit error=- complete=true ms=0.125"
        );
    }

    #[test]
    fn human_lines_quote_what_would_split_a_field() {
        let out = lines(false, || access("/v2/a b=\"c\""));
        assert!(out.contains(r#" path="/v2/a b=\"c\"" status=200"#), "{out}");
    }

    #[test]
    fn json_lines_are_flat_objects_with_typed_values() {
        let out = lines(true, || access("/v2/x\"\\\n\u{1}"));
        let value: serde_json::Value = serde_json::from_str(out.trim_end()).expect(&out);
        assert_eq!(value["target"], "lasti::access");
        assert_eq!(value["level"], "INFO");
        assert_eq!(value["path"], "/v2/x\"\\\n\u{1}");
        assert_eq!(value["status"], 200);
        assert_eq!(value["bytes"], 183);
        assert_eq!(value["complete"], true);
        assert_eq!(value["ms"], 0.125);
        assert_eq!(value["outcome"], "hit");
        let time = value["timestamp"].as_str().expect("timestamp");
        assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    }

    #[test]
    fn other_events_keep_the_general_format() {
        let out = lines(
            false,
            || tracing::warn!(target: "lasti::cache", path = "/x", "evicted"),
        );
        assert!(
            out.contains("WARN lasti::cache: evicted path=\"/x\""),
            "{out}"
        );
        let out = lines(
            true,
            || tracing::warn!(target: "lasti::cache", n = 3u64, "evicted"),
        );
        let value: serde_json::Value = serde_json::from_str(out.trim_end()).expect(&out);
        assert_eq!(value["message"], "evicted");
        assert_eq!(value["n"], 3);
    }
}
