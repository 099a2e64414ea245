//! Kafka API dispatch: the table of APIs this broker answers (and
//! advertises), and one handler per API in the submodules.
//!
//! Only what is implemented is advertised; anything else is refused by the
//! decoder as an unknown API, which closes the connection as Kafka does for
//! an API it does not know.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::OnceLock;

use bytes::Bytes;
use kafki_net::kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafki_net::{CorrelationId, Request, RequestError, SupportedApi, SupportedApis};

use crate::shard::Shard;

pub mod configs;
pub mod describe_producers;
pub mod fetch;
pub mod groups;
pub mod leaders;
pub mod offsets;
pub mod partitions;
pub mod produce;
pub mod producer;
pub mod quorum;
pub mod reassignments;
pub mod topics;
pub mod txn;
pub mod txn_markers;

/// The APIs and versions Kafki answers. Produce is advertised from v0
/// (librdkafka gates compressed produce on it, KAFKA-18659) although
/// versions below 3 are refused, as Kafka 4 does.
pub fn supported_apis() -> &'static SupportedApis {
    static TABLE: OnceLock<SupportedApis> = OnceLock::new();
    TABLE.get_or_init(|| {
        let entries = vec![
            SupportedApi::new(ApiKey::Produce, 0, 11),
            SupportedApi::new(ApiKey::Fetch, 4, 12),
            SupportedApi::new(ApiKey::ListOffsets, 1, 8),
            SupportedApi::new(ApiKey::Metadata, 0, 12),
            SupportedApi::new(ApiKey::ApiVersions, 0, 4),
            SupportedApi::new(ApiKey::CreateTopics, 2, 7),
            SupportedApi::new(ApiKey::DeleteTopics, 1, 6),
            SupportedApi::new(ApiKey::FindCoordinator, 0, 6),
            SupportedApi::new(ApiKey::InitProducerId, 0, 5),
            // Transactions (version 1 of Kafka's protocol: no per-transaction
            // epoch bump, so EndTxn, AddPartitionsToTxn and TxnOffsetCommit
            // stop below the versions transaction version 2 needs).
            SupportedApi::new(ApiKey::AddPartitionsToTxn, 0, 4),
            SupportedApi::new(ApiKey::AddOffsetsToTxn, 0, 4),
            SupportedApi::new(ApiKey::EndTxn, 0, 4),
            SupportedApi::new(ApiKey::TxnOffsetCommit, 0, 4),
            SupportedApi::new(ApiKey::DescribeTransactions, 0, 0),
            SupportedApi::new(ApiKey::ListTransactions, 0, 1),
            // What kafka-transactions.sh describe-producers, find-hanging and
            // abort read of a partition's producers (Kafka 4.1: v0 only).
            SupportedApi::new(ApiKey::DescribeProducers, 0, 0),
            SupportedApi::new(ApiKey::DescribeConfigs, 1, 4),
            SupportedApi::new(ApiKey::AlterConfigs, 0, 2),
            SupportedApi::new(ApiKey::IncrementalAlterConfigs, 0, 1),
            SupportedApi::new(ApiKey::DescribeCluster, 0, 1),
            SupportedApi::new(ApiKey::DescribeQuorum, 0, 2),
            SupportedApi::new(ApiKey::CreatePartitions, 0, 3),
            SupportedApi::new(ApiKey::DeleteRecords, 0, 2),
            SupportedApi::new(ApiKey::OffsetForLeaderEpoch, 2, 4),
            SupportedApi::new(ApiKey::ElectLeaders, 0, 2),
            SupportedApi::new(ApiKey::JoinGroup, 0, 9),
            SupportedApi::new(ApiKey::SyncGroup, 0, 5),
            SupportedApi::new(ApiKey::Heartbeat, 0, 4),
            SupportedApi::new(ApiKey::LeaveGroup, 0, 5),
            SupportedApi::new(ApiKey::OffsetCommit, 2, 9),
            SupportedApi::new(ApiKey::OffsetFetch, 1, 9),
            SupportedApi::new(ApiKey::DescribeGroups, 0, 5),
            SupportedApi::new(ApiKey::ListGroups, 0, 5),
            SupportedApi::new(ApiKey::DeleteGroups, 0, 2),
            SupportedApi::new(ApiKey::AlterPartitionReassignments, 0, 1),
            SupportedApi::new(ApiKey::ListPartitionReassignments, 0, 0),
            SupportedApi::new(ApiKey::WriteTxnMarkers, 1, 1),
        ];
        match SupportedApis::new(entries) {
            Ok(table) => table,
            // The table above is a constant; a bad one is a programming error.
            Err(error) => panic!("invalid supported-API table: {error}"),
        }
    })
}

