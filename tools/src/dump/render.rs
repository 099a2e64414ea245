//! The text rendering of each event.

use super::*;

/// The text form of one event (one or more lines, no final newline).
pub fn render_text(event: &Event) -> String {
    match event {
        Event::DataDir {
            path,
            partitions,
            other,
        } => {
            let mut line = format!(
                "data directory {path}: {partitions} partition{}",
                plural(*partitions as u64)
            );
            if !other.is_empty() {
                line.push_str(&format!("; other entries: {}", other.join(", ")));
            }
            line
        }
        Event::Partition {
            path,
            topic,
            partition,
            segments,
            other_files,
        } => {
            let mut line = format!("partition {path}");
            if let (Some(topic), Some(partition)) = (topic, partition) {
                line.push_str(&format!(" (topic {topic}, partition {partition})"));
            }
            line.push_str(&format!(": {segments} segment{}", plural(*segments as u64)));
            if !other_files.is_empty() {
                line.push_str(&format!("; other files: {}", other_files.join(", ")));
            }
            line
        }
        Event::Segment {
            path,
            base_offset,
            file_bytes,
        } => {
            let base = base_offset.map_or_else(String::new, |base| format!(", base offset {base}"));
            format!("segment {path}: {file_bytes} bytes{base}")
        }
        Event::Batch(batch) => {
            let crc = if batch.crc_ok {
                format!("crc={:#010x} ok", batch.crc_stored)
            } else {
                format!(
                    "crc={:#010x} BAD computed={:#010x}",
                    batch.crc_stored, batch.crc_computed
                )
            };
            format!(
                "  batch pos={} offsets={}..{} count={} length={} epoch={} codec={} ts_type={} \
                 txn={} control={} base_ts={} max_ts={} producer_id={} producer_epoch={} \
                 base_seq={} {crc}",
                batch.position,
                batch.base_offset,
                batch.last_offset,
                batch.records_count,
                batch.batch_length,
                batch.partition_leader_epoch,
                batch.codec,
                batch.timestamp_type,
                batch.transactional,
                batch.control,
                batch.base_timestamp,
                batch.max_timestamp,
                batch.producer_id,
                batch.producer_epoch,
                batch.base_sequence,
            )
        }
        Event::Record(record) => {
            let mut line = format!(
                "    record offset={} ts={} key={} value={}",
                record.offset,
                record.timestamp,
                shown_text(record.key.as_ref()),
                shown_text(record.value.as_ref())
            );
            if !record.headers.is_empty() {
                let headers: Vec<String> = record
                    .headers
                    .iter()
                    .map(|header| {
                        format!(
                            "{}={}",
                            shown_text(Some(&header.key)),
                            shown_text(header.value.as_ref())
                        )
                    })
                    .collect();
                line.push_str(&format!(" headers=[{}]", headers.join(", ")));
            }
            if let Some(control) = &record.control {
                line.push_str(&format!(" control={control}"));
            }
            line
        }
        Event::IndexEntry(entry) => {
            let offset = entry
                .offset
                .map_or_else(|| "?".to_string(), |offset| offset.to_string());
            match (entry.position, entry.timestamp) {
                (Some(position), _) => format!(
                    "  entry {} relative_offset={} offset={offset} position={position}",
                    entry.entry, entry.relative_offset
                ),
                (None, Some(timestamp)) => format!(
                    "  entry {} timestamp={timestamp} relative_offset={} offset={offset}",
                    entry.entry, entry.relative_offset
                ),
                (None, None) => format!("  entry {}", entry.entry),
            }
        }
        Event::Problem(problem) => {
            let word = match problem.severity {
                Severity::Damage => "DAMAGE",
                Severity::Warning => "WARNING",
            };
            let mut place = file_name_of(&problem.path);
            if let Some(position) = problem.position {
                place.push_str(&format!(" pos={position}"));
            }
            if let Some(offset) = problem.offset {
                place.push_str(&format!(" offset={offset}"));
            }
            format!("  {word} [{}] {place}: {}", problem.code, problem.message)
        }
        Event::SegmentSummary(summary) => {
            let offsets = match (summary.first_offset, summary.last_offset) {
                (Some(first), Some(last)) => format!("offsets {first}..{last}"),
                _ => "no offsets".to_string(),
            };
            let end = if summary.unreadable_bytes > 0 {
                format!("{} unreadable bytes at the end", summary.unreadable_bytes)
            } else if summary.zero_trailer_bytes > 0 {
                format!(
                    "end of data ({} zero bytes preallocated)",
                    summary.zero_trailer_bytes
                )
            } else {
                "end of data at end of file".to_string()
            };
            let times = match (summary.min_timestamp, summary.max_timestamp) {
                (Some(min), Some(max)) => {
                    format!(", timestamps {} .. {}", format_ms(min), format_ms(max))
                }
                _ => String::new(),
            };
            format!(
                "  segment summary: {} batches, {} records, {offsets}, {} data bytes, {end}{times}, {}",
                summary.batches,
                summary.records,
                summary.data_bytes,
                problems_text(summary.damage, summary.warnings, summary.problems_not_shown)
            )
        }
        Event::IndexSummary(summary) => {
            let zeros = if summary.zero_entries > 0 {
                format!(" (+{} zero entries preallocated)", summary.zero_entries)
            } else {
                String::new()
            };
            let kind = if summary.kind == "offset" {
                "index"
            } else {
                "timeindex"
            };
            format!(
                "  {kind} {}: {} entries{zeros}, {}",
                file_name_of(&summary.path),
                summary.entries,
                problems_text(summary.damage, summary.warnings, summary.problems_not_shown)
            )
        }
        Event::PartitionSummary(summary) => {
            let offsets = match (summary.first_offset, summary.next_offset) {
                (Some(first), Some(next)) => format!("offsets {first}..{}", next - 1),
                _ => "no batches".to_string(),
            };
            let optional = |value: Option<u64>| {
                value.map_or_else(|| "-".to_string(), |value| value.to_string())
            };
            let epochs = match &summary.leader_epoch_checkpoint {
                Some(entries) if entries.is_empty() => "none".to_string(),
                Some(entries) => entries
                    .iter()
                    .map(|(epoch, start)| format!("{epoch}@{start}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                None => "-".to_string(),
            };
            format!(
                "partition summary {}: {}, {}, {}, {offsets}, log start {}, recovery point {}, \
                 leader epochs {epochs}, clean shutdown marker {}, {}",
                file_name_of(&summary.path),
                counted(summary.segments as u64, "segment"),
                counted(summary.batches, "batch"),
                counted(summary.records, "record"),
                optional(summary.log_start_offset),
                optional(summary.recovery_point),
                if summary.clean_shutdown_marker {
                    "present"
                } else {
                    "absent"
                },
                problems_text(summary.damage, summary.warnings, 0)
            )
        }
        Event::Summary(totals) => format!(
            "summary: {}, {}, {}, {}, {}",
            counted(totals.partitions, "partition"),
            counted(totals.segments, "segment"),
            counted(totals.batches, "batch"),
            counted(totals.records, "record"),
            problems_text(totals.damage, totals.warnings, 0)
        ),
    }
}

/// `3 batches`, `1 batch`.
pub(super) fn counted(count: u64, noun: &str) -> String {
    let suffix = match (count, noun.ends_with("ch")) {
        (1, _) => "",
        (_, true) => "es",
        _ => "s",
    };
    format!("{count} {noun}{suffix}")
}

pub(super) fn problems_text(damage: u64, warnings: u64, not_shown: u64) -> String {
    let mut text = if damage == 0 && warnings == 0 {
        "ok".to_string()
    } else {
        format!("{damage} damage, {warnings} warning{}", plural(warnings))
    };
    if not_shown > 0 {
        text.push_str(&format!(" ({not_shown} not shown)"));
    }
    text
}

pub(super) fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

pub(super) fn shown_text(shown: Option<&Shown>) -> String {
    let Some(shown) = shown else {
        return "null".to_string();
    };
    let mut text = match (&shown.text, &shown.hex) {
        (Some(text), _) => format!("{text:?}"),
        (None, Some(hex)) => format!("hex:{hex}"),
        (None, None) => String::new(),
    };
    if shown.truncated {
        text.push_str(&format!("...({} bytes)", shown.size));
    }
    text
}

pub(super) fn file_name_of(path: &str) -> String {
    Path::new(path).file_name().map_or_else(
        || path.to_string(),
        |name| name.to_string_lossy().into_owned(),
    )
}

/// Shows `bytes` as text when printable UTF-8, else as hex, cut at `max`.
pub fn show(bytes: &[u8], max: usize) -> Shown {
    let truncated = bytes.len() > max;
    let prefix = &bytes[..bytes.len().min(max)];
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => Some(text),
        // Cut inside a multi-byte character: show up to it.
        Err(error) if truncated && error.error_len().is_none() => {
            std::str::from_utf8(&prefix[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    let printable = |text: &&str| {
        text.chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
    };
    match text.filter(printable) {
        Some(text) => Shown {
            size: bytes.len(),
            text: Some(text.to_string()),
            hex: None,
            truncated,
        },
        None => Shown {
            size: bytes.len(),
            text: None,
            hex: Some(prefix.iter().map(|byte| format!("{byte:02x}")).collect()),
            truncated,
        },
    }
}
