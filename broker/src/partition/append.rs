//! Appending to a partition: every batch of a request is validated first
//! (size, format, keys of a compacted topic: appended whole or not at
//! all), each idempotent producer's sequence is checked and recorded with
//! no await between check and append, then the append waits for the stage
//! `acks` asks for, bounded by the request's timeout:
//!
//! * `acks=0`: appended (ordered), nobody waits;
//! * `acks=1`: the batches are *written* (`O_DIRECT` write completed): a
//!   process crash loses nothing acknowledged;
//! * `acks=-1` (all): *committed* ([`super::replication`]): on one node the
//!   topic's commit stage, durable (`fdatasync`) unless the topic has a
//!   relaxed flush policy.
//!
//! A wait that outlives the timeout answers `REQUEST_TIMED_OUT`; what was
//! appended stays (as with Kafka, a retry of a non-idempotent producer may
//! then duplicate it; an idempotent one's retry is recognised).

use std::time::Duration;

use bytes::Bytes;
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_storage::batch::BatchHeader;
use kafki_storage::LogError;

use super::Partition;
use crate::errors::KafkaError;
use crate::producer::verification::{VerificationGuard, VerificationStep};
use crate::producer::SequenceCheck;
use crate::records::DECOMPRESSED_BATCH_BYTES_MAX;

/// Kafka's message for a record without a key in a compacted topic.
pub const KEYLESS_IN_COMPACTED: &str = "Compacted topic cannot accept message without key";

/// What a produce waits for before it is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// `acks=0`: nothing; no answer is sent.
    None,
    /// `acks=1`: the leader wrote it.
    Leader,
    /// `acks=-1`: committed.
    All,
}

impl Acks {
    /// The wire value's meaning; `None` for a value Kafka refuses
    /// (`INVALID_REQUIRED_ACKS`).
    pub fn from_wire(acks: i16) -> Option<Self> {
        match acks {
            0 => Some(Self::None),
            1 => Some(Self::Leader),
            -1 => Some(Self::All),
            _ => None,
        }
    }
}

/// How a transactional batch that would open its producer's transaction
/// here is admitted (KIP-890).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnAdmission {
    /// As is: verification is off, or the append is not a client's.
    Unverified,
    /// Only with this guard, still current and confirmed in the partition's
    /// producer state when the batch is appended (`None`: none was
    /// obtained, so such a batch is refused with `INVALID_TXN_STATE`).
    Verified(Option<VerificationGuard>),
}

/// Kafka's message for a transactional batch the coordinator did not confirm.
pub const NOT_IN_TRANSACTION: &str = "Partition was not added to the transaction";

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: u64,
    /// Set when the topic stamps `LogAppendTime`.
    pub log_append_time_ms: Option<i64>,
    pub log_start_offset: u64,
}

/// Why an append was refused, and the refused record's index where Kafka
/// gives one (Produce v8+ `record_errors`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendError {
    pub error: KafkaError,
    pub record_index: Option<i32>,
}

impl AppendError {
    pub fn code(code: i16) -> Self {
        KafkaError::code(code).into()
    }

    fn log(error: &LogError) -> Self {
        KafkaError::from_log(error).into()
    }
}

impl From<KafkaError> for AppendError {
    fn from(error: KafkaError) -> Self {
        Self {
            error,
            record_index: None,
        }
    }
}

impl Partition {
    /// Appends `batches` (one request's, in order) and waits for `acks`,
    /// for at most `timeout` when one is given.
    pub async fn append(
        &self,
        batches: Vec<Bytes>,
        acks: Acks,
        timeout: Option<Duration>,
    ) -> Result<Appended, AppendError> {
        self.append_admitted(batches, acks, timeout, TxnAdmission::Unverified)
            .await
    }

    /// [`Partition::append`] for a client's produce, whose transactional
    /// batches are admitted as `admission` says.
    pub async fn append_admitted(
        &self,
        batches: Vec<Bytes>,
        acks: Acks,
        timeout: Option<Duration>,
        admission: TxnAdmission,
    ) -> Result<Appended, AppendError> {
        self.validate(&batches)?;
        let appending = std::pin::pin!(self.append_validated(batches, acks, admission));
        let Some(timeout) = timeout else {
            return appending.await;
        };
        let expired = std::pin::pin!(glommio::timer::sleep(timeout));
        match futures::future::select(appending, expired).await {
            futures::future::Either::Left((outcome, _)) => outcome,
            futures::future::Either::Right(_) => {
                tracing::debug!(topic = %self.topic, partition = self.index, timeout_ms = timeout.as_millis() as u64, "produce timed out waiting for acks");
                Err(AppendError::code(ResponseError::RequestTimedOut.code()))
            }
        }
    }

