//! Tests of the dump over segment bytes built in memory.

use super::*;
use kafki_storage::records::{assemble_batch, encode_record, BatchFields, NewRecord};
use proptest::prelude::*;

const BASE_TIMESTAMP: i64 = 1_700_000_000_000;

fn options() -> Options {
    Options {
        records: false,
        max_bytes: 64,
        allow_gaps: false,
        show_batches: true,
        list_index: None,
    }
}

/// A batch of `count` keyed records with one header each.
fn batch(
    base_offset: i64,
    epoch: i32,
    count: usize,
    codec: Compression,
    attributes: i16,
) -> Vec<u8> {
    let headers: &[(&[u8], Option<&[u8]>)] = &[(b"trace", Some(b"abc"))];
    let mut section = Vec::new();
    for index in 0..count {
        let key = format!("key-{index}");
        let value = format!("value-{base_offset}-{index}");
        encode_record(
            &mut section,
            &NewRecord {
                timestamp_delta: index as i64,
                offset_delta: index as i32,
                key: Some(key.as_bytes()),
                value: Some(value.as_bytes()),
                headers,
            },
        );
    }
    let fields = BatchFields {
        base_offset,
        partition_leader_epoch: epoch,
        attributes,
        last_offset_delta: count as i32 - 1,
        base_timestamp: BASE_TIMESTAMP + base_offset,
        max_timestamp: BASE_TIMESTAMP + base_offset + count as i64 - 1,
        producer_id: 7,
        producer_epoch: 2,
        base_sequence: base_offset as i32,
        records_count: count as i32,
    };
    let mut bytes = Vec::new();
    assemble_batch(&mut bytes, &fields, codec, &section);
    bytes
}

/// Five batches of three records (offsets 0..14), then `zeros` zero bytes.
/// Returns the bytes and each batch's position.
fn segment(zeros: usize) -> (Vec<u8>, Vec<u64>) {
    let mut bytes = Vec::new();
    let mut positions = Vec::new();
    for index in 0..5 {
        positions.push(bytes.len() as u64);
        let codec = Compression::ALL[index % Compression::ALL.len()];
        bytes.extend(batch(index as i64 * 3, 0, 3, codec, 0));
    }
    bytes.resize(bytes.len() + zeros, 0);
    (bytes, positions)
}

fn dump(options: Options, bytes: &[u8]) -> (Vec<Event>, Totals) {
    dump_segment_bytes(options, "test.log", Some(0), bytes, None, None)
}

fn problems(events: &[Event]) -> Vec<&Problem> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Problem(problem) => Some(problem),
            _ => None,
        })
        .collect()
}

fn batches(events: &[Event]) -> Vec<&BatchInfo> {
    events
        .iter()
        .filter_map(|event| match event {
            Event::Batch(batch) => Some(batch),
            _ => None,
        })
        .collect()
}

fn segment_summary(events: &[Event]) -> &SegmentSummary {
    events
        .iter()
        .find_map(|event| match event {
            Event::SegmentSummary(summary) => Some(summary),
            _ => None,
        })
        .expect("a segment summary")
}

#[test]
fn reports_every_batch_field_and_the_preallocated_trailer() {
    let (bytes, positions) = segment(4096);
    let (events, totals) = dump(options(), &bytes);
    assert!(problems(&events).is_empty(), "{:?}", problems(&events));
    let found = batches(&events);
    assert_eq!(found.len(), 5);
    for (index, batch) in found.iter().enumerate() {
        assert_eq!(batch.position, positions[index]);
        assert_eq!(batch.base_offset, index as i64 * 3);
        assert_eq!(batch.last_offset, index as i64 * 3 + 2);
        assert_eq!(batch.records_count, 3);
        assert_eq!(batch.codec, Compression::ALL[index].name());
        assert_eq!(batch.producer_id, 7);
        assert_eq!(batch.producer_epoch, 2);
        assert_eq!(batch.base_sequence, index as i32 * 3);
        assert_eq!(batch.base_timestamp, BASE_TIMESTAMP + index as i64 * 3);
        assert_eq!(batch.timestamp_type, "CreateTime");
        assert!(batch.crc_ok && batch.crc_stored == batch.crc_computed);
        assert!(!batch.transactional && !batch.control);
        let size = positions
            .get(index + 1)
            .copied()
            .unwrap_or(bytes.len() as u64 - 4096)
            - positions[index];
        assert_eq!(batch.batch_length as u64 + 12, size);
    }
    let summary = segment_summary(&events);
    assert_eq!(summary.zero_trailer_bytes, 4096);
    assert_eq!(summary.data_bytes, bytes.len() as u64 - 4096);
    assert_eq!(
        (summary.first_offset, summary.last_offset),
        (Some(0), Some(14))
    );
    assert_eq!((totals.batches, totals.records, totals.damage), (5, 15, 0));
    let text = render_text(&Event::SegmentSummary(summary.clone()));
    assert!(
        text.contains("end of data (4096 zero bytes preallocated)"),
        "{text}"
    );
    assert!(text.contains("2023-11-14T22:13:20.000Z"), "{text}");
}

