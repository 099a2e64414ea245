//! The transaction coordinator wired in-process (`common::InProcessBroker`):
//! FindCoordinator for a transactional id, InitProducerId with one (and
//! the fence of an older epoch, in the codes of new and old clients),
//! AddPartitionsToTxn in both forms (and `verify_only`), EndTxn,
//! Describe/ListTransactions, TxnOffsetCommit pending until the marker,
//! a timed-out transaction aborted and its producer fenced, and refusals
//! of bad input, and a back-to-back producer's next AddPartitionsToTxn
//! waiting for the previous commit. Markers are written by the partition side
//! (`txn::markers`), so an ended transaction reaches its Complete state.

mod common;

use std::time::Duration;

use common::{run, InProcessBroker};
use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::add_partitions_to_txn_request::{
    AddPartitionsToTxnTopic, AddPartitionsToTxnTransaction,
};
use kafki_net::kafka_protocol::messages::*;
use kafki_net::kafka_protocol::protocol::StrBytes;

fn text(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

/// InitProducerId, retried while the coordinator loads or fetches ids.
async fn init(broker: &InProcessBroker, id: &str, version: i16) -> InitProducerIdResponse {
    init_with_timeout(broker, id, version, 60_000).await
}

async fn init_with_timeout(
    broker: &InProcessBroker,
    id: &str,
    version: i16,
    timeout_ms: i32,
) -> InitProducerIdResponse {
    for _ in 0..100 {
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(TransactionalId(text(id))))
            .with_transaction_timeout_ms(timeout_ms)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
        let response: InitProducerIdResponse = broker
            .call(RequestKind::InitProducerId(request), version)
            .await
            .expect("answer");
        let retriable = [
            ResponseError::CoordinatorLoadInProgress.code(),
            ResponseError::ConcurrentTransactions.code(),
        ];
        if !retriable.contains(&response.error_code) {
            return response;
        }
        glommio::timer::sleep(Duration::from_millis(20)).await;
    }
    panic!("InitProducerId kept asking to retry");
}

fn topics(topic: &str, partitions: &[i32]) -> Vec<AddPartitionsToTxnTopic> {
    vec![AddPartitionsToTxnTopic::default()
        .with_name(TopicName(text(topic)))
        .with_partitions(partitions.to_vec())]
}

/// AddPartitionsToTxn v3 (one transaction); every partition's code.
async fn add_partitions(
    broker: &InProcessBroker,
    id: &str,
    producer: &InitProducerIdResponse,
    topic: &str,
    partitions: &[i32],
    version: i16,
) -> Vec<i16> {
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(text(id)))
        .with_v3_and_below_producer_id(producer.producer_id)
        .with_v3_and_below_producer_epoch(producer.producer_epoch)
        .with_v3_and_below_topics(topics(topic, partitions));
    let response: AddPartitionsToTxnResponse = broker
        .call(RequestKind::AddPartitionsToTxn(request), version)
        .await
        .expect("answer");
    response
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|topic| topic.results_by_partition.iter())
        .map(|result| result.partition_error_code)
        .collect()
}

/// EndTxn v3 for `producer`'s transaction of `id`; its error code.
async fn end_txn(
    broker: &InProcessBroker,
    id: &str,
    producer: &InitProducerIdResponse,
    commit: bool,
) -> i16 {
    let end = EndTxnRequest::default()
        .with_transactional_id(TransactionalId(text(id)))
        .with_producer_id(producer.producer_id)
        .with_producer_epoch(producer.producer_epoch)
        .with_committed(commit);
    let ended: EndTxnResponse = broker
        .call(RequestKind::EndTxn(end), 3)
        .await
        .expect("answer");
    ended.error_code
}

async fn describe(broker: &InProcessBroker, id: &str) -> (i16, String, Vec<(String, Vec<i32>)>) {
    let request = DescribeTransactionsRequest::default()
        .with_transactional_ids(vec![TransactionalId(text(id))]);
    let response: DescribeTransactionsResponse = broker
        .call(RequestKind::DescribeTransactions(request), 0)
        .await
        .expect("answer");
    let state = &response.transaction_states[0];
    (
        state.error_code,
        state.transaction_state.to_string(),
        state
            .topics
            .iter()
            .map(|topic| (topic.topic.to_string(), topic.partitions.clone()))
            .collect(),
    )
}

