//! Node-to-node frames over TCP (`--cluster-listen`): the wire format, one
//! outgoing connection per peer (reconnected with backoff, a bounded queue
//! whose overflow is dropped: Raft and heartbeats retry by themselves), and
//! the accept loop that hands every frame received to the quorum's inbox.
//!
//! A frame: magic `KC`, version 1, kind, body length (u32, big-endian),
//! CRC32C of the body, body. One kind's CRC covers only the body's leading
//! part, whose first 4 bytes say how long it is
//! ([`FrameKind::ReplicaFetchAnswerSpliced`]: the record bytes after it are
//! spliced from segment files and checked by their own batch CRCs). The first frame on a connection is `Hello`
//! with the sender's node id; a frame with a bad magic, version, length or
//! CRC closes that connection (logged), never the node.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use serde::{Deserialize, Serialize};

use crate::zerocopy::{self, Splicer, WirePart};

const MAGIC: [u8; 2] = *b"KC";
const VERSION: u8 = 1;
const HEADER_BYTES: usize = 12;
/// Largest body accepted: a metadata snapshot of many thousand partitions
/// fits many times over; a peer sending more is broken or hostile.
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Frames queued for one peer before new ones are dropped.
const QUEUE_FRAMES_MAX: usize = 4096;
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    Hello = 1,
    /// A raft-rs message, protobuf-encoded.
    Raft = 2,
    /// A [`Control`] message, JSON-encoded (small and rare).
    Control = 3,
    /// A follower node's fetch for many partitions
    /// ([`crate::replication::wire`], fixed layout).
    ReplicaFetch = 4,
    /// A leader node's answer to a `ReplicaFetch`, record batches included
    /// ([`crate::replication::wire`], fixed layout).
    ReplicaFetchAnswer = 5,
    /// A replica's request for another replica's copy of a batch it found
    /// damaged ([`crate::replication::wire::RepairRequest`]).
    ReplicaRepair = 6,
    /// The copy, or none ([`crate::replication::wire::RepairAnswer`]).
    ReplicaRepairAnswer = 7,
    /// Markers to write on the partitions the receiver leads
    /// ([`crate::txn::marker_frames::MarkersRequest`]).
    TxnMarkers = 8,
    /// One error code per partition of a `TxnMarkers`
    /// ([`crate::txn::marker_frames::MarkersAnswer`]).
    TxnMarkersAnswer = 9,
    /// A partition leader's KIP-890 question to the transaction
    /// coordinator ([`crate::txn::verify_frames::VerifyRequest`]).
    TxnVerify = 10,
    /// The coordinator's answer ([`crate::txn::verify_frames::VerifyAnswer`]).
    TxnVerifyAnswer = 11,
    /// A `ReplicaFetchAnswer` whose record bytes follow everything else and
    /// lie outside the frame CRC, so the leader can splice them from its
    /// segment files ([`crate::replication::wire::encode_spliced_answer`]).
    ReplicaFetchAnswerSpliced = 12,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Hello),
            2 => Some(Self::Raft),
            3 => Some(Self::Control),
            4 => Some(Self::ReplicaFetch),
            5 => Some(Self::ReplicaFetchAnswer),
            6 => Some(Self::ReplicaRepair),
            7 => Some(Self::ReplicaRepairAnswer),
            8 => Some(Self::TxnMarkers),
            9 => Some(Self::TxnMarkersAnswer),
            10 => Some(Self::TxnVerify),
            11 => Some(Self::TxnVerifyAnswer),
            12 => Some(Self::ReplicaFetchAnswerSpliced),
            _ => None,
        }
    }

    /// How many leading bytes of `body` the frame CRC covers: all of it,
    /// except for a spliced answer, which says (`None`: it cannot).
    pub fn crc_covered(self, body: &[u8]) -> Option<usize> {
        match self {
            Self::ReplicaFetchAnswerSpliced => crate::replication::wire::spliced_crc_covered(body),
            _ => Some(body.len()),
        }
    }
}