#[test]
fn records_are_decoded_from_every_codec() {
    let (bytes, _) = segment(0);
    let (events, totals) = dump(
        Options {
            records: true,
            max_bytes: 8,
            ..options()
        },
        &bytes,
    );
    assert_eq!(
        totals.damage + totals.warnings,
        0,
        "{:?}",
        problems(&events)
    );
    let records: Vec<&RecordInfo> = events
        .iter()
        .filter_map(|event| match event {
            Event::Record(record) => Some(record),
            _ => None,
        })
        .collect();
    assert_eq!(records.len(), 15);
    for (index, record) in records.iter().enumerate() {
        assert_eq!(record.offset, index as i64);
        assert_eq!(
            record.timestamp,
            BASE_TIMESTAMP + (index as i64 / 3) * 3 + index as i64 % 3
        );
        let key = record.key.as_ref().expect("key");
        assert_eq!(
            key.text.as_deref(),
            Some(format!("key-{}", index % 3).as_str())
        );
        let value = record.value.as_ref().expect("value");
        let full = format!("value-{}-{}", index / 3 * 3, index % 3);
        assert_eq!(value.text.as_deref(), Some(&full[..8]));
        assert!(value.truncated && value.size == full.len(), "{value:?}");
        assert_eq!(record.headers.len(), 1);
        assert_eq!(record.headers[0].key.text.as_deref(), Some("trace"));
    }
    let line = render_text(&Event::Record(records[4].clone()));
    assert!(
        line.contains("offset=4") && line.contains("key=\"key-1\""),
        "{line}"
    );
    assert!(
        line.contains("value=\"value-3-\"...(9 bytes)")
            && line.contains("headers=[\"trace\"=\"abc\"]"),
        "{line}"
    );
}