#[test]
fn a_transaction_goes_from_init_to_prepare_commit_and_is_described() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 2).await;

        let find = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![text("app-1")]);
        let found: FindCoordinatorResponse = broker
            .call(RequestKind::FindCoordinator(find), 4)
            .await
            .expect("answer");
        assert_eq!(found.coordinators[0].error_code, 0, "{found:?}");
        assert_eq!(found.coordinators[0].node_id.0, broker.shard.config.node_id);

        let producer = init(&broker, "app-1", 4).await;
        assert_eq!(producer.error_code, 0, "{producer:?}");
        assert!(producer.producer_id.0 >= 0);
        assert_eq!(producer.producer_epoch, 0);
        assert_eq!(describe(&broker, "app-1").await.1, "Empty");

        let codes = add_partitions(&broker, "app-1", &producer, "data", &[0, 1], 3).await;
        assert_eq!(codes, vec![0, 0]);
        let (code, state, partitions) = describe(&broker, "app-1").await;
        assert_eq!((code, state.as_str()), (0, "Ongoing"));
        assert_eq!(partitions, vec![("data".to_string(), vec![0, 1])]);

        // A partition leader's verify-only check (v4+, batched form).
        let verify = AddPartitionsToTxnRequest::default().with_transactions(vec![
            AddPartitionsToTxnTransaction::default()
                .with_transactional_id(TransactionalId(text("app-1")))
                .with_producer_id(producer.producer_id)
                .with_producer_epoch(producer.producer_epoch)
                .with_verify_only(true)
                .with_topics(topics("data", &[0])),
        ]);
        let verified: AddPartitionsToTxnResponse = broker
            .call(RequestKind::AddPartitionsToTxn(verify), 4)
            .await
            .expect("answer");
        let result = &verified.results_by_transaction[0].topic_results[0].results_by_partition[0];
        assert_eq!(result.partition_error_code, 0, "{verified:?}");
        // The same check as the partition side calls it in-process.
        let checked = kafki_broker::txn::runtime::verify_partitions(
            &broker.shard,
            "app-1",
            kafki_broker::txn::ProducerIdAndEpoch {
                producer_id: producer.producer_id.0,
                epoch: producer.producer_epoch,
            },
            vec![
                kafki_broker::txn::TopicPartition::new("data", 1),
                kafki_broker::txn::TopicPartition::new("other", 0),
            ],
        )
        .await
        .expect("the coordinator answers");
        let errors: Vec<_> = checked.into_iter().map(|(_, error)| error).collect();
        assert_eq!(
            errors,
            vec![None, Some(kafki_broker::txn::TxnError::InvalidTxnState)]
        );

        let listed: ListTransactionsResponse = broker
            .call(
                RequestKind::ListTransactions(
                    ListTransactionsRequest::default()
                        .with_state_filters(vec![text("Ongoing"), text("Bogus")]),
                ),
                1,
            )
            .await
            .expect("answer");
        let ids: Vec<String> = listed
            .transaction_states
            .iter()
            .map(|state| state.transactional_id.to_string())
            .collect();
        assert_eq!(ids, vec!["app-1".to_string()]);
        assert_eq!(listed.unknown_state_filters, vec![text("Bogus")]);

        assert_eq!(end_txn(&broker, "app-1", &producer, true).await, 0);
        // Answered once PrepareCommit is durable; complete once the
        // partition took the marker.
        let mut state = describe(&broker, "app-1").await.1;
        for _ in 0..200 {
            if state == "CompleteCommit" {
                break;
            }
            assert_eq!(state, "PrepareCommit");
            glommio::timer::sleep(Duration::from_millis(10)).await;
            state = describe(&broker, "app-1").await.1;
        }
        assert_eq!(state, "CompleteCommit");
    });
}