/// Node-to-node messages besides Raft's own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// A node to the controller: still here, at registration `epoch`.
    Heartbeat { node: i32, epoch: u64, sent_ms: u64 },
    /// A node outside the voters asks them to register it (it cannot
    /// propose: it does not know the Raft leader until it is a learner).
    Register {
        registration: crate::metadata::NodeRegistration,
    },
    /// The controller's answer: what it knows of the node now.
    HeartbeatReply {
        controller: i32,
        epoch: u64,
        /// `alive`, `fenced`, `shutting_down` or `unknown`.
        state: String,
        /// Echoes the heartbeat's `sent_ms`, so the node's lease counts
        /// from when it asked, not from when the answer came.
        sent_ms: u64,
    },
    /// A node that is not the Raft leader asks the leader for its report
    /// (a Kafka client sent it DescribeQuorum); `request` matches the answer.
    DescribeQuorum { request: u64 },
    /// The leader's answer; `None` when the node asked is not the leader.
    DescribeQuorumAnswer {
        request: u64,
        report: Option<super::describe::QuorumReport>,
    },
}

/// One frame as received.
#[derive(Debug)]
pub struct Inbound {
    pub from: i32,
    pub kind: FrameKind,
    pub body: Vec<u8>,
}

/// Why a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic or version {0:?}")]
    BadHeader([u8; 3]),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes is over the {FRAME_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("frame body fails its CRC")]
    BadCrc,
    #[error("the first frame is not Hello")]
    NoHello,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub fn encode_frame(kind: FrameKind, body: &[u8]) -> Vec<u8> {
    frame_segments(kind, vec![Bytes::copy_from_slice(body)]).concat()
}

/// Parts at least this large are written as they are; smaller ones are
/// joined with their neighbours (and the header) into one write.
const COPY_BELOW_BYTES: usize = 16 << 10;

/// A frame whose body is `parts` joined, as segments to write in order:
/// the header and the small parts copied together, large parts (record
/// batches) passed through without a copy.
pub fn frame_segments(kind: FrameKind, parts: Vec<Bytes>) -> Vec<Bytes> {
    let crc = parts
        .iter()
        .fold(0, |crc, part| crc32c::crc32c_append(crc, part));
    join_small(kind, crc, parts.into_iter().map(WirePart::Bytes))
        .into_iter()
        .filter_map(|segment| match segment {
            WirePart::Bytes(bytes) => Some(bytes),
            WirePart::File { .. } => None,
        })
        .collect()
}

/// A spliced answer's frame: the CRC covers `covered` only; `records`
/// (bytes and file regions) follow it as they are.
pub fn spliced_frame_segments(
    kind: FrameKind,
    covered: Bytes,
    records: Vec<WirePart>,
) -> Vec<WirePart> {
    let crc = crc32c::crc32c(&covered);
    join_small(
        kind,
        crc,
        std::iter::once(WirePart::Bytes(covered)).chain(records),
    )
}

/// The frame header, then `parts`: bytes below [`COPY_BELOW_BYTES`] joined
/// with their neighbours into one write, larger ones and file regions
/// passed through.
fn join_small(
    kind: FrameKind,
    crc: u32,
    parts: impl Iterator<Item = WirePart> + Clone,
) -> Vec<WirePart> {
    let length: u64 = parts.clone().map(|part| part.len()).sum();
    let mut header = BytesMut::with_capacity(HEADER_BYTES);
    header.put_slice(&MAGIC);
    header.put_u8(VERSION);
    header.put_u8(kind as u8);
    // Encoders keep bodies within FRAME_BYTES_MAX (< u32::MAX).
    header.put_u32(length as u32);
    header.put_u32(crc);
    let header = WirePart::Bytes(header.freeze());
    zerocopy::join_small(
        std::iter::once(header).chain(parts),
        COPY_BELOW_BYTES,
        usize::MAX,
    )
}

/// Checks a frame header; the body's length and expected CRC.
pub fn decode_header(header: &[u8; HEADER_BYTES]) -> Result<(FrameKind, usize, u32), FrameError> {
    if header[0..2] != MAGIC || header[2] != VERSION {
        return Err(FrameError::BadHeader([header[0], header[1], header[2]]));
    }
    let kind = FrameKind::from_byte(header[3]).ok_or(FrameError::UnknownKind(header[3]))?;
    let length = u32::from_be_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if length > FRAME_BYTES_MAX {
        return Err(FrameError::TooLarge(length));
    }
    let crc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
    Ok((kind, length, crc))
}

async fn read_frame(stream: &mut TcpStream) -> Result<(FrameKind, Vec<u8>), FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    stream.read_exact(&mut header).await?;
    let (kind, length, crc) = decode_header(&header)?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await?;
    let covered = kind.crc_covered(&body).ok_or(FrameError::BadCrc)?;
    if crc32c::crc32c(&body[..covered]) != crc {
        return Err(FrameError::BadCrc);
    }
    Ok((kind, body))
}

