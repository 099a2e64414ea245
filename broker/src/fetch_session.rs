//! Incremental fetch sessions (KIP-227), per shard.
//!
//! A client opens a session with a full fetch at epoch 0; the broker
//! remembers the partitions and their fetch positions and answers with a
//! session id. Later requests (epoch 1, 2, ...) list only partitions whose
//! position changed (and those to forget); the answer lists only partitions
//! with new data, an error, or a changed high watermark or log start.
//! Epoch -1 is a sessionless full fetch (and closes the named session).
//!
//! Sessions live on the shard that served the connection; a client that
//! reconnects elsewhere gets `FETCH_SESSION_ID_NOT_FOUND` and starts a new
//! one, as Kafka clients do after any session loss. The cache is bounded
//! (least recently used session evicted); without room, the fetch is
//! answered sessionless (session id 0), which clients accept.

use std::collections::HashMap;
use std::time::Instant;

use kafki_net::kafka_protocol::error::ResponseError;
use kafki_net::kafka_protocol::messages::FetchRequest;

/// Sessions kept per shard.
pub const SESSIONS_PER_SHARD_MAX: usize = 1000;
/// Partitions one session may hold.
pub const SESSION_PARTITIONS_MAX: usize = 10_000;

const FINAL_EPOCH: i32 = -1;
const INITIAL_EPOCH: i32 = 0;

/// One partition to read for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedRead {
    pub topic: String,
    pub partition: i32,
    pub fetch_offset: i64,
    pub max_bytes: i32,
    /// The leader epoch the client believes current (-1: no check).
    pub current_leader_epoch: i32,
}

/// What the broker is about to tell the client about one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionAnswer {
    pub has_records: bool,
    pub error_code: i16,
    pub high_watermark: i64,
    /// The last stable offset (moves apart from the high watermark while a
    /// transaction is open; Kafka counts its change as news too).
    pub last_stable_offset: i64,
    pub log_start: i64,
}

/// What a request asks for, once the session (if any) is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPlan {
    /// 0 when the fetch is sessionless.
    pub session_id: i32,
    /// Whether the answer lists only changed partitions.
    pub incremental: bool,
    pub reads: Vec<PlannedRead>,
}

#[derive(Debug, Clone)]
struct SessionPartition {
    read: PlannedRead,
    last_high_watermark: i64,
    last_stable_offset: i64,
    last_log_start: i64,
    sent: bool,
}

#[derive(Debug)]
struct Session {
    next_epoch: i32,
    partitions: Vec<SessionPartition>,
    last_used: Instant,
}

/// The sessions of one shard.
#[derive(Debug, Default)]
pub struct FetchSessions {
    sessions: HashMap<i32, Session>,
    next_id: i32,
}

fn reads_of(request: &FetchRequest) -> Vec<PlannedRead> {
    request
        .topics
        .iter()
        .flat_map(|topic| {
            topic.partitions.iter().map(move |partition| PlannedRead {
                topic: topic.topic.to_string(),
                partition: partition.partition,
                fetch_offset: partition.fetch_offset,
                max_bytes: partition.partition_max_bytes,
                current_leader_epoch: partition.current_leader_epoch,
            })
        })
        .collect()
}

fn fresh(read: PlannedRead) -> SessionPartition {
    SessionPartition {
        read,
        last_high_watermark: -1,
        last_stable_offset: -1,
        last_log_start: -1,
        sent: false,
    }
}

impl FetchSessions {
    /// Applies `request` to the sessions: the partitions to read and how to
    /// answer. `Err` is a top-level Kafka error code.
    pub fn plan(&mut self, request: &FetchRequest) -> Result<SessionPlan, i16> {
        let reads = reads_of(request);
        match request.session_epoch {
            FINAL_EPOCH => {
                self.sessions.remove(&request.session_id);
                Ok(SessionPlan {
                    session_id: 0,
                    incremental: false,
                    reads,
                })
            }
            INITIAL_EPOCH => {
                self.sessions.remove(&request.session_id);
                if reads.len() > SESSION_PARTITIONS_MAX || !self.make_room() {
                    return Ok(SessionPlan {
                        session_id: 0,
                        incremental: false,
                        reads,
                    });
                }
                let id = self.new_id();
                tracing::debug!(
                    session_id = id,
                    partitions = reads.len(),
                    "fetch session opened"
                );
                self.sessions.insert(
                    id,
                    Session {
                        next_epoch: 1,
                        partitions: reads.iter().cloned().map(fresh).collect(),
                        last_used: Instant::now(),
                    },
                );
                Ok(SessionPlan {
                    session_id: id,
                    incremental: false,
                    reads,
                })
            }
            epoch => {
                let Some(session) = self.sessions.get_mut(&request.session_id) else {
                    return Err(ResponseError::FetchSessionIdNotFound.code());
                };
                if epoch != session.next_epoch {
                    return Err(ResponseError::InvalidFetchSessionEpoch.code());
                }
                for forgotten in &request.forgotten_topics_data {
                    let topic = forgotten.topic.to_string();
                    session.partitions.retain(|known| {
                        known.read.topic != topic
                            || !forgotten.partitions.contains(&known.read.partition)
                    });
                }
                for read in reads {
                    match session.partitions.iter_mut().find(|known| {
                        known.read.topic == read.topic && known.read.partition == read.partition
                    }) {
                        Some(known) => known.read = read,
                        None => {
                            if session.partitions.len() >= SESSION_PARTITIONS_MAX {
                                return Err(ResponseError::InvalidRequest.code());
                            }
                            session.partitions.push(fresh(read));
                        }
                    }
                }
                session.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                session.last_used = Instant::now();
                Ok(SessionPlan {
                    session_id: request.session_id,
                    incremental: true,
                    reads: session
                        .partitions
                        .iter()
                        .map(|known| known.read.clone())
                        .collect(),
                })
            }
        }
    }

