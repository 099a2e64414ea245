//! Writing a transaction marker (COMMIT or ABORT) to a partition this node
//! leads: the coordinator's decision, one control batch per partition of
//! the transaction. Checked against the partition's transaction index
//! (fencing by coordinator epoch and producer epoch), appended, recorded in
//! the index with no await between check and record, then waited for as
//! `acks=all` is (committed: durable, and replicated where the partition
//! is). What a marker means for readers is in [`crate::producer::transactions`].

use std::time::Duration;

use kafki_net::kafka_protocol::error::ResponseError;

use super::Partition;
use crate::producer::transactions::build_marker_batch;
use crate::txn::EndTxnMarker;

/// How long a marker waits to be committed before its writer is told to
/// try again (`REQUEST_TIMED_OUT`, retriable).
pub const MARKER_COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Where a marker landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrittenMarker {
    pub offset: u64,
}

impl Partition {
    /// Appends `marker` for `producer_id` at `producer_epoch` and waits
    /// until it is committed (at most [`MARKER_COMMIT_WAIT`]). A producer
    /// without an open transaction here still gets its marker (Kafka writes
    /// it too: a retry, or a partition it never wrote to). `Err` carries
    /// the Kafka error code.
    pub async fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<WrittenMarker, i16> {
        let appending =
            std::pin::pin!(self.append_marker_unbounded(producer_id, producer_epoch, marker));
        let expired = std::pin::pin!(glommio::timer::sleep(MARKER_COMMIT_WAIT));
        match futures::future::select(appending, expired).await {
            futures::future::Either::Left((outcome, _)) => outcome,
            futures::future::Either::Right(_) => {
                tracing::debug!(topic = %self.topic, partition = self.index, producer_id, "marker timed out waiting to be committed");
                Err(ResponseError::RequestTimedOut.code())
            }
        }
    }

    async fn append_marker_unbounded(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<WrittenMarker, i16> {
        if producer_id < 0 {
            return Err(ResponseError::InvalidRequest.code());
        }
        let replicated = self.replicated().cloned();
        let mut epoch = self.leader_epoch();
        if let Some(replicated) = &replicated {
            epoch = replicated.admit_produce(crate::replication::machine::Acks::All)?;
        }
        self.log
            .wait_for_buffer_room()
            .await
            .map_err(|error| crate::errors::KafkaError::from_log(&error).code)?;
        if self.is_released() {
            return Err(ResponseError::NotLeaderOrFollower.code());
        }
        if let Some(replicated) = &replicated {
            if replicated.is_stopped() || !replicated.is_leader() {
                return Err(ResponseError::NotLeaderOrFollower.code());
            }
        }
        // No await from the check to the record: no other append of this
        // partition can come between.
        self.producers
            .states
            .borrow()
            .check_marker(producer_id, producer_epoch, marker)?;
        let batch = build_marker_batch(producer_id, producer_epoch, marker, crate::clock::now_ms());
        let info = match self.log.append_now(batch, epoch) {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(topic = %self.topic, partition = self.index, %error, "marker append failed");
                return Err(crate::errors::KafkaError::from_log(&error).code);
            }
        };
        if let Some(replicated) = &replicated {
            replicated.local_appended(
                info.last_offset as i64 + 1,
                epoch,
                crate::cluster::liveness::monotonic_ms(),
            );
        }
        let high_watermark = self.high_watermark();
        self.producers
            .states
            .borrow()
            .note_high_watermark(high_watermark);
        let recorded = self.producers.states.borrow_mut().record_marker(
            producer_id,
            producer_epoch,
            marker,
            info.base_offset,
        );
        if let Err(code) = recorded {
            // Checked just above with nothing in between: only an offset
            // that did not grow can land here, the broker's own bug.
            tracing::error!(topic = %self.topic, partition = self.index, producer_id, code, offset = info.base_offset, "marker appended but not indexed");
        }
        tracing::debug!(topic = %self.topic, partition = self.index, producer_id, producer_epoch, marker = ?marker.control_type, offset = info.base_offset, "transaction marker appended");
        let end = info.last_offset + 1;
        match &replicated {
            Some(replicated) => replicated.wait_acknowledged(end as i64).await?,
            None => self
                .wait_committed(end)
                .await
                .map_err(|error| crate::errors::KafkaError::from_log(&error).code)?,
        }
        Ok(WrittenMarker {
            offset: info.base_offset,
        })
    }
}