#[test]
fn attributes_transactions_control_and_log_append_time() {
    let mut bytes = batch(0, 3, 2, Compression::None, ATTRIBUTE_TRANSACTIONAL);
    let mut control_section = Vec::new();
    encode_record(
        &mut control_section,
        &NewRecord {
            key: Some(&[0, 0, 0, 1]),
            value: Some(&[0, 0, 0, 0, 0, 3]),
            ..NewRecord::default()
        },
    );
    let control = BatchFields {
        base_offset: 2,
        partition_leader_epoch: 3,
        attributes: ATTRIBUTE_TRANSACTIONAL | ATTRIBUTE_CONTROL,
        records_count: 1,
        ..BatchFields::default()
    };
    assemble_batch(&mut bytes, &control, Compression::None, &control_section);
    bytes.extend(batch(3, 3, 1, Compression::None, ATTRIBUTE_LOG_APPEND_TIME));
    let (events, totals) = dump(
        Options {
            records: true,
            ..options()
        },
        &bytes,
    );
    assert_eq!(totals.damage, 0, "{:?}", problems(&events));
    let found = batches(&events);
    assert!(found[0].transactional && !found[0].control);
    assert!(found[1].transactional && found[1].control);
    assert_eq!(found[2].timestamp_type, "LogAppendTime");
    assert!(found.iter().all(|batch| batch.partition_leader_epoch == 3));
    let markers: Vec<Option<String>> = events
        .iter()
        .filter_map(|event| match event {
            Event::Record(record) => Some(record.control.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(markers, vec![None, None, Some("COMMIT".to_string()), None]);
    let line = render_text(&Event::Batch(found[1].clone()));
    assert!(
        line.contains("epoch=3") && line.contains("txn=true control=true"),
        "{line}"
    );
    assert!(line.contains("crc=0x") && line.ends_with(" ok"), "{line}");
}

#[test]
fn a_flipped_byte_names_the_batch_and_the_walk_goes_on() {
    let (mut bytes, positions) = segment(1024);
    let flip_at = positions[2] as usize + 70;
    bytes[flip_at] ^= 0x10;
    let (events, totals) = dump(options(), &bytes);
    let found = problems(&events);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].code, "bad_crc");
    assert_eq!(found[0].position, Some(positions[2]));
    assert_eq!(found[0].offset, Some(6));
    assert!(
        found[0].message.contains("offsets 6..8"),
        "{}",
        found[0].message
    );
    assert_eq!(
        batches(&events).len(),
        5,
        "the batches after the damage are still read"
    );
    assert_eq!(totals.damage, 1);
    assert!(!batches(&events)[2].crc_ok);
    let line = render_text(&Event::Problem(found[0].clone()));
    assert!(
        line.starts_with("  DAMAGE [bad_crc] test.log pos="),
        "{line}"
    );
}

#[test]
fn a_damaged_length_resyncs_at_the_next_valid_batch() {
    let (mut bytes, positions) = segment(0);
    let at = positions[1] as usize + 8;
    bytes[at..at + 4].copy_from_slice(&20i32.to_be_bytes());
    let (events, _) = dump(options(), &bytes);
    let found = problems(&events);
    assert_eq!(found[0].code, "bad_length", "{found:?}");
    assert!(
        found[0]
            .message
            .contains(&format!("next valid batch is at position {}", positions[2])),
        "{}",
        found[0].message
    );
    // The batch after the skipped one starts at 6, not 3.
    assert_eq!(found[1].code, "offset_gap", "{found:?}");
    assert_eq!(batches(&events).len(), 4);

    let mut huge = segment(0).0;
    huge[positions[1] as usize + 8..positions[1] as usize + 12]
        .copy_from_slice(&i32::MAX.to_be_bytes());
    let (events, _) = dump(options(), &huge);
    assert_eq!(problems(&events)[0].code, "truncated_batch");
    assert_eq!(batches(&events).len(), 4);
}

#[test]
fn a_truncated_tail_is_damage_after_the_good_batches() {
    let (bytes, positions) = segment(0);
    let cut = &bytes[..positions[4] as usize + 30];
    let (events, totals) = dump(options(), cut);
    let found = problems(&events);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].code, "truncated_header");
    assert_eq!(found[0].position, Some(positions[4]));
    let cut = &bytes[..positions[4] as usize + 70];
    let (events, _) = dump(options(), cut);
    assert_eq!(problems(&events)[0].code, "truncated_batch");
    let summary = segment_summary(&events);
    assert_eq!(summary.data_bytes, positions[4]);
    // The cut batch may end in zero bytes.
    assert_eq!(summary.unreadable_bytes + summary.zero_trailer_bytes, 70);
    assert_eq!(totals.batches, 4);
}

#[test]
fn zeros_followed_by_data_are_damage() {
    let (bytes, positions) = segment(0);
    let mut holed = bytes.clone();
    holed[positions[1] as usize..positions[2] as usize].fill(0);
    let (events, _) = dump(options(), &holed);
    let found = problems(&events);
    assert_eq!(found[0].code, "zero_bytes_then_data", "{found:?}");
    assert_eq!(found[0].position, Some(positions[1]));
    assert_eq!(batches(&events).len(), 4);
}

#[test]
fn offsets_outside_the_crc_are_checked() {
    let (mut bytes, positions) = segment(0);
    // The base offset lies outside the CRC: only continuity shows it.
    let at = positions[2] as usize;
    bytes[at..at + 8].copy_from_slice(&2i64.to_be_bytes());
    let (events, _) = dump(options(), &bytes);
    let codes: Vec<&str> = problems(&events)
        .iter()
        .map(|problem| problem.code)
        .collect();
    assert_eq!(
        codes,
        ["offsets_not_increasing", "offset_gap"],
        "{:?}",
        problems(&events)
    );

    let (mut bytes, positions) = segment(0);
    let at = positions[2] as usize;
    bytes[at..at + 8].copy_from_slice(&100i64.to_be_bytes());
    let (events, totals) = dump(options(), &bytes);
    assert_eq!(problems(&events)[0].code, "offset_gap");
    assert_eq!(totals.damage, 2, "{:?}", problems(&events));
    let (_, relaxed) = dump(
        Options {
            allow_gaps: true,
            ..options()
        },
        &bytes,
    );
    assert_eq!((relaxed.damage, relaxed.warnings), (1, 1));

    // A segment named 00..0100.log must start at offset 100.
    let (bytes, _) = segment(0);
    let (events, _) = dump_segment_bytes(options(), "x.log", Some(100), &bytes, None, None);
    assert_eq!(problems(&events)[0].code, "offset_below_segment_base");
}

#[test]
fn leader_epochs_must_not_go_back() {
    let mut bytes = batch(0, 5, 1, Compression::None, 0);
    bytes.extend(batch(1, 4, 1, Compression::None, 0));
    let (events, _) = dump(options(), &bytes);
    let found = problems(&events);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].code, "epoch_decrease");
    assert_eq!(found[0].offset, Some(1));
}