    /// Whether an incremental answer must include this partition, and if
    /// so, remembers what it tells the client.
    pub fn should_send(
        &mut self,
        session_id: i32,
        topic: &str,
        partition: i32,
        answer: PartitionAnswer,
    ) -> bool {
        let PartitionAnswer {
            has_records,
            error_code,
            high_watermark,
            last_stable_offset,
            log_start,
        } = answer;
        let Some(known) = self.sessions.get_mut(&session_id).and_then(|session| {
            session
                .partitions
                .iter_mut()
                .find(|known| known.read.topic == topic && known.read.partition == partition)
        }) else {
            return true;
        };
        let changed = has_records
            || error_code != 0
            || !known.sent
            || known.last_high_watermark != high_watermark
            || known.last_stable_offset != last_stable_offset
            || known.last_log_start != log_start;
        if changed {
            known.sent = true;
            known.last_high_watermark = high_watermark;
            known.last_stable_offset = last_stable_offset;
            known.last_log_start = log_start;
        }
        changed
    }

    fn new_id(&mut self) -> i32 {
        loop {
            self.next_id = if self.next_id >= i32::MAX - 1 {
                1
            } else {
                self.next_id + 1
            };
            if !self.sessions.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Evicts the least recently used session when full.
    fn make_room(&mut self) -> bool {
        if self.sessions.len() < SESSIONS_PER_SHARD_MAX {
            return true;
        }
        let oldest = self
            .sessions
            .iter()
            .min_by_key(|(_, session)| session.last_used)
            .map(|(id, _)| *id);
        match oldest {
            Some(id) => {
                self.sessions.remove(&id);
                true
            }
            None => false,
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::fetch_request::{
        FetchPartition, FetchTopic, ForgottenTopic,
    };
    use kafki_net::kafka_protocol::messages::TopicName;
    use kafki_net::kafka_protocol::protocol::StrBytes;

    fn request(
        session_id: i32,
        epoch: i32,
        partitions: &[(i32, i64)],
        forgotten: &[i32],
    ) -> FetchRequest {
        let topic = FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_static_str("t")))
            .with_partitions(
                partitions
                    .iter()
                    .map(|(index, offset)| {
                        FetchPartition::default()
                            .with_partition(*index)
                            .with_fetch_offset(*offset)
                            .with_partition_max_bytes(1000)
                    })
                    .collect(),
            );
        let mut request = FetchRequest::default()
            .with_session_id(session_id)
            .with_session_epoch(epoch)
            .with_topics(if partitions.is_empty() {
                vec![]
            } else {
                vec![topic]
            });
        if !forgotten.is_empty() {
            request = request.with_forgotten_topics_data(vec![ForgottenTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(forgotten.to_vec())]);
        }
        request
    }

    #[test]
    fn session_lifecycle() {
        let mut sessions = FetchSessions::default();
        let opened = sessions
            .plan(&request(0, 0, &[(0, 5), (1, 7)], &[]))
            .expect("open");
        assert!(opened.session_id > 0 && !opened.incremental);
        assert_eq!(opened.reads.len(), 2);
        let id = opened.session_id;
        // Epoch 1: only partition 0 moved; both are read.
        let next = sessions
            .plan(&request(id, 1, &[(0, 9)], &[]))
            .expect("incremental");
        assert!(next.incremental);
        assert_eq!(
            next.reads
                .iter()
                .map(|read| (read.partition, read.fetch_offset))
                .collect::<Vec<_>>(),
            vec![(0, 9), (1, 7)]
        );
        // A replayed or skipped epoch is refused.
        assert_eq!(
            sessions.plan(&request(id, 1, &[], &[])),
            Err(ResponseError::InvalidFetchSessionEpoch.code())
        );
        assert_eq!(
            sessions.plan(&request(99, 1, &[], &[])),
            Err(ResponseError::FetchSessionIdNotFound.code())
        );
        // Forget partition 1.
        let forgot = sessions.plan(&request(id, 2, &[], &[1])).expect("forget");
        assert_eq!(forgot.reads.len(), 1);
        // Epoch -1 closes it.
        let closed = sessions
            .plan(&request(id, -1, &[(0, 9)], &[]))
            .expect("close");
        assert_eq!(closed.session_id, 0);
        assert!(sessions.is_empty());
    }

    #[test]
    fn incremental_answers_only_changes() {
        let mut sessions = FetchSessions::default();
        let id = sessions
            .plan(&request(0, 0, &[(0, 0)], &[]))
            .expect("open")
            .session_id;
        let answer = |has_records, error_code, high_watermark| PartitionAnswer {
            has_records,
            error_code,
            high_watermark,
            last_stable_offset: high_watermark,
            log_start: 0,
        };
        // (answer, sent?, why), in order: each is compared with the one before.
        let steps = [
            (answer(false, 0, 10), true, "first answer always sent"),
            (answer(false, 0, 10), false, "nothing changed"),
            (answer(false, 0, 11), true, "high watermark moved"),
            (answer(true, 0, 11), true, "records"),
            (answer(false, 1, 11), true, "error"),
        ];
        for (answer, sent, why) in steps {
            assert_eq!(sessions.should_send(id, "t", 0, answer), sent, "{why}");
        }
    }

    #[test]
    fn cache_is_bounded() {
        let mut sessions = FetchSessions::default();
        for _ in 0..SESSIONS_PER_SHARD_MAX + 10 {
            sessions.plan(&request(0, 0, &[(0, 0)], &[])).expect("open");
        }
        assert_eq!(sessions.len(), SESSIONS_PER_SHARD_MAX);
    }
}