/// What the connection does after a request.
pub enum Reply {
    /// Write this response frame.
    Send(Bytes),
    /// Write these parts in order (bytes, or file regions to splice).
    Parts(Vec<crate::zerocopy::WirePart>),
    /// Nothing to send (acks=0 produce).
    Nothing,
    /// Close the connection (the response could not be encoded; logged).
    Close,
}

/// Handles one decoded request, timing it per API.
pub async fn handle(shard: Rc<Shard>, request: Request, peer: SocketAddr) -> Reply {
    let started = std::time::Instant::now();
    let api_key = request.api_key as i16;
    let metrics_shard = shard.clone();
    let reply = dispatch(shard, request, peer).await;
    metrics_shard
        .metrics
        .record_request(api_key, started.elapsed());
    reply
}

async fn dispatch(shard: Rc<Shard>, request: Request, peer: SocketAddr) -> Reply {
    let correlation_id = request.correlation_id();
    let api_key = request.api_key;
    let version = request.api_version();
    let client_id = request
        .header
        .client_id
        .as_ref()
        .map(|id| id.to_string())
        .unwrap_or_default();
    let response = match request.body {
        RequestKind::ApiVersions(_) => {
            let body = kafki_net::api_versions_response(supported_apis(), None);
            return encode(
                correlation_id,
                api_key,
                version,
                &ResponseKind::ApiVersions(body),
                &peer,
            );
        }
        RequestKind::Metadata(body) => {
            ResponseKind::Metadata(topics::metadata(&shard, body, version).await)
        }
        RequestKind::Produce(body) => match produce::produce(&shard, body, version).await {
            Some(response) => ResponseKind::Produce(response),
            None => return Reply::Nothing,
        },
        RequestKind::Fetch(body) => {
            return fetch::fetch(&shard, body, version, correlation_id).await
        }
        RequestKind::ListOffsets(body) => {
            ResponseKind::ListOffsets(offsets::list_offsets(&shard, body, version).await)
        }
        RequestKind::CreateTopics(body) => {
            ResponseKind::CreateTopics(topics::create_topics(&shard, body, version).await)
        }
        RequestKind::DeleteTopics(body) => {
            ResponseKind::DeleteTopics(topics::delete_topics(&shard, body, version).await)
        }
        RequestKind::CreatePartitions(body) => ResponseKind::CreatePartitions(
            partitions::create_partitions(&shard, body, version).await,
        ),
        RequestKind::AlterPartitionReassignments(body) => {
            ResponseKind::AlterPartitionReassignments(
                reassignments::alter_partition_reassignments(&shard, body, version).await,
            )
        }
        RequestKind::ListPartitionReassignments(body) => ResponseKind::ListPartitionReassignments(
            reassignments::list_partition_reassignments(&shard, body, version).await,
        ),
        RequestKind::DeleteRecords(body) => {
            ResponseKind::DeleteRecords(partitions::delete_records(&shard, body, version).await)
        }
        RequestKind::OffsetForLeaderEpoch(body) => ResponseKind::OffsetForLeaderEpoch(
            partitions::offset_for_leader_epoch(&shard, body, version).await,
        ),
        RequestKind::ElectLeaders(body) => {
            ResponseKind::ElectLeaders(leaders::elect_leaders(&shard, body, version).await)
        }
        RequestKind::DescribeConfigs(body) => {
            ResponseKind::DescribeConfigs(configs::describe_configs(&shard, body, version).await)
        }
        RequestKind::AlterConfigs(body) => {
            ResponseKind::AlterConfigs(configs::alter_configs(&shard, body, version).await)
        }
        RequestKind::IncrementalAlterConfigs(body) => ResponseKind::IncrementalAlterConfigs(
            configs::incremental_alter_configs(&shard, body, version).await,
        ),
        RequestKind::DescribeCluster(body) => {
            ResponseKind::DescribeCluster(configs::describe_cluster(&shard, body, version).await)
        }
        RequestKind::DescribeQuorum(body) => {
            ResponseKind::DescribeQuorum(quorum::describe_quorum(&shard, body, version).await)
        }
        RequestKind::InitProducerId(body) => {
            ResponseKind::InitProducerId(producer::init_producer_id(&shard, body, version).await)
        }
        RequestKind::AddPartitionsToTxn(body) => ResponseKind::AddPartitionsToTxn(
            txn::add_partitions_to_txn(&shard, body, version).await,
        ),
        RequestKind::AddOffsetsToTxn(body) => {
            ResponseKind::AddOffsetsToTxn(txn::add_offsets_to_txn(&shard, body, version).await)
        }
        RequestKind::EndTxn(body) => {
            ResponseKind::EndTxn(txn::end_txn(&shard, body, version).await)
        }
        RequestKind::DescribeTransactions(body) => ResponseKind::DescribeTransactions(
            txn::describe_transactions(&shard, body, version).await,
        ),
        RequestKind::ListTransactions(body) => {
            ResponseKind::ListTransactions(txn::list_transactions(&shard, body, version).await)
        }
        RequestKind::DescribeProducers(body) => ResponseKind::DescribeProducers(
            describe_producers::describe_producers(&shard, body, version).await,
        ),
        RequestKind::FindCoordinator(body) => {
            ResponseKind::FindCoordinator(groups::find_coordinator(&shard, body, version).await)
        }
        RequestKind::JoinGroup(body) => ResponseKind::JoinGroup(
            groups::join_group(&shard, body, version, client_id, format!("/{}", peer.ip())).await,
        ),
        RequestKind::SyncGroup(body) => {
            ResponseKind::SyncGroup(groups::sync_group(&shard, body, version).await)
        }
        RequestKind::Heartbeat(body) => {
            ResponseKind::Heartbeat(groups::heartbeat(&shard, body, version).await)
        }
        RequestKind::LeaveGroup(body) => {
            ResponseKind::LeaveGroup(groups::leave_group(&shard, body, version).await)
        }
        RequestKind::OffsetCommit(body) => {
            ResponseKind::OffsetCommit(groups::offset_commit(&shard, body, version).await)
        }
        RequestKind::TxnOffsetCommit(body) => {
            ResponseKind::TxnOffsetCommit(groups::txn_offset_commit(&shard, body, version).await)
        }
        RequestKind::OffsetFetch(body) => {
            ResponseKind::OffsetFetch(groups::offset_fetch(&shard, body, version).await)
        }
        RequestKind::DescribeGroups(body) => {
            ResponseKind::DescribeGroups(groups::describe_groups(&shard, body, version).await)
        }
        RequestKind::ListGroups(body) => {
            ResponseKind::ListGroups(groups::list_groups(&shard, body, version).await)
        }
        RequestKind::DeleteGroups(body) => {
            ResponseKind::DeleteGroups(groups::delete_groups(&shard, body, version).await)
        }
        RequestKind::WriteTxnMarkers(body) => ResponseKind::WriteTxnMarkers(
            txn_markers::write_txn_markers(&shard, body, version).await,
        ),
        other => {
            // The decoder only passes APIs from the table; reaching here
            // means the table and this match disagree.
            tracing::error!(%peer, api = ?ApiKey::try_from(api_key as i16), "no handler for advertised API");
            drop(other);
            return Reply::Close;
        }
    };
    encode(correlation_id, api_key, version, &response, &peer)
}

