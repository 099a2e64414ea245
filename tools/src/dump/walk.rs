//! The walk: data dirs, partitions and segments in order, batches and
//! records, checkpoints and epochs, with every problem reported as an event.

use super::*;

/// Leader epochs seen along a partition's batches.
#[derive(Debug, Default)]
pub(super) struct EpochTrack {
    pub(super) last: Option<i32>,
    pub(super) changes: Vec<(i32, i64)>,
}

/// What walking one segment found.
#[derive(Debug, Default)]
pub(super) struct SegmentOutcome {
    pub(super) first_offset: Option<i64>,
    /// One past the last offset of the last batch walked.
    pub(super) next_offset: Option<i64>,
    pub(super) batches: u64,
    pub(super) records: u64,
    pub(super) damage: u64,
    pub(super) warnings: u64,
}

/// Index files of a segment, as loaded.
#[derive(Default)]
pub(super) struct SegmentIndexes {
    pub(super) offset: Option<OffsetIndexCheck>,
    pub(super) time: Option<TimeIndexCheck>,
}

/// Walks files and reports what it finds to a [`Sink`].
pub struct Dumper<'s> {
    options: Options,
    sink: &'s mut dyn Sink,
    output_error: Option<io::Error>,
    totals: Totals,
    first_damage: Option<Problem>,
    /// Offset gaps ending at or below this are the cleaner's (the bound of
    /// the partition's `cleaner-checkpoint`; 0 without one).
    gaps_below: u64,
}

impl<'s> Dumper<'s> {
    pub fn new(options: Options, sink: &'s mut dyn Sink) -> Self {
        Self {
            options,
            sink,
            output_error: None,
            totals: Totals::default(),
            first_damage: None,
            gaps_below: 0,
        }
    }

    /// The gap bound of the partition directory `dir`: the cleaner
    /// checkpoint's, `u64::MAX` (with a warning) when it does not decode, as
    /// Kafki's recovery treats it.
    pub(super) fn load_gaps_below(&mut self, dir: &Path, tally: &mut Tally) {
        let path = dir.join(CLEANER_FILE);
        self.gaps_below = match fs::read_to_string(&path) {
            Err(_) => 0,
            Ok(text) => match CleanerCheckpoint::decode(&text) {
                Some(checkpoint) => checkpoint.gaps_below(),
                None => {
                    let label = path.display().to_string();
                    self.report(
                        tally,
                        warning(
                            "cleaner_checkpoint",
                            &label,
                            None,
                            None,
                            "cleaner checkpoint does not parse: offset gaps are accepted everywhere, as Kafki's recovery does".into(),
                        ),
                    );
                    u64::MAX
                }
            },
        };
    }

    /// The totals, the first damage found, and the first output error.
    pub fn finish(self) -> (Totals, Option<Problem>, Option<io::Error>) {
        (self.totals, self.first_damage, self.output_error)
    }

    /// Whether output failed (e.g. a closed pipe): stop walking.
    pub(super) fn stopped(&self) -> bool {
        self.output_error.is_some()
    }

    pub(super) fn emit(&mut self, event: Event) {
        if self.output_error.is_none() {
            if let Err(error) = self.sink.emit(&event) {
                self.output_error = Some(error);
            }
        }
    }

    pub(super) fn report(&mut self, tally: &mut Tally, problem: Problem) {
        match problem.severity {
            Severity::Damage => {
                tally.damage += 1;
                self.totals.damage += 1;
                if self.first_damage.is_none() {
                    self.first_damage = Some(problem.clone());
                }
            }
            Severity::Warning => {
                tally.warnings += 1;
                self.totals.warnings += 1;
            }
        }
        if tally.shown < PROBLEMS_SHOWN_PER_FILE {
            tally.shown += 1;
            self.emit(Event::Problem(problem));
        }
    }

    /// Dumps whatever `path` is, then the overall summary.
    pub fn dump_path(&mut self, path: &Path) -> anyhow::Result<()> {
        let metadata =
            fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if metadata.is_dir() {
            if is_partition_dir(path)? {
                self.dump_partition(path)?;
            } else {
                self.dump_data_dir(path)?;
            }
        } else {
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.ends_with(".log") {
                let mut epochs = EpochTrack::default();
                let base = parse_log_file_name(&name);
                if let Some(dir) = path.parent() {
                    self.load_gaps_below(dir, &mut Tally::default());
                }
                self.dump_segment_file(path, base, None, &mut epochs);
            } else if let Some(stem) = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
            {
                // List the entries, checked against the segment beside it.
                self.options.show_batches = false;
                self.options.records = false;
                self.options.list_index = Some(if name.ends_with(".index") {
                    "offset"
                } else {
                    "time"
                });
                let log = path.with_file_name(format!("{stem}.log"));
                let base = parse_log_file_name(&format!("{stem}.log"));
                let mut epochs = EpochTrack::default();
                if log.exists() {
                    self.dump_segment_file(&log, base, None, &mut epochs);
                } else {
                    let mut tally = Tally::default();
                    let indexes = self.load_indexes(path, base, &mut tally);
                    self.finish_indexes(indexes, u64::MAX, None);
                }
            } else {
                anyhow::bail!(
                    "{}: not a segment file (.log, .index, .timeindex) or a directory",
                    path.display()
                );
            }
        }
        let totals = self.totals.clone();
        self.emit(Event::Summary(totals));
        Ok(())
    }

