//! raft-rs's logging, forwarded to `tracing`: raft-rs logs through an
//! `slog::Logger` (`RawNode::new` takes one), the broker logs through
//! `tracing`. [`tracing_logger`] builds a logger whose only drain turns
//! each slog record into a `tracing` event with target `raft`, so raft's
//! lines land in the broker's log, filtered by the same `RUST_LOG`.

use std::fmt::{self, Write as _};

use slog::{Drain, Key, Level, Never, OwnedKVList, Record, Serializer, KV};

/// An `slog::Logger` that forwards to `tracing` (target `raft`).
pub fn tracing_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// The drain: slog levels map to tracing levels (critical → error).
struct TracingDrain;

/// Emits one event at a level known at compile time (tracing's macros need
/// a constant level), skipping the formatting when nobody listens.
macro_rules! forward {
    ($level:expr, $record:expr, $values:expr) => {
        if tracing::enabled!(target: "raft", $level) {
            let line = format_line($record, $values);
            tracing::event!(target: "raft", $level, module = $record.module(), "{line}");
        }
    };
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), Never> {
        match record.level() {
            Level::Critical | Level::Error => forward!(tracing::Level::ERROR, record, values),
            Level::Warning => forward!(tracing::Level::WARN, record, values),
            Level::Info => forward!(tracing::Level::INFO, record, values),
            Level::Debug => forward!(tracing::Level::DEBUG, record, values),
            Level::Trace => forward!(tracing::Level::TRACE, record, values),
        }
        Ok(())
    }
}

/// The message followed by the record's and the logger's key-values,
/// ` key=value` each (raft-rs puts the node id and term there).
fn format_line(record: &Record<'_>, values: &OwnedKVList) -> String {
    let mut line = KvLine(record.msg().to_string());
    // Formatting into a String cannot fail; a value's own Display might,
    // and then the line just lacks that value.
    let _ = record.kv().serialize(record, &mut line);
    let _ = values.serialize(record, &mut line);
    line.0
}

struct KvLine(String);

impl Serializer for KvLine {
    fn emit_arguments(&mut self, key: Key, val: &fmt::Arguments<'_>) -> slog::Result {
        write!(self.0, " {key}={val}")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing::span::{Attributes, Id, Record as SpanRecord};
    use tracing::{Event, Metadata, Subscriber};

    /// Keeps (level, target, message) of every event.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<(tracing::Level, String, String)>>>);

    struct MessageOf(String);

    impl Visit for MessageOf {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }

    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &Attributes<'_>) -> Id {
            Id::from_u64(1)
        }
        fn record(&self, _: &Id, _: &SpanRecord<'_>) {}
        fn record_follows_from(&self, _: &Id, _: &Id) {}
        fn event(&self, event: &Event<'_>) {
            let mut message = MessageOf(String::new());
            event.record(&mut message);
            let meta = event.metadata();
            self.0
                .lock()
                .unwrap()
                .push((*meta.level(), meta.target().to_string(), message.0));
        }
        fn enter(&self, _: &Id) {}
        fn exit(&self, _: &Id) {}
    }

    #[test]
    fn slog_records_become_tracing_events_with_their_key_values() {
        let capture = Capture::default();
        tracing::subscriber::with_default(capture.clone(), || {
            let logger = super::tracing_logger().new(slog::o!("raft_id" => 7));
            slog::warn!(logger, "became leader at term {}", 3; "term" => 3);
            slog::crit!(logger, "boom");
        });
        let events = capture.0.lock().unwrap().clone();
        assert_eq!(events.len(), 2, "{events:?}");
        assert_eq!(events[0].0, tracing::Level::WARN);
        assert_eq!(events[0].1, "raft");
        assert_eq!(events[0].2, "became leader at term 3 term=3 raft_id=7");
        assert_eq!(events[1].0, tracing::Level::ERROR);
        assert_eq!(events[1].2, "boom raft_id=7");
    }
}