#[test]
fn a_new_producer_fences_the_old_one_and_old_clients_get_their_code() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 1).await;
        let first = init(&broker, "app-2", 4).await;
        assert_eq!(first.error_code, 0);
        let second = init(&broker, "app-2", 4).await;
        assert_eq!(second.error_code, 0);
        assert_eq!(second.producer_id, first.producer_id);
        assert_eq!(second.producer_epoch, first.producer_epoch + 1);

        let fenced = add_partitions(&broker, "app-2", &first, "data", &[0], 3).await;
        assert_eq!(fenced, vec![ResponseError::ProducerFenced.code()]);
        let legacy = add_partitions(&broker, "app-2", &first, "data", &[0], 1).await;
        assert_eq!(legacy, vec![ResponseError::InvalidProducerEpoch.code()]);
        let current = add_partitions(&broker, "app-2", &second, "data", &[0], 3).await;
        assert_eq!(current, vec![0]);
    });
}

#[test]
fn bad_input_gets_kafka_codes() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 1).await;
        let empty = init(&broker, "", 4).await;
        assert_eq!(empty.error_code, ResponseError::InvalidRequest.code());

        let producer = init(&broker, "app-3", 4).await;
        let codes = add_partitions(&broker, "app-3", &producer, "data", &[0, 7], 3).await;
        assert_eq!(
            codes,
            vec![
                ResponseError::OperationNotAttempted.code(),
                ResponseError::UnknownTopicOrPartition.code()
            ]
        );
        let unknown = describe(&broker, "never-seen").await;
        assert_eq!(unknown.0, ResponseError::TransactionalIdNotFound.code());

        let too_long = init(&broker, &"x".repeat(40_000), 4).await;
        assert_eq!(too_long.error_code, ResponseError::InvalidRequest.code());

        let find = FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![text("")]);
        let found: FindCoordinatorResponse = broker
            .call(RequestKind::FindCoordinator(find), 4)
            .await
            .expect("answer");
        assert_eq!(
            found.coordinators[0].error_code,
            ResponseError::InvalidRequest.code()
        );
    });
}

/// OffsetFetch v7 of `topic`-0 for `group`: (offset, error code).
async fn fetch_offset(
    broker: &InProcessBroker,
    group: &str,
    topic: &str,
    stable: bool,
) -> (i64, i16) {
    use kafki_net::kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
    let request = OffsetFetchRequest::default()
        .with_group_id(GroupId(text(group)))
        .with_require_stable(stable)
        .with_topics(Some(vec![OffsetFetchRequestTopic::default()
            .with_name(TopicName(text(topic)))
            .with_partition_indexes(vec![0])]));
    let response: OffsetFetchResponse = broker
        .call(RequestKind::OffsetFetch(request), 7)
        .await
        .expect("answer");
    let partition = &response.topics[0].partitions[0];
    (partition.committed_offset, partition.error_code)
}