    pub(super) fn dump_data_dir(&mut self, dir: &Path) -> anyhow::Result<()> {
        let mut partitions = Vec::new();
        let mut other = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry.file_type().is_ok_and(|kind| kind.is_dir());
            match (is_dir, parse_partition_dir_name(&name)) {
                (true, Some((topic, partition))) => {
                    partitions.push((topic.to_string(), partition, entry.path()))
                }
                (true, None) => other.push(format!("{name}/")),
                (false, _) => other.push(name),
            }
        }
        partitions.sort();
        other.sort();
        self.emit(Event::DataDir {
            path: dir.display().to_string(),
            partitions: partitions.len(),
            other,
        });
        for (_, _, path) in partitions {
            if self.stopped() {
                break;
            }
            if let Err(error) = self.dump_partition(&path) {
                let mut tally = Tally::default();
                let path = path.display().to_string();
                self.report(
                    &mut tally,
                    damage("read_error", &path, None, None, format!("{error:#}")),
                );
            }
        }
        Ok(())
    }

    pub(super) fn dump_partition(&mut self, dir: &Path) -> anyhow::Result<()> {
        let label = dir.display().to_string();
        let name = dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let (topic, partition) = match parse_partition_dir_name(&name) {
            Some((topic, partition)) => (Some(topic.to_string()), Some(partition)),
            None => (None, None),
        };
        let mut segments = Vec::new();
        let mut index_stems = Vec::new();
        let mut other_files = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("listing {label}"))? {
            let entry = entry.with_context(|| format!("listing {label}"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(base) = parse_log_file_name(&name) {
                segments.push((base, entry.path()));
            } else if let Some(stem) = name
                .strip_suffix(".index")
                .or_else(|| name.strip_suffix(".timeindex"))
            {
                index_stems.push((stem.to_string(), name.clone()));
            } else if ![
                LEADER_EPOCH_FILE,
                LOG_START_FILE,
                RECOVERY_POINT_FILE,
                CLEAN_SHUTDOWN_FILE,
                CLEANER_FILE,
            ]
            .contains(&name.as_str())
            {
                other_files.push(name);
            }
        }
        segments.sort();
        other_files.sort();
        self.emit(Event::Partition {
            path: label.clone(),
            topic,
            partition,
            segments: segments.len(),
            other_files,
        });
        let mut tally = Tally::default();
        self.load_gaps_below(dir, &mut tally);
        index_stems.sort();
        for (stem, file) in &index_stems {
            if !dir.join(format!("{stem}.log")).exists() {
                let path = dir.join(file).display().to_string();
                self.report(
                    &mut tally,
                    warning(
                        "orphan_index",
                        &path,
                        None,
                        None,
                        "index file without its .log segment".into(),
                    ),
                );
            }
        }

        let mut epochs = EpochTrack::default();
        let mut first_offset = None;
        let mut next_offset: Option<i64> = None;
        let (mut batches, mut records) = (0u64, 0u64);
        let (mut segment_damage, mut segment_warnings) = (0u64, 0u64);
        for (base, path) in &segments {
            if self.stopped() {
                break;
            }
            // Segment boundaries: each starts where the one before ended.
            if let Some(expected) = next_offset {
                let base_offset = *base as i64;
                let path_label = path.display().to_string();
                if base_offset < expected {
                    self.report(
                        &mut tally,
                        damage(
                            "segment_overlap",
                            &path_label,
                            None,
                            Some(base_offset),
                            format!("segment base offset {base} is below the previous segment's end {expected}"),
                        ),
                    );
                } else if base_offset > expected {
                    let problem = self.gap_problem(
                        &path_label,
                        None,
                        base_offset,
                        format!("segment base offset {base} skips offsets {expected}..{} after the previous segment", base_offset - 1),
                    );
                    if let Some(problem) = problem {
                        self.report(&mut tally, problem);
                    }
                }
            }
            let outcome = self.dump_segment_file(path, Some(*base), next_offset, &mut epochs);
            first_offset = first_offset.or(outcome.first_offset);
            // An empty segment leaves the expected offset where it was.
            next_offset = outcome.next_offset.or(next_offset);
            batches += outcome.batches;
            records += outcome.records;
            segment_damage += outcome.damage;
            segment_warnings += outcome.warnings;
        }

        let checkpoints = self.check_checkpoints(
            dir,
            &epochs,
            first_offset,
            next_offset,
            &segments,
            &mut tally,
        );
        self.totals.partitions += 1;
        self.emit(Event::PartitionSummary(PartitionSummary {
            path: label,
            segments: segments.len(),
            batches,
            records,
            first_offset,
            next_offset,
            log_start_offset: checkpoints.log_start,
            recovery_point: checkpoints.recovery_point,
            leader_epoch_checkpoint: checkpoints.epochs,
            leader_epochs_in_batches: epochs.changes,
            clean_shutdown_marker: checkpoints.clean_shutdown,
            damage: tally.damage + segment_damage,
            warnings: tally.warnings + segment_warnings,
        }));
        Ok(())
    }

    /// An offset gap ending at `offset`: nothing when Kafki's cleaner made
    /// it (it ends at or below the cleaner checkpoint's bound), else damage
    /// for Kafki (its recovery cuts there), a warning with `--allow-gaps`.
    pub(super) fn gap_problem(
        &self,
        path: &str,
        position: Option<u64>,
        offset: i64,
        message: String,
    ) -> Option<Problem> {
        if u64::try_from(offset).is_ok_and(|offset| offset <= self.gaps_below) {
            return None;
        }
        Some(if self.options.allow_gaps {
            warning("offset_gap", path, position, Some(offset), message)
        } else {
            damage(
                "offset_gap",
                path,
                position,
                Some(offset),
                format!("{message} (Kafki's recovery cuts the log here; --allow-gaps for logs Apache Kafka compacted)"),
            )
        })
    }

    pub(super) fn check_checkpoints(
        &mut self,
        dir: &Path,
        epochs: &EpochTrack,
        first_offset: Option<i64>,
        next_offset: Option<i64>,
        segments: &[(u64, PathBuf)],
        tally: &mut Tally,
    ) -> Checkpoints {
        let mut found = Checkpoints {
            clean_shutdown: dir.join(CLEAN_SHUTDOWN_FILE).exists(),
            ..Checkpoints::default()
        };
        let log_end = next_offset
            .or_else(|| segments.first().map(|(base, _)| *base as i64))
            .unwrap_or(0);
        for name in [LOG_START_FILE, RECOVERY_POINT_FILE] {
            let path = dir.join(name);
            let label = path.display().to_string();
            let text = match read_small_file(&path) {
                Ok(Some(text)) => text,
                Ok(None) => continue,
                Err(error) => {
                    self.report(
                        tally,
                        warning(
                            "bad_checkpoint",
                            &label,
                            None,
                            None,
                            format!("cannot read: {error}"),
                        ),
                    );
                    continue;
                }
            };
            let Ok(offset) = text.trim().parse::<u64>() else {
                self.report(
                    tally,
                    warning(
                        "bad_checkpoint",
                        &label,
                        None,
                        None,
                        format!("not a decimal offset: {:?}", text.trim()),
                    ),
                );
                continue;
            };
            let offset_i64 = i64::try_from(offset).unwrap_or(i64::MAX);
            if name == LOG_START_FILE {
                found.log_start = Some(offset);
                if offset_i64 > log_end {
                    self.report(
                        tally,
                        warning(
                            "log_start_beyond_end",
                            &label,
                            None,
                            Some(offset_i64),
                            format!("log start offset {offset} is beyond the end of the log ({log_end})"),
                        ),
                    );
                }
            } else {
                found.recovery_point = Some(offset);
                if offset_i64 > log_end {
                    self.report(
                        tally,
                        damage(
                            "recovery_point_beyond_end",
                            &label,
                            None,
                            Some(offset_i64),
                            format!("recovery point {offset} is beyond the end of the log ({log_end}): offsets that were durable are missing"),
                        ),
                    );
                }
            }
        }

        let path = dir.join(LEADER_EPOCH_FILE);
        let label = path.display().to_string();
        match read_small_file(&path) {
            Ok(None) => {}
            Err(error) => self.report(
                tally,
                warning(
                    "bad_checkpoint",
                    &label,
                    None,
                    None,
                    format!("cannot read: {error}"),
                ),
            ),
            Ok(Some(text)) => match LeaderEpochCache::decode(&text) {
                None => self.report(
                    tally,
                    warning(
                        "bad_checkpoint",
                        &label,
                        None,
                        None,
                        "not a valid leader-epoch checkpoint (Kafki rebuilds it from the batches)"
                            .into(),
                    ),
                ),
                Some(cache) => {
                    let entries = cache.entries().to_vec();
                    self.compare_epochs(&label, &entries, epochs, first_offset, next_offset, tally);
                    found.epochs = Some(entries);
                }
            },
        }
        found
    }

    /// The checkpoint should name every epoch change the batches show.
    pub(super) fn compare_epochs(
        &mut self,
        label: &str,
        checkpoint: &[(i32, u64)],
        epochs: &EpochTrack,
        first_offset: Option<i64>,
        next_offset: Option<i64>,
        tally: &mut Tally,
    ) {
        for (index, (epoch, first_seen)) in epochs.changes.iter().enumerate() {
            let entry = checkpoint.iter().find(|(known, _)| known == epoch);
            // The first epoch seen may have started in a segment retention
            // deleted: its checkpoint start may be earlier.
            let consistent = match entry {
                Some((_, start)) if index == 0 => (*start as i64) <= *first_seen,
                Some((_, start)) => *start as i64 == *first_seen,
                None => false,
            };
            if !consistent {
                let said = entry.map_or_else(
                    || "has no entry for it".to_string(),
                    |(_, start)| format!("says it starts at {start}"),
                );
                self.report(
                    tally,
                    warning(
                        "epoch_checkpoint_mismatch",
                        label,
                        None,
                        Some(*first_seen),
                        format!("batches show leader epoch {epoch} from offset {first_seen}; the checkpoint {said}"),
                    ),
                );
            }
        }
        let (Some(first), Some(next)) = (first_offset, next_offset) else {
            return;
        };
        for (epoch, start) in checkpoint {
            let start = *start as i64;
            let in_log = start > first && start < next;
            if in_log && !epochs.changes.iter().any(|(seen, _)| seen == epoch) {
                self.report(
                    tally,
                    warning(
                        "epoch_checkpoint_mismatch",
                        label,
                        None,
                        Some(start),
                        format!("the checkpoint says leader epoch {epoch} starts at {start}, but no batch of that epoch is in the log"),
                    ),
                );
            }
        }
    }

    pub(super) fn load_indexes(
        &mut self,
        index_path: &Path,
        base: Option<u64>,
        tally: &mut Tally,
    ) -> SegmentIndexes {
        let offset_path = index_path.with_extension("index");
        let time_path = index_path.with_extension("timeindex");
        let mut indexes = SegmentIndexes::default();
        for (path, is_offset) in [(offset_path, true), (time_path, false)] {
            let label = path.display().to_string();
            match read_index_file(&path) {
                Ok(None) => {}
                Ok(Some(bytes)) => {
                    if is_offset {
                        indexes.offset = Some(OffsetIndexCheck::new(&label, base, &bytes));
                    } else {
                        indexes.time = Some(TimeIndexCheck::new(&label, base, &bytes));
                    }
                }
                Err(error) => {
                    self.report(
                        tally,
                        damage("read_error", &label, None, None, format!("{error:#}")),
                    );
                }
            }
        }
        indexes
    }

    pub(super) fn finish_indexes(
        &mut self,
        mut indexes: SegmentIndexes,
        data_end: u64,
        last_offset: Option<i64>,
    ) -> (u64, u64) {
        let (mut damage_count, mut warning_count) = (0, 0);
        if let Some(mut check) = indexes.offset.take() {
            check.finish(data_end);
            let listed = check
                .by_position
                .iter()
                .map(|&(position, relative, entry)| (entry, relative, Some(position), None))
                .collect();
            let tally = self.report_index(FinishedIndex {
                kind: "offset",
                path: check.path,
                base: check.base,
                entries: check.entries,
                zero_entries: check.zero_entries,
                problems: check.problems,
                listed,
            });
            damage_count += tally.damage;
            warning_count += tally.warnings;
        }
        if let Some(mut check) = indexes.time.take() {
            check.finish(last_offset);
            let listed = check
                .by_offset
                .iter()
                .map(|&(relative, timestamp, entry)| (entry, relative, None, Some(timestamp)))
                .collect();
            let tally = self.report_index(FinishedIndex {
                kind: "time",
                path: check.path,
                base: check.base,
                entries: check.entries,
                zero_entries: check.zero_entries,
                problems: check.problems,
                listed,
            });
            damage_count += tally.damage;
            warning_count += tally.warnings;
        }
        (damage_count, warning_count)
    }

    /// Reports one finished index check: its problems, its entries in file
    /// order when `--list-index` names its kind, and its summary.
    fn report_index(&mut self, index: FinishedIndex) -> Tally {
        let tally = self.index_problems(&index.problems);
        if self.options.list_index == Some(index.kind) {
            let mut listed = index.listed;
            listed.sort_unstable_by_key(|(entry, ..)| *entry);
            for (entry, relative, position, timestamp) in listed {
                self.emit(Event::IndexEntry(IndexEntryInfo {
                    path: index.path.clone(),
                    kind: index.kind,
                    entry,
                    relative_offset: relative,
                    offset: absolute(index.base, relative),
                    position,
                    timestamp,
                }));
            }
        }
        self.emit(Event::IndexSummary(IndexSummary {
            path: index.path,
            kind: index.kind,
            entries: index.entries,
            zero_entries: index.zero_entries,
            damage: tally.damage,
            warnings: tally.warnings,
            problems_not_shown: tally.not_shown(),
        }));
        tally
    }

    pub(super) fn index_problems(&mut self, problems: &[Problem]) -> Tally {
        let mut tally = Tally::default();
        for problem in problems {
            self.report(&mut tally, problem.clone());
        }
        tally
    }

    /// Opens and walks one `.log` file with its indexes. `expected_next` is
    /// where the previous segment ended.
    pub(super) fn dump_segment_file(
        &mut self,
        path: &Path,
        base: Option<u64>,
        expected_next: Option<i64>,
        epochs: &mut EpochTrack,
    ) -> SegmentOutcome {
        let label = path.display().to_string();
        let mut tally = Tally::default();
        let opened = File::open(path).and_then(|file| {
            let bytes = file.metadata()?.len();
            Ok((file, bytes))
        });
        let (file, file_bytes) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                self.emit(Event::Segment {
                    path: label.clone(),
                    base_offset: base,
                    file_bytes: 0,
                });
                self.report(
                    &mut tally,
                    damage(
                        "read_error",
                        &label,
                        None,
                        None,
                        format!("cannot read: {error}"),
                    ),
                );
                return SegmentOutcome {
                    damage: tally.damage,
                    ..SegmentOutcome::default()
                };
            }
        };
        let indexes = self.load_indexes(path, base, &mut tally);
        self.walk_segment(
            &label,
            &file,
            file_bytes,
            base,
            expected_next,
            epochs,
            indexes,
            tally,
        )
    }

    /// Walks the batches of one segment's bytes, reporting each and every
    /// problem, then the segment's and its indexes' summaries.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn walk_segment<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        source: &R,
        file_bytes: u64,
        base: Option<u64>,
        expected_next: Option<i64>,
        epochs: &mut EpochTrack,
        mut indexes: SegmentIndexes,
        mut tally: Tally,
    ) -> SegmentOutcome {
        self.emit(Event::Segment {
            path: label.to_string(),
            base_offset: base,
            file_bytes,
        });
        self.totals.segments += 1;
        let mut window = Window::new(source, file_bytes);
        let mut outcome = SegmentOutcome::default();
        let mut summary = SegmentSummary {
            path: label.to_string(),
            batches: 0,
            records: 0,
            first_offset: None,
            last_offset: None,
            data_bytes: 0,
            zero_trailer_bytes: 0,
            unreadable_bytes: 0,
            min_timestamp: None,
            max_timestamp: None,
            damage: 0,
            warnings: 0,
            problems_not_shown: 0,
        };
        // The offset the next batch must start at (None: the first batch of
        // a segment without a known base).
        let mut expected = base.map(|base| base as i64).or(expected_next);
        let mut first_batch = true;
        let mut running_max = -1i64;
        let mut position = 0u64;
        while position < file_bytes && !self.stopped() {
            let step = self.step(
                label,
                &mut window,
                position,
                base,
                &mut expected,
                &mut first_batch,
                &mut tally,
            );
            match step {
                Step::Batch {
                    header,
                    size,
                    crc_ok,
                    crc_computed,
                    problems,
                } => {
                    let last = header
                        .base_offset
                        .saturating_add(i64::from(header.last_offset_delta.max(0)));
                    if self.options.show_batches {
                        self.emit(Event::Batch(batch_info(
                            label,
                            position,
                            &header,
                            crc_computed,
                            crc_ok,
                        )));
                    }
                    for problem in problems {
                        self.report(&mut tally, problem);
                    }
                    self.note_epoch(label, position, &header, epochs, &mut tally);
                    if self.options.records {
                        self.dump_records(label, &mut window, position, size, &header, &mut tally);
                    }
                    if header.max_timestamp > running_max {
                        running_max = header.max_timestamp;
                    }
                    if let Some(check) = indexes.offset.as_mut() {
                        check.visit_batch(position, header.base_offset, last);
                    }
                    if let Some(check) = indexes.time.as_mut() {
                        check.visit_batch(last, running_max);
                    }
                    summary.batches += 1;
                    summary.records += u64::try_from(header.records_count).unwrap_or(0);
                    summary.first_offset = summary.first_offset.or(Some(header.base_offset));
                    summary.last_offset = Some(last);
                    if header.base_timestamp >= 0 {
                        summary.min_timestamp = Some(
                            summary
                                .min_timestamp
                                .map_or(header.base_timestamp, |min: i64| {
                                    min.min(header.base_timestamp)
                                }),
                        );
                    }
                    if header.max_timestamp >= 0 {
                        summary.max_timestamp = Some(
                            summary
                                .max_timestamp
                                .map_or(header.max_timestamp, |max: i64| {
                                    max.max(header.max_timestamp)
                                }),
                        );
                    }
                    position += size;
                    summary.data_bytes = position;
                }
                Step::Skip { to } => position = to,
                Step::ZeroTrailer => {
                    summary.zero_trailer_bytes = file_bytes - position;
                    break;
                }
                Step::Unreadable { zero_suffix } => {
                    summary.unreadable_bytes = file_bytes - position - zero_suffix;
                    summary.zero_trailer_bytes = zero_suffix;
                    break;
                }
            }
        }
        let (index_damage, index_warnings) = {
            summary.damage = tally.damage;
            summary.warnings = tally.warnings;
            summary.problems_not_shown = tally.not_shown();
            outcome.batches = summary.batches;
            outcome.records = summary.records;
            outcome.first_offset = summary.first_offset;
            outcome.next_offset = summary.last_offset.map(|last| last.saturating_add(1));
            self.totals.batches += summary.batches;
            self.totals.records += summary.records;
            let data_end = summary.data_bytes;
            let last_offset = summary.last_offset;
            self.emit(Event::SegmentSummary(summary));
            self.finish_indexes(indexes, data_end, last_offset)
        };
        outcome.damage = tally.damage + index_damage;
        outcome.warnings = tally.warnings + index_warnings;
        outcome
    }

    /// Reads what is at `position`: a batch (reported problems included),
    /// damage to skip, or the end of the data.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn step<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        window: &mut Window<'_, R>,
        position: u64,
        base: Option<u64>,
        expected: &mut Option<i64>,
        first_batch: &mut bool,
        tally: &mut Tally,
    ) -> Step {
        let file_bytes = window.file_bytes;
        let remaining = file_bytes - position;
        let read_error = |dumper: &mut Self, tally: &mut Tally, error: io::Error| {
            dumper.report(
                tally,
                damage(
                    "read_error",
                    label,
                    Some(position),
                    None,
                    format!("cannot read: {error}"),
                ),
            );
            Step::Unreadable { zero_suffix: 0 }
        };
        let head_len = remaining.min(HEADER as u64) as usize;
        let head = match window.get(position, head_len) {
            Ok(bytes) => bytes.to_vec(),
            Err(error) => return read_error(self, tally, error),
        };
        if head.iter().all(|byte| *byte == 0) {
            return match window.first_non_zero(position) {
                Ok(None) => Step::ZeroTrailer,
                Ok(Some(data_at)) => {
                    // The first non-zero byte may lie inside the next
                    // batch's header (its base offset starts with zeros).
                    let (to, tail) = match self.resync(window, position + 1, base) {
                        Ok(found) => found,
                        Err(error) => return read_error(self, tally, error),
                    };
                    self.report(
                        tally,
                        damage(
                            "zero_bytes_then_data",
                            label,
                            Some(position),
                            None,
                            format!(
                                "zero bytes where a batch should start, but data follows (first \
                                 non-zero byte at {data_at}){tail}"
                            ),
                        ),
                    );
                    to
                }
                Err(error) => read_error(self, tally, error),
            };
        }
        let Ok(header) = BatchHeader::parse(&head) else {
            let (to, tail) = match self.resync(window, position + 1, base) {
                Ok(found) => found,
                Err(error) => return read_error(self, tally, error),
            };
            self.report(
                tally,
                damage("truncated_header", label, Some(position), None, format!("a partial batch header: only {remaining} bytes before the end of the file{tail}")),
            );
            return to;
        };
        let shape_problem = if header.batch_length < BATCH_LENGTH_MIN {
            Some((
                "bad_length",
                format!(
                    "batch length {} is below the minimum {BATCH_LENGTH_MIN}",
                    header.batch_length
                ),
            ))
        } else if batch_size(header.batch_length) > remaining {
            Some((
                "truncated_batch",
                format!(
                    "batch of {} bytes (base offset {}) is cut short: {remaining} bytes before the end of the file",
                    batch_size(header.batch_length),
                    header.base_offset
                ),
            ))
        } else if header.magic != 2 {
            Some((
                "bad_magic",
                format!("magic {} (only v2 record batches are read)", header.magic),
            ))
        } else {
            None
        };
        if let Some((code, message)) = shape_problem {
            let (to, tail) = match self.resync(window, position + 1, base) {
                Ok(found) => found,
                Err(error) => return read_error(self, tally, error),
            };
            self.report(
                tally,
                damage(
                    code,
                    label,
                    Some(position),
                    Some(header.base_offset),
                    format!("{message}{tail}"),
                ),
            );
            return to;
        }
        let size = batch_size(header.batch_length);
        let crc_computed = match window.batch_crc(position, size) {
            Ok(crc) => crc,
            Err(error) => return read_error(self, tally, error),
        };
        let crc_ok = crc_computed == header.crc;
        // Reported after the batch line, so they read as its notes.
        let mut problems = Vec::new();
        let last = header
            .base_offset
            .saturating_add(i64::from(header.last_offset_delta.max(0)));
        let at = Some(position);
        let offset = Some(header.base_offset);
        if !crc_ok {
            problems.push(
                damage(
                    "bad_crc",
                    label,
                    at,
                    offset,
                    format!(
                        "CRC32C mismatch in the batch with offsets {}..{last}: stored {:#010x}, computed {crc_computed:#010x}",
                        header.base_offset, header.crc
                    ),
                ),
            );
        }
        let count_ok = header.last_offset_delta >= 0
            && header.records_count >= 0
            && i64::from(header.records_count) <= i64::from(header.last_offset_delta) + 1;
        if !count_ok {
            problems.push(damage(
                "bad_record_count",
                label,
                at,
                offset,
                format!(
                    "records count {} does not fit last offset delta {}",
                    header.records_count, header.last_offset_delta
                ),
            ));
        }
        if header.base_offset < 0 {
            problems.push(damage(
                "bad_offset",
                label,
                at,
                offset,
                format!("negative base offset {}", header.base_offset),
            ));
        } else if let Some(wanted) = *expected {
            if header.base_offset < wanted {
                let (code, message) = if *first_batch && base.is_some() {
                    ("offset_below_segment_base", format!("first batch starts at offset {}, below the segment's base offset {wanted}", header.base_offset))
                } else {
                    (
                        "offsets_not_increasing",
                        format!(
                            "batch starts at offset {}, but the batch before ended at {}",
                            header.base_offset,
                            wanted - 1
                        ),
                    )
                };
                problems.push(damage(code, label, at, offset, message));
            } else if header.base_offset > wanted {
                let problem = self.gap_problem(
                    label,
                    at,
                    header.base_offset,
                    format!(
                        "batch starts at offset {}; offsets {wanted}..{} are missing",
                        header.base_offset,
                        header.base_offset - 1
                    ),
                );
                problems.extend(problem);
            }
        }
        *first_batch = false;
        if header.base_offset >= 0 {
            *expected = Some(last.saturating_add(1));
        }
        Step::Batch {
            header,
            size,
            crc_ok,
            crc_computed,
            problems,
        }
    }

    /// Finds where to go on after damage at `from`: the next valid batch, or
    /// the end. Returns the step and a clause for the problem's message.
    pub(super) fn resync<R: ReadAt + ?Sized>(
        &mut self,
        window: &mut Window<'_, R>,
        from: u64,
        base: Option<u64>,
    ) -> io::Result<(Step, String)> {
        match find_next_batch(window, from, base)? {
            Some(next) => Ok((
                Step::Skip { to: next },
                format!("; the next valid batch is at position {next}"),
            )),
            None => {
                let zero_suffix = window.zero_suffix(from)?;
                let unreadable = window.file_bytes - from - zero_suffix;
                let tail = if zero_suffix > 0 {
                    format!("; no valid batch after it ({unreadable} more bytes, then {zero_suffix} zero bytes to the end)")
                } else {
                    format!("; no valid batch after it ({unreadable} more bytes to the end)")
                };
                Ok((Step::Unreadable { zero_suffix }, tail))
            }
        }
    }

    pub(super) fn note_epoch(
        &mut self,
        label: &str,
        position: u64,
        header: &BatchHeader,
        epochs: &mut EpochTrack,
        tally: &mut Tally,
    ) {
        let epoch = header.partition_leader_epoch;
        // -1 is "no epoch" (as a producer sends it); a leader sets one.
        if epoch == -1 {
            return;
        }
        if epoch < 0 {
            self.report(
                tally,
                damage(
                    "bad_epoch",
                    label,
                    Some(position),
                    Some(header.base_offset),
                    format!("negative leader epoch {epoch}"),
                ),
            );
            return;
        }
        match epochs.last {
            Some(last) if epoch < last => {
                self.report(
                    tally,
                    damage(
                        "epoch_decrease",
                        label,
                        Some(position),
                        Some(header.base_offset),
                        format!("leader epoch {epoch} after epoch {last}: epochs never go back in a log"),
                    ),
                );
            }
            Some(last) if epoch == last => return,
            _ => {}
        }
        epochs.last = Some(epoch);
        if epochs.changes.len() < EPOCH_CHANGES_MAX {
            epochs.changes.push((epoch, header.base_offset));
        }
    }

    pub(super) fn dump_records<R: ReadAt + ?Sized>(
        &mut self,
        label: &str,
        window: &mut Window<'_, R>,
        position: u64,
        size: u64,
        header: &BatchHeader,
        tally: &mut Tally,
    ) {
        let not_decoded = |reason: String| {
            warning(
                "records_not_decoded",
                label,
                Some(position),
                Some(header.base_offset),
                reason,
            )
        };
        if size > BATCH_IN_MEMORY_MAX {
            let problem = not_decoded(format!(
                "records not decoded: the batch is larger than {BATCH_IN_MEMORY_MAX} bytes"
            ));
            self.report(tally, problem);
            return;
        }
        let bytes = match window.get(position, size as usize) {
            Ok(bytes) => bytes.to_vec(),
            Err(error) => {
                self.report(
                    tally,
                    damage(
                        "read_error",
                        label,
                        Some(position),
                        None,
                        format!("cannot read: {error}"),
                    ),
                );
                return;
            }
        };
        let section = match records::batch_records(&bytes, DECOMPRESSED_MAX) {
            Ok(section) => section,
            Err(error) => {
                self.report(tally, not_decoded(format!("records not decoded: {error}")));
                return;
            }
        };
        let log_append_time = header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0;
        let control = header.attributes & ATTRIBUTE_CONTROL != 0;
        let max = self.options.max_bytes;
        for record in records::records(&section, header.records_count) {
            if self.stopped() {
                return;
            }
            let record = match record {
                Ok(record) => record,
                Err(error) => {
                    let problem = warning(
                        "record_malformed",
                        label,
                        Some(position),
                        Some(header.base_offset),
                        format!("{error}"),
                    );
                    self.report(tally, problem);
                    return;
                }
            };
            let timestamp = if log_append_time {
                header.max_timestamp
            } else {
                header.base_timestamp.saturating_add(record.timestamp_delta)
            };
            let marker = control.then(|| control_marker(record.key));
            self.emit(Event::Record(RecordInfo {
                path: label.to_string(),
                batch_position: position,
                offset: header
                    .base_offset
                    .saturating_add(i64::from(record.offset_delta)),
                timestamp,
                key: record.key.map(|key| show(key, max)),
                value: record.value.map(|value| show(value, max)),
                headers: record
                    .headers()
                    .map(|(key, value)| HeaderInfo {
                        key: show(key, max),
                        value: value.map(|value| show(value, max)),
                    })
                    .collect(),
                control: marker,
            }));
        }
    }
}