/// Outgoing connections of this node, one per peer.
pub struct Transport {
    me: i32,
    /// Where each peer listens (voters from the configuration, other nodes
    /// from their registration).
    addresses: RefCell<HashMap<i32, String>>,
    queues: RefCell<HashMap<i32, LocalSender<Vec<WirePart>>>>,
}

impl Transport {
    pub fn new(me: i32, addresses: HashMap<i32, String>) -> Rc<Self> {
        Rc::new(Self {
            me,
            addresses: RefCell::new(addresses),
            queues: RefCell::new(HashMap::new()),
        })
    }

    /// Learns (or changes) where `node` listens; voters' addresses from the
    /// configuration are never replaced (they may be proxies or NAT
    /// addresses only this node's operator knows).
    pub fn learn_address(&self, node: i32, address: &str, configured: bool) {
        if node == self.me {
            return;
        }
        let mut addresses = self.addresses.borrow_mut();
        if configured || !addresses.contains_key(&node) {
            addresses.insert(node, address.to_string());
        }
    }

    pub fn address_of(&self, node: i32) -> Option<String> {
        self.addresses.borrow().get(&node).cloned()
    }

    /// Queues a frame for `to`; dropped (and `false`) when the peer is
    /// unknown or its queue is full.
    pub fn send(self: &Rc<Self>, to: i32, kind: FrameKind, body: &[u8]) -> bool {
        self.send_parts(to, kind, vec![Bytes::copy_from_slice(body)])
    }

    /// [`Transport::send`] of a body in parts: large parts (record batches)
    /// are written from where they are, never copied ([`frame_segments`]).
    pub fn send_parts(self: &Rc<Self>, to: i32, kind: FrameKind, parts: Vec<Bytes>) -> bool {
        if to == self.me {
            return false;
        }
        let frame = frame_segments(kind, parts)
            .into_iter()
            .map(WirePart::Bytes)
            .collect();
        self.queue_frame(to, frame)
    }

    /// Queues a spliced answer ([`spliced_frame_segments`]) for `to`.
    pub fn send_spliced(
        self: &Rc<Self>,
        to: i32,
        kind: FrameKind,
        covered: Bytes,
        records: Vec<WirePart>,
    ) -> bool {
        if to == self.me {
            return false;
        }
        self.queue_frame(to, spliced_frame_segments(kind, covered, records))
    }

    fn queue_frame(self: &Rc<Self>, to: i32, frame: Vec<WirePart>) -> bool {
        if let Some(queue) = self.queues.borrow().get(&to) {
            return queue.try_send(frame).is_ok();
        }
        let Some(address) = self.address_of(to) else {
            return false;
        };
        let (sender, receiver) = local_channel::new_bounded(QUEUE_FRAMES_MAX);
        let queued = sender.try_send(frame).is_ok();
        self.queues.borrow_mut().insert(to, sender);
        let transport = self.clone();
        glommio::spawn_local(async move {
            transport.drain(to, address, receiver).await;
        })
        .detach();
        queued
    }

    pub fn send_control(self: &Rc<Self>, to: i32, message: &Control) -> bool {
        match serde_json::to_vec(message) {
            Ok(body) => self.send(to, FrameKind::Control, &body),
            Err(_) => false,
        }
    }