fn encode(
    correlation_id: CorrelationId,
    api_key: ApiKey,
    version: i16,
    response: &ResponseKind,
    peer: &SocketAddr,
) -> Reply {
    match kafki_net::encode_response(correlation_id, api_key, version, response) {
        Ok(bytes) => Reply::Send(bytes),
        Err(error) => {
            tracing::error!(%peer, ?api_key, version, %error, "cannot encode response; closing connection");
            Reply::Close
        }
    }
}

/// A request the decoder refused may still deserve an answer: an
/// ApiVersions request of a newer version gets the v0 fallback (so the
/// client retries with a version we know). Everything else: `None`, and the
/// connection closes.
pub fn answer_undecodable(frame: &[u8], error: &RequestError) -> Option<Bytes> {
    let prefix = kafki_net::peek_request_prefix(frame)?;
    let is_api_versions = prefix.api_key == ApiKey::ApiVersions as i16;
    let newer_than_ours = matches!(error, RequestError::UnsupportedVersion { .. })
        || (is_api_versions && !matches!(error, RequestError::TruncatedHeader { .. }));
    if is_api_versions && newer_than_ours {
        return kafki_net::encode_api_versions_fallback(prefix.correlation_id, supported_apis())
            .ok();
    }
    None
}

/// A Kafka string from a Rust one.
pub fn str_bytes(text: &str) -> kafki_net::kafka_protocol::protocol::StrBytes {
    kafki_net::kafka_protocol::protocol::StrBytes::from_string(text.to_string())
}