/// What one step of the walk found.
pub(super) enum Step {
    Batch {
        header: BatchHeader,
        size: u64,
        crc_ok: bool,
        crc_computed: u32,
        /// What is wrong with it, reported after the batch itself.
        problems: Vec<Problem>,
    },
    /// Damage: go on at `to` (the next valid batch).
    Skip { to: u64 },
    /// All zeros from here to the end: the normal end of data.
    ZeroTrailer,
    /// Nothing readable from here on (`zero_suffix` zero bytes end the file).
    Unreadable { zero_suffix: u64 },
}

#[derive(Debug, Default)]
pub(super) struct Checkpoints {
    pub(super) log_start: Option<u64>,
    pub(super) recovery_point: Option<u64>,
    pub(super) epochs: Option<Vec<(i32, u64)>>,
    pub(super) clean_shutdown: bool,
}

/// A control record's key: version (i16) then type (0 abort, 1 commit).
pub(super) fn control_marker(key: Option<&[u8]>) -> String {
    match key {
        Some([_, _, high, low, ..]) => match i16::from_be_bytes([*high, *low]) {
            0 => "ABORT".to_string(),
            1 => "COMMIT".to_string(),
            other => format!("type {other}"),
        },
        _ => "unreadable control key".to_string(),
    }
}