    /// The writer task of one peer: connects (again, with backoff), says
    /// Hello, writes frames in order. A frame whose write failed is lost;
    /// the protocols above resend what matters.
    async fn drain(
        self: Rc<Self>,
        peer: i32,
        mut address: String,
        receiver: local_channel::LocalReceiver<Vec<WirePart>>,
    ) {
        let mut receiver = receiver.stream();
        let mut backoff = RECONNECT_MIN;
        let mut connection: Option<TcpStream> = None;
        let mut splicer: Option<Splicer> = None;
        let mut warned = false;
        while let Some(frame) = receiver.next().await {
            if connection.is_none() {
                if let Some(current) = self.address_of(peer) {
                    address = current;
                }
                match connect(&address, self.me).await {
                    Ok(stream) => {
                        if warned {
                            tracing::info!(peer, %address, "connected to node");
                        }
                        connection = Some(stream);
                        backoff = RECONNECT_MIN;
                        warned = false;
                    }
                    Err(error) => {
                        if !warned {
                            tracing::warn!(peer, %address, %error, "cannot reach node; retrying");
                            warned = true;
                        }
                        glommio::timer::sleep(backoff).await;
                        backoff = (backoff * 2).min(RECONNECT_MAX);
                        continue;
                    }
                }
            }
            let Some(stream) = connection.as_mut() else {
                continue;
            };
            let written = glommio::timer::timeout(WRITE_TIMEOUT, async {
                let socket = std::os::fd::AsRawFd::as_raw_fd(&*stream);
                Ok(zerocopy::write_parts(stream, socket, &mut splicer, &frame).await)
            })
            .await;
            if !matches!(written, Ok(Ok(()))) {
                tracing::debug!(peer, %address, "connection to node lost");
                connection = None;
                // A splice cut short may have left file bytes in the pipe:
                // they must not open the next frame on the next connection.
                splicer = None;
            }
        }
    }
}

async fn connect(address: &str, me: i32) -> anyhow::Result<TcpStream> {
    let resolved: SocketAddr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{address} resolves to no address"))?;
    let mut stream = glommio::timer::timeout(CONNECT_TIMEOUT, async {
        Ok(TcpStream::connect(resolved).await)
    })
    .await
    .map_err(|_| anyhow::anyhow!("connecting to {address} timed out"))?
    .map_err(|error| anyhow::anyhow!("connecting to {address}: {error}"))?;
    let _ = stream.set_nodelay(true);
    stream
        .write_all(&encode_frame(FrameKind::Hello, &me.to_be_bytes()))
        .await?;
    Ok(stream)
}