#[test]
fn transactional_offsets_wait_for_the_commit_marker() {
    use kafki_net::kafka_protocol::messages::txn_offset_commit_request::{
        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
    };
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 1).await;
        let producer = init(&broker, "app-4", 4).await;
        let add = AddOffsetsToTxnRequest::default()
            .with_transactional_id(TransactionalId(text("app-4")))
            .with_producer_id(producer.producer_id)
            .with_producer_epoch(producer.producer_epoch)
            .with_group_id(GroupId(text("g")));
        let added: AddOffsetsToTxnResponse = broker
            .call(RequestKind::AddOffsetsToTxn(add), 3)
            .await
            .expect("answer");
        assert_eq!(added.error_code, 0);
        let (_, _, partitions) = describe(&broker, "app-4").await;
        assert_eq!(partitions[0].0, "__consumer_offsets");

        let commit = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(text("app-4")))
            .with_group_id(GroupId(text("g")))
            .with_producer_id(producer.producer_id)
            .with_producer_epoch(producer.producer_epoch)
            .with_generation_id(-1)
            .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(text("data")))
                .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(17)])]);
        let committed: TxnOffsetCommitResponse = broker
            .call(RequestKind::TxnOffsetCommit(commit.clone()), 3)
            .await
            .expect("answer");
        assert_eq!(
            committed.topics[0].partitions[0].error_code, 0,
            "{committed:?}"
        );
        // Stored, but pending: invisible, and unstable for require_stable.
        assert_eq!(fetch_offset(&broker, "g", "data", false).await, (-1, 0));
        assert_eq!(
            fetch_offset(&broker, "g", "data", true).await,
            (-1, ResponseError::UnstableOffsetCommit.code())
        );
        // A second commit of the same producer lands too (next sequence).
        let again: TxnOffsetCommitResponse = broker
            .call(
                RequestKind::TxnOffsetCommit(commit.with_topics(vec![
                    TxnOffsetCommitRequestTopic::default()
                        .with_name(TopicName(text("data")))
                        .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(18)]),
                ])),
                3,
            )
            .await
            .expect("answer");
        assert_eq!(again.topics[0].partitions[0].error_code, 0, "{again:?}");

        // What the partition side does once the COMMIT marker is durable.
        let offsets_partition = kafki_broker::group::runtime::offsets_partition_for(
            "g",
            broker.shard.config.settings.offsets_topic_partitions,
        );
        kafki_broker::group::runtime::complete_txn_offsets(
            &broker.shard,
            offsets_partition,
            producer.producer_id.0,
            true,
        )
        .await;
        assert_eq!(fetch_offset(&broker, "g", "data", true).await, (18, 0));
    });
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 1).await;
        let producer = init_with_timeout(&broker, "app-5", 4, 50).await;
        assert_eq!(producer.error_code, 0);
        let added = add_partitions(&broker, "app-5", &producer, "data", &[0], 3).await;
        assert_eq!(added, vec![0]);
        glommio::timer::sleep(Duration::from_millis(120)).await;
        // The coordinator hears the time before each input: the timed-out
        // transaction is aborted with the epoch bumped (CONCURRENT_TRANSACTIONS
        // while that record is in flight), so this producer's commit is fenced.
        let end = EndTxnRequest::default()
            .with_transactional_id(TransactionalId(text("app-5")))
            .with_producer_id(producer.producer_id)
            .with_producer_epoch(producer.producer_epoch)
            .with_committed(true);
        let mut code = ResponseError::ConcurrentTransactions.code();
        for _ in 0..100 {
            let ended: EndTxnResponse = broker
                .call(RequestKind::EndTxn(end.clone()), 3)
                .await
                .expect("answer");
            code = ended.error_code;
            if code != ResponseError::ConcurrentTransactions.code() {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(code, ResponseError::ProducerFenced.code());
        // The abort's markers are written (the partition is local), so it
        // completes.
        let mut state = describe(&broker, "app-5").await.1;
        for _ in 0..200 {
            if state == "CompleteAbort" {
                break;
            }
            glommio::timer::sleep(Duration::from_millis(10)).await;
            state = describe(&broker, "app-5").await.1;
        }
        assert_eq!(state, "CompleteAbort");
    });
}

/// A producer committing back to back: the next transaction's first
/// AddPartitionsToTxn arrives while the previous commit's markers are
/// still being written. It waits for them (briefly) and succeeds instead
/// of sending the client into its CONCURRENT_TRANSACTIONS backoff.
#[test]
fn the_next_transaction_waits_for_the_previous_commit_to_complete() {
    run(|| async {
        let broker = InProcessBroker::start(&[]).await;
        broker.create_topic("data", 2).await;
        let producer = init(&broker, "back-to-back", 4).await;
        assert_eq!(producer.error_code, 0, "{producer:?}");
        for round in 0..5 {
            let codes =
                add_partitions(&broker, "back-to-back", &producer, "data", &[0, 1], 3).await;
            assert_eq!(codes, vec![0, 0], "round {round}");
            let ended = end_txn(&broker, "back-to-back", &producer, true).await;
            assert_eq!(ended, 0, "round {round}");
            // No pause: the markers of this commit are still in flight.
        }
        let (code, state, _) = describe(&broker, "back-to-back").await;
        assert_eq!(code, 0);
        assert!(
            state == "PrepareCommit" || state == "CompleteCommit",
            "{state}"
        );
    });
}