pub(super) fn batch_info(
    path: &str,
    position: u64,
    header: &BatchHeader,
    crc_computed: u32,
    crc_ok: bool,
) -> BatchInfo {
    let codec = match Compression::from_attributes(header.attributes) {
        Ok(codec) => codec.name().to_string(),
        Err(_) => format!("unknown({})", header.attributes & 0x07),
    };
    BatchInfo {
        path: path.to_string(),
        position,
        base_offset: header.base_offset,
        last_offset: header
            .base_offset
            .saturating_add(i64::from(header.last_offset_delta)),
        records_count: header.records_count,
        batch_length: header.batch_length,
        magic: header.magic,
        partition_leader_epoch: header.partition_leader_epoch,
        attributes: header.attributes,
        codec,
        timestamp_type: if header.attributes & ATTRIBUTE_LOG_APPEND_TIME != 0 {
            "LogAppendTime"
        } else {
            "CreateTime"
        },
        transactional: header.attributes & ATTRIBUTE_TRANSACTIONAL != 0,
        control: header.attributes & ATTRIBUTE_CONTROL != 0,
        base_timestamp: header.base_timestamp,
        max_timestamp: header.max_timestamp,
        producer_id: header.producer_id,
        producer_epoch: header.producer_epoch,
        base_sequence: header.base_sequence,
        crc_stored: header.crc,
        crc_computed,
        crc_ok,
    }
}