    /// KIP-890: what a client's `batch` needs before it may be appended
    /// with verification on: `None` when it would not open its producer's
    /// transaction here (not transactional, or one is open at its epoch),
    /// else the guard to append it with and whether the coordinator must
    /// be asked first.
    pub fn begin_txn_verification(&self, batch: &BatchHeader) -> Option<VerificationStep> {
        let mut states = self.producers.states.borrow_mut();
        if !states.needs_verification(batch) {
            return None;
        }
        Some(states.verification_mut().begin(
            batch.producer_id,
            batch.producer_epoch,
            crate::cluster::liveness::monotonic_ms(),
        ))
    }

    /// The coordinator's verdict on `guard` (`confirmed`: the partition is
    /// in the producer's ongoing transaction).
    pub fn finish_txn_verification(
        &self,
        producer_id: i64,
        guard: VerificationGuard,
        confirmed: bool,
    ) {
        let mut states = self.producers.states.borrow_mut();
        let guards = states.verification_mut();
        if confirmed {
            guards.confirm(producer_id, guard);
        } else {
            guards.refuse(producer_id, guard);
        }
    }

    /// Checks every batch before any is appended.
    fn validate(&self, batches: &[Bytes]) -> Result<(), AppendError> {
        if batches.is_empty() {
            return Err(AppendError::code(ResponseError::CorruptMessage.code()));
        }
        let config = self.log.config();
        for batch in batches {
            if batch.len() > config.max_batch_bytes {
                return Err(AppendError::code(ResponseError::MessageTooLarge.code()));
            }
            if let Err(error) = kafki_storage::batch::validate_producer_batch(batch) {
                tracing::debug!(topic = %self.topic, partition = self.index, %error, "refusing batch");
                return Err(AppendError::log(&LogError::InvalidBatch(error)));
            }
            if config.compaction.is_some() {
                if let Err(refused) = check_keys(batch) {
                    tracing::debug!(topic = %self.topic, partition = self.index, "refusing a record without a key for a compacted topic");
                    return Err(refused);
                }
            }
        }
        Ok(())
    }

    async fn append_validated(
        &self,
        batches: Vec<Bytes>,
        acks: Acks,
        admission: TxnAdmission,
    ) -> Result<Appended, AppendError> {
        let mut first: Option<(u64, Option<i64>)> = None;
        let mut last_offset = 0;
        // A replicated partition appends only while it leads (and, for
        // `acks=all`, while enough replicas are in sync), stamping its
        // batches with the epoch it leads in.
        let replicated = self.replicated().cloned();
        let mut epoch = self.leader_epoch();
        if let Some(replicated) = &replicated {
            epoch = replicated
                .admit_produce(crate::replication::driver::machine_acks(acks))
                .map_err(AppendError::code)?;
        }
        for batch in batches {
            // Wait for room first, so the sequence check and the append
            // happen with no await between them (no other append can
            // interleave).
            self.log
                .wait_for_buffer_room()
                .await
                .map_err(|error| AppendError::log(&error))?;
            // A hand-over took the partition away while we waited: refuse,
            // so it need not wait for us, and the client retries on the new
            // owner.
            if self.is_released() {
                tracing::debug!(topic = %self.topic, partition = self.index, "refusing an append: the partition was handed over");
                return Err(AppendError::code(ResponseError::NotLeaderOrFollower.code()));
            }
            let Ok(header) = BatchHeader::parse(&batch) else {
                return Err(AppendError::code(ResponseError::CorruptMessage.code()));
            };
            match self.producers.states.borrow().check(&header) {
                SequenceCheck::Accept => {}
                SequenceCheck::Duplicate { base_offset } => {
                    first.get_or_insert((base_offset, None));
                    last_offset = base_offset + header.last_offset_delta as u64;
                    continue;
                }
                SequenceCheck::Refuse(mut code) => {
                    if code == ResponseError::OutOfOrderSequenceNumber.code() {
                        code = self.out_of_sequence_code();
                    }
                    tracing::debug!(
                        topic = %self.topic,
                        partition = self.index,
                        producer_id = header.producer_id,
                        producer_epoch = header.producer_epoch,
                        base_sequence = header.base_sequence,
                        code,
                        "refusing a producer batch"
                    );
                    return Err(AppendError::code(code));
                }
            }
            if let Err(code) = self.producers.states.borrow().check_transactions(&header) {
                tracing::debug!(
                    topic = %self.topic,
                    partition = self.index,
                    producer_id = header.producer_id,
                    producer_epoch = header.producer_epoch,
                    transactional = header.is_transactional(),
                    code,
                    "refusing a batch by the transaction rules"
                );
                return Err(AppendError::code(code));
            }
            if let TxnAdmission::Verified(guard) = admission {
                // Checked here, with no await before the append: a marker
                // that ended the confirmed transaction meanwhile cleared
                // the guard.
                if let Err(code) = self
                    .producers
                    .states
                    .borrow()
                    .check_verified(&header, guard)
                {
                    debug_assert_eq!(code, ResponseError::InvalidTxnState.code());
                    tracing::debug!(
                        topic = %self.topic,
                        partition = self.index,
                        producer_id = header.producer_id,
                        producer_epoch = header.producer_epoch,
                        "refusing a transaction's first batch: the coordinator did not confirm the partition"
                    );
                    return Err(KafkaError::new(
                        ResponseError::InvalidTxnState,
                        NOT_IN_TRANSACTION,
                    )
                    .into());
                }
            }
            if let Some(replicated) = &replicated {
                // Leadership may have moved while this waited for room.
                if replicated.is_stopped() || !replicated.is_leader() {
                    return Err(AppendError::code(ResponseError::NotLeaderOrFollower.code()));
                }
            }
            match self.log.append_now(batch, epoch) {
                Ok(info) => {
                    if let Some(replicated) = &replicated {
                        replicated.local_appended(
                            info.last_offset as i64 + 1,
                            epoch,
                            crate::cluster::liveness::monotonic_ms(),
                        );
                    }
                    let mut states = self.producers.states.borrow_mut();
                    states.record(&header, info.base_offset, crate::clock::now_ms());
                    states.record_transactional_data(&header, info.base_offset);
                    first.get_or_insert((info.base_offset, info.log_append_time_ms));
                    last_offset = info.last_offset;
                }
                Err(error) => {
                    tracing::warn!(topic = %self.topic, partition = self.index, %error, "append failed");
                    return Err(AppendError::log(&error));
                }
            }
        }
        let Some((base_offset, log_append_time_ms)) = first else {
            return Err(AppendError::code(ResponseError::CorruptMessage.code()));
        };
        match (acks, &replicated) {
            (Acks::All, Some(replicated)) => replicated
                .wait_acknowledged(last_offset as i64 + 1)
                .await
                .map_err(AppendError::code)?,
            _ => {
                let waited = match acks {
                    Acks::None => Ok(()),
                    Acks::Leader => self.log.wait_written(last_offset + 1).await,
                    Acks::All => self.wait_committed(last_offset + 1).await,
                };
                waited.map_err(|error| AppendError::log(&error))?;
            }
        }
        Ok(Appended {
            base_offset,
            log_append_time_ms,
            log_start_offset: self.log.offsets().log_start_offset,
        })
    }
}