/// Accepts node connections on `listener` and passes every frame to
/// `inbox` until the listener fails or the task is dropped.
pub async fn accept_loop(listener: TcpListener, inbox: LocalSender<Inbound>) {
    let inbox = Rc::new(inbox);
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let inbox = inbox.clone();
                glommio::spawn_local(async move {
                    let peer = stream.peer_addr().ok();
                    if let Err(error) = serve_connection(stream, &inbox).await {
                        match error {
                            FrameError::Io(_) => {
                                tracing::debug!(?peer, %error, "node connection closed")
                            }
                            _ => tracing::warn!(?peer, %error, "closing a node connection"),
                        }
                    }
                })
                .detach();
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a node connection");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    inbox: &LocalSender<Inbound>,
) -> Result<(), FrameError> {
    let _ = stream.set_nodelay(true);
    let (kind, body) = read_frame(&mut stream).await?;
    let from = match (kind, <[u8; 4]>::try_from(body.as_slice())) {
        (FrameKind::Hello, Ok(id)) => i32::from_be_bytes(id),
        _ => return Err(FrameError::NoHello),
    };
    loop {
        let (kind, body) = read_frame(&mut stream).await?;
        if inbox.send(Inbound { from, kind, body }).await.is_err() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_damage_is_refused() {
        let frame = encode_frame(FrameKind::Raft, b"hello");
        let header: [u8; HEADER_BYTES] = frame[..HEADER_BYTES].try_into().expect("header");
        let (kind, length, crc) = decode_header(&header).expect("decode");
        assert_eq!((kind, length), (FrameKind::Raft, 5));
        assert_eq!(crc, crc32c::crc32c(b"hello"));
        let mut bad = header;
        bad[0] = b'X';
        assert!(matches!(decode_header(&bad), Err(FrameError::BadHeader(_))));
        let mut bad = header;
        bad[3] = 99;
        assert!(matches!(
            decode_header(&bad),
            Err(FrameError::UnknownKind(99))
        ));
        let mut bad = header;
        bad[4..8].copy_from_slice(&(FRAME_BYTES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(decode_header(&bad), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn large_parts_are_passed_through_and_the_frame_is_the_same() {
        let big = Bytes::from(vec![7u8; COPY_BELOW_BYTES + 1]);
        let parts = vec![
            Bytes::from_static(b"head"),
            big.clone(),
            Bytes::from_static(b"mid"),
            Bytes::from_static(b"tail"),
        ];
        let joined: Vec<u8> = parts.iter().flat_map(|part| part.iter().copied()).collect();
        let segments = frame_segments(FrameKind::ReplicaFetchAnswer, parts);
        assert_eq!(segments.len(), 3, "header+head, the large part, mid+tail");
        assert_eq!(segments[1].as_ptr(), big.as_ptr(), "not copied");
        assert_eq!(
            segments.concat(),
            encode_frame(FrameKind::ReplicaFetchAnswer, &joined)
        );
    }

    #[test]
    fn frames_cross_a_real_connection_and_a_bad_crc_closes_only_it() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("addr").to_string();
                let (inbox, received) = local_channel::new_bounded(16);
                let accept = glommio::spawn_local(accept_loop(listener, inbox));
                let transport = Transport::new(7, HashMap::from([(1, address.clone())]));
                // A hostile connection: Hello, then a frame with a bad CRC.
                let mut hostile = TcpStream::connect(address.as_str()).await.expect("connect");
                hostile
                    .write_all(&encode_frame(FrameKind::Hello, &9i32.to_be_bytes()))
                    .await
                    .expect("hello");
                let mut damaged = encode_frame(FrameKind::Control, b"{}");
                let last = damaged.len() - 1;
                damaged[last] ^= 0xff;
                hostile.write_all(&damaged).await.expect("write");
                let mut byte = [0u8; 1];
                let closed = hostile.read(&mut byte).await;
                assert!(
                    matches!(closed, Ok(0) | Err(_)),
                    "damaged frame did not close"
                );
                // A well-behaved peer is unaffected.
                assert!(transport.send(1, FrameKind::Raft, b"one"));
                assert!(transport.send(1, FrameKind::Raft, b"two"));
                let mut received = received.stream();
                for expected in [b"one", b"two"] {
                    let frame = received.next().await.expect("frame");
                    assert_eq!(frame.from, 7);
                    assert_eq!(frame.kind, FrameKind::Raft);
                    assert_eq!(frame.body, expected);
                }
                assert!(!transport.send(2, FrameKind::Raft, b"unknown peer"));
                accept.cancel().await;
            })
            .expect("executor")
            .join()
            .expect("join");
    }

    /// A spliced frame's file region goes file → socket and arrives as the
    /// file's bytes, in order with the bytes around it; the CRC covers the
    /// leading part only, so the receiver accepts it.
    #[test]
    fn a_spliced_frame_carries_a_file_region_across_a_real_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &content).expect("write file");
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
                let address = listener.local_addr().expect("addr").to_string();
                let (inbox, received) = local_channel::new_bounded(16);
                let accept = glommio::spawn_local(accept_loop(listener, inbox));
                let transport = Transport::new(7, HashMap::from([(1, address.clone())]));
                let file = std::sync::Arc::new(std::fs::File::open(&path).expect("open"));
                let second_file = file.clone();
                // 8 prefix bytes saying they are what the CRC covers, then a
                // small part, a file region and a large in-memory part.
                let mut covered = 8u32.to_le_bytes().to_vec();
                covered.extend_from_slice(&[0; 4]);
                let large = Bytes::from(vec![9u8; COPY_BELOW_BYTES + 5]);
                let records = vec![
                    WirePart::Bytes(Bytes::from_static(b"small")),
                    WirePart::File {
                        file,
                        position: 1_000,
                        len: 150_000,
                    },
                    WirePart::Bytes(large.clone()),
                ];
                assert!(transport.send_spliced(
                    1,
                    FrameKind::ReplicaFetchAnswerSpliced,
                    Bytes::from(covered.clone()),
                    records,
                ));
                // A second frame on the same connection (and pipe), from
                // another place of the file.
                assert!(transport.send_spliced(
                    1,
                    FrameKind::ReplicaFetchAnswerSpliced,
                    Bytes::from(covered.clone()),
                    vec![WirePart::File {
                        file: second_file,
                        position: 160_000,
                        len: 30_000,
                    }],
                ));
                let mut received = received.stream();
                let frame = received.next().await.expect("frame");
                assert_eq!(frame.kind, FrameKind::ReplicaFetchAnswerSpliced);
                let mut expected = covered.clone();
                expected.extend_from_slice(b"small");
                expected.extend_from_slice(&content[1_000..151_000]);
                expected.extend_from_slice(&large);
                assert!(frame.body == expected, "the body is the parts in order");
                let frame = received.next().await.expect("second frame");
                let mut expected = covered;
                expected.extend_from_slice(&content[160_000..190_000]);
                assert!(
                    frame.body == expected,
                    "the second frame has its own region"
                );
                accept.cancel().await;
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