/// `my-topic-3` → (`my-topic`, 3).
pub fn parse_partition_dir_name(name: &str) -> Option<(&str, i32)> {
    let (topic, partition) = name.rsplit_once('-')?;
    if topic.is_empty()
        || partition.is_empty()
        || !partition.bytes().all(|byte| byte.is_ascii_digit())
    {
        return None;
    }
    Some((topic, partition.parse().ok()?))
}

/// A partition directory holds segments or checkpoint files, or (empty)
/// has a partition's name; anything else is taken as a data directory.
pub(super) fn is_partition_dir(dir: &Path) -> anyhow::Result<bool> {
    let mut has_subdirs = false;
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_partition_file = parse_log_file_name(&name).is_some()
            || name.ends_with(".index")
            || name.ends_with(".timeindex")
            || [
                LEADER_EPOCH_FILE,
                LOG_START_FILE,
                RECOVERY_POINT_FILE,
                CLEAN_SHUTDOWN_FILE,
                CLEANER_FILE,
            ]
            .contains(&name.as_str());
        if is_partition_file {
            return Ok(true);
        }
        has_subdirs |= entry.file_type().is_ok_and(|kind| kind.is_dir());
    }
    let name = dir
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(!has_subdirs && parse_partition_dir_name(&name).is_some())
}