fn offset_index(entries: &[(u32, u32)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(relative, position)| [relative.to_be_bytes(), position.to_be_bytes()].concat())
        .collect()
}

fn time_index(entries: &[(i64, u32)]) -> Vec<u8> {
    entries
        .iter()
        .flat_map(|(timestamp, relative)| {
            [
                timestamp.to_be_bytes().to_vec(),
                relative.to_be_bytes().to_vec(),
            ]
            .concat()
        })
        .collect()
}

fn index_codes(index: &[u8], time: &[u8]) -> (Vec<&'static str>, Vec<IndexSummary>) {
    let (bytes, _) = segment(512);
    let (events, _) =
        dump_segment_bytes(options(), "s.log", Some(0), &bytes, Some(index), Some(time));
    let codes = problems(&events)
        .iter()
        .map(|problem| problem.code)
        .collect();
    let summaries = events
        .iter()
        .filter_map(|event| match event {
            Event::IndexSummary(summary) => Some(summary.clone()),
            _ => None,
        })
        .collect();
    (codes, summaries)
}

#[test]
fn indexes_are_checked_against_the_batches() {
    let (_, positions) = segment(0);
    let p = |index: usize| positions[index] as u32;
    let good_index = offset_index(&[(5, p(1)), (11, p(3))]);
    let good_time = time_index(&[(BASE_TIMESTAMP + 5, 5), (BASE_TIMESTAMP + 14, 14)]);
    let (codes, summaries) = index_codes(&good_index, &good_time);
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].entries, 2);

    // Kafka preallocates the active segment's index: zero entries at the end.
    let mut padded = good_index.clone();
    padded.resize(padded.len() + 80, 0);
    let (codes, summaries) = index_codes(&padded, &good_time);
    assert!(codes.is_empty(), "{codes:?}");
    assert_eq!((summaries[0].entries, summaries[0].zero_entries), (2, 10));

    let cases: Vec<(Vec<u8>, Vec<u8>, &str)> = vec![
        (
            offset_index(&[(5, p(1)), (11, 100_000)]),
            good_time.clone(),
            "index_past_data",
        ),
        (
            offset_index(&[(5, p(1) + 3)]),
            good_time.clone(),
            "index_not_batch_start",
        ),
        (
            offset_index(&[(9, p(1))]),
            good_time.clone(),
            "index_offset_mismatch",
        ),
        (
            offset_index(&[(11, p(3)), (5, p(1))]),
            good_time.clone(),
            "index_not_increasing",
        ),
        (good_index[..11].to_vec(), good_time.clone(), "index_ragged"),
        (
            good_index.clone(),
            time_index(&[(BASE_TIMESTAMP + 9, 9), (BASE_TIMESTAMP + 5, 11)]),
            "timeindex_not_monotonic",
        ),
        (
            good_index.clone(),
            time_index(&[(BASE_TIMESTAMP + 5, 40)]),
            "timeindex_past_data",
        ),
        (
            good_index.clone(),
            time_index(&[(BASE_TIMESTAMP + 500, 5)]),
            "timeindex_timestamp_too_high",
        ),
        (
            good_index.clone(),
            good_time[..13].to_vec(),
            "timeindex_ragged",
        ),
    ];
    for (index, time, wanted) in cases {
        let (codes, _) = index_codes(&index, &time);
        assert!(codes.contains(&wanted), "{wanted}: {codes:?}");
    }
}

#[test]
fn listed_index_entries_come_in_file_order_with_absolute_offsets() {
    let (bytes, positions) = segment(0);
    let p = |index: usize| positions[index] as u32;
    let index = offset_index(&[(5, p(1)), (11, p(3))]);
    let time = time_index(&[(BASE_TIMESTAMP + 5, 5), (BASE_TIMESTAMP + 14, 14)]);
    for (kind, wanted) in [
        (
            "offset",
            vec![(0, 105, Some(p(1)), None), (1, 111, Some(p(3)), None)],
        ),
        (
            "time",
            vec![
                (0, 105, None, Some(BASE_TIMESTAMP + 5)),
                (1, 114, None, Some(BASE_TIMESTAMP + 14)),
            ],
        ),
    ] {
        let options = Options {
            list_index: Some(kind),
            ..options()
        };
        let (events, _) = dump_segment_bytes(
            options,
            "s.log",
            Some(100),
            &bytes,
            Some(&index),
            Some(&time),
        );
        let listed: Vec<_> = events
            .iter()
            .filter_map(|event| match event {
                Event::IndexEntry(entry) => Some((
                    entry.entry,
                    entry.offset.unwrap_or(-1),
                    entry.position,
                    entry.timestamp,
                )),
                _ => None,
            })
            .collect();
        assert_eq!(listed, wanted, "{kind}");
    }
}