/// A compacted topic needs a key on every record (decompressing at most
/// [`DECOMPRESSED_BATCH_BYTES_MAX`]).
fn check_keys(batch: &[u8]) -> Result<(), AppendError> {
    use kafki_storage::compression::CompressionError;
    use kafki_storage::records::{first_keyless_record, RecordError};
    match first_keyless_record(batch, DECOMPRESSED_BATCH_BYTES_MAX) {
        Ok(None) => Ok(()),
        Ok(Some(index)) => Err(AppendError {
            error: KafkaError::new(ResponseError::InvalidRecord, KEYLESS_IN_COMPACTED),
            record_index: i32::try_from(index).ok(),
        }),
        Err(RecordError::Compression(CompressionError::TooLarge { .. })) => Err(KafkaError::new(
            ResponseError::InvalidRecord,
            "batch decompresses beyond the broker's limit",
        )
        .into()),
        Err(_) => Err(AppendError::code(ResponseError::CorruptMessage.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacted_topics_need_a_key_on_every_record() {
        let keyed = kafki_storage::batch::build_keyed_batch(1, &[(Some(b"k"), Some(b"v"))]);
        assert!(check_keys(&keyed).is_ok());
        let mixed = kafki_storage::batch::build_keyed_batch(
            1,
            &[
                (Some(b"k"), Some(b"v")),
                (None, Some(b"v")),
                (Some(b"k"), None),
            ],
        );
        let refused = check_keys(&mixed).expect_err("refused");
        assert_eq!(refused.error.code, ResponseError::InvalidRecord.code());
        assert_eq!(refused.error.code, 87);
        assert_eq!(refused.record_index, Some(1));
        let mut damaged = mixed.to_vec();
        damaged[kafki_storage::batch::BATCH_HEADER_BYTES] = 0x7f;
        assert_eq!(
            check_keys(&damaged).expect_err("refused").error.code,
            ResponseError::CorruptMessage.code()
        );
    }

    #[test]
    fn acks_from_the_wire() {
        assert_eq!(Acks::from_wire(0), Some(Acks::None));
        assert_eq!(Acks::from_wire(1), Some(Acks::Leader));
        assert_eq!(Acks::from_wire(-1), Some(Acks::All));
        assert_eq!(Acks::from_wire(2), None);
        assert_eq!(Acks::from_wire(-2), None);
    }
}