/// Reads an index file, refusing absurd sizes; `None` if it does not exist.
pub(super) fn read_index_file(path: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    read_bounded(path, INDEX_FILE_MAX)
}

/// Reads a checkpoint file as text; `None` if it does not exist.
pub(super) fn read_small_file(path: &Path) -> anyhow::Result<Option<String>> {
    Ok(read_bounded(path, CHECKPOINT_FILE_MAX)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

pub(super) fn read_bounded(path: &Path, limit: u64) -> anyhow::Result<Option<Vec<u8>>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let length = file
        .metadata()
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if length > limit {
        anyhow::bail!(
            "{} is {length} bytes, more than the {limit} bytes read",
            path.display()
        );
    }
    let mut bytes = Vec::with_capacity(length as usize);
    io::Read::read_to_end(&mut io::Read::take(file, limit), &mut bytes)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(bytes))
}

/// Dumps segment bytes held in memory (tests and fuzzing): `index` and
/// `time_index` are the bytes of its index files, if any.
#[cfg(test)]
pub fn dump_segment_bytes(
    options: Options,
    label: &str,
    base: Option<u64>,
    bytes: &[u8],
    index: Option<&[u8]>,
    time_index: Option<&[u8]>,
) -> (Vec<Event>, Totals) {
    let mut events: Vec<Event> = Vec::new();
    let totals = {
        let mut dumper = Dumper::new(options, &mut events);
        let indexes = SegmentIndexes {
            offset: index
                .map(|bytes| OffsetIndexCheck::new(&format!("{label}.index"), base, bytes)),
            time: time_index
                .map(|bytes| TimeIndexCheck::new(&format!("{label}.timeindex"), base, bytes)),
        };
        let mut epochs = EpochTrack::default();
        dumper.walk_segment(
            label,
            bytes,
            bytes.len() as u64,
            base,
            None,
            &mut epochs,
            indexes,
            Tally::default(),
        );
        dumper.finish().0
    };
    (events, totals)
}

/// An index check the walk is done with, as [`Dumper::report_index`] takes it.
struct FinishedIndex {
    kind: &'static str,
    path: String,
    base: Option<u64>,
    entries: usize,
    zero_entries: usize,
    problems: Vec<Problem>,
    /// (entry number, relative offset, position, timestamp), in any order.
    listed: Vec<(usize, u32, Option<u32>, Option<i64>)>,
}