#[test]
fn problems_beyond_the_cap_are_counted_not_printed() {
    // 300 one-record batches with bad CRCs.
    let mut bytes = Vec::new();
    for offset in 0..300 {
        let mut one = batch(offset, 0, 1, Compression::None, 0);
        let last = one.len() - 1;
        one[last] ^= 1;
        bytes.extend(one);
    }
    let (events, totals) = dump(options(), &bytes);
    assert_eq!(totals.damage, 300);
    assert_eq!(problems(&events).len(), PROBLEMS_SHOWN_PER_FILE as usize);
    assert_eq!(segment_summary(&events).problems_not_shown, 200);
}

#[test]
fn shown_bytes_and_timestamps() {
    assert_eq!(show(b"hello", 64).text.as_deref(), Some("hello"));
    let binary = show(&[0, 1, 0xff], 64);
    assert_eq!((binary.text, binary.hex.as_deref()), (None, Some("0001ff")));
    let cut = show("héllo".as_bytes(), 2);
    assert_eq!(
        (cut.text.as_deref(), cut.truncated, cut.size),
        (Some("h"), true, 6)
    );
    assert_eq!(format_ms(BASE_TIMESTAMP), "2023-11-14T22:13:20.000Z");
    assert_eq!(
        parse_partition_dir_name("my-topic-12"),
        Some(("my-topic", 12))
    );
    assert_eq!(parse_partition_dir_name("topic-"), None);
    assert_eq!(parse_partition_dir_name("-3"), None);
    assert_eq!(parse_partition_dir_name("kafki-data"), None);
}

/// Every event renders, as text and as JSON, without panicking.
fn render_all(events: &[Event]) {
    for event in events {
        let _ = render_text(event);
        serde_json::to_string(event).expect("events serialize");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn random_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        index in proptest::collection::vec(any::<u8>(), 0..64),
        time in proptest::collection::vec(any::<u8>(), 0..64),
        base in proptest::option::of(0u64..1000),
    ) {
        let options = Options { records: true, ..options() };
        let (events, _) = dump_segment_bytes(options, "fuzz.log", base, &bytes, Some(&index), Some(&time));
        render_all(&events);
    }

    #[test]
    fn garbled_segments_never_panic(
        edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0u8..4), 1..8),
        cut in proptest::option::of(any::<proptest::sample::Index>()),
    ) {
        let (mut bytes, positions) = segment(256);
        for (at, value, kind) in edits {
            let at = at.index(bytes.len());
            match kind {
                0 => bytes[at] ^= value | 1,
                1 => bytes[at] = value,
                2 => bytes.insert(at, value),
                _ => { bytes.remove(at); }
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        let index = offset_index(&[(5, positions[1] as u32), (11, positions[3] as u32)]);
        let options = Options { records: true, ..options() };
        let (events, totals) = dump_segment_bytes(options, "garbled.log", Some(0), &bytes, Some(&index), None);
        render_all(&events);
        // Whatever was found, the counts add up.
        let shown = problems(&events).len() as u64;
        prop_assert!(shown <= totals.damage + totals.warnings);
    }

    #[test]
    fn a_single_flip_in_a_batch_is_always_found(at in any::<proptest::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, positions) = segment(0);
        let end = bytes.len();
        let at = at.index(end);
        // Raising the last batch's leader epoch (outside the CRC) is
        // what a new leader does: nothing can tell it from damage.
        let last_epoch = positions[4] as usize + 12..positions[4] as usize + 16;
        prop_assume!(!last_epoch.contains(&at) || (at == last_epoch.start && bit == 7));
        bytes[at] ^= 1 << bit;
        let (events, totals) = dump(options(), &bytes);
        // Inside a batch header's producer-set fields or body, the CRC
        // catches it; in the base offset, length or epoch, continuity
        // or the next batch does. Either way: damage, near the flip.
        prop_assert!(totals.damage > 0, "flip at {at} not found: {:?}", problems(&events));
        let batch_start = positions.iter().rev().find(|start| **start <= at as u64).copied().unwrap_or(0);
        let first = problems(&events).first().and_then(|problem| problem.position);
        prop_assert!(first.is_some_and(|position| position >= batch_start.saturating_sub(1)), "flip at {at} in batch at {batch_start}, first problem at {first:?}");
    }
}
