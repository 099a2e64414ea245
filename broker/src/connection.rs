//! One client connection: frames in, responses out in request order.
//!
//! The reader checks each frame's length against `socket.request.max.bytes`
//! before buffering it, takes a share of the connection's in-flight byte
//! budget (`queued.max.request.bytes`) and starts the request's handler as
//! its own task, so pipelined requests run concurrently. The writer awaits
//! the handlers in arrival order and writes their responses, which keeps
//! Kafka's ordering guarantee; answers of later requests that are already
//! there when it writes one go in the same write (a pipelining producer's
//! acknowledgements, finished together by one disk write, cost one
//! `send`). When the budget or the queue of in-flight requests
//! (`queued.max.requests`) is full, the reader stops reading: the client is
//! pushed back by TCP, nothing grows without bound.
//!
//! A malformed, truncated or unsupported request closes this connection
//! (after the responses already queued), with one log line; other
//! connections carry on.

use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use kafki_net::{FrameDecoder, RequestError};

use crate::handlers;
use crate::shard::Shard;
use crate::zerocopy::{Splicer, WirePart};

/// Bytes read from the socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Answers already there are written together while together below this
/// many bytes.
const JOIN_ANSWERS_BELOW_BYTES: u64 = 64 * 1024;

/// Byte parts below this size are copied together into one buffer for one
/// `send` (cheaper than a system call each); larger ones are written as
/// they are.
const COPY_PARTS_BELOW_BYTES: usize = 16 * 1024;

/// What the writer receives for each request, in order.
enum Pending {
    /// A running handler; `None` means "no response" (acks=0 produce).
    Handler(glommio::Task<handlers::Reply>, glommio::sync::StaticPermit),
    /// A ready answer (e.g. the ApiVersions fallback).
    Ready(Bytes),
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let config = shard.config.clone();
    let frame_limit = config.frame_bytes_max();
    let budget_bytes = config.settings.queued_max_request_bytes;
    let queue_depth = config.settings.queued_max_requests;
    let budget = Rc::new(Semaphore::new(budget_bytes));
    let socket = std::os::fd::AsRawFd::as_raw_fd(&stream);
    let mut splicer: Option<Splicer> = None;
    let (reader, mut writer) = stream.split();
    let (queue, queued) = local_channel::new_bounded::<Pending>(queue_depth);

    // Requests queued and not yet answered, for the in-flight gauge.
    let outstanding = Rc::new(std::cell::Cell::new(0usize));
    let reader_task = glommio::spawn_local(read_requests(
        shard.clone(),
        reader,
        peer,
        frame_limit,
        budget,
        queue,
        outstanding.clone(),
    ));
    // A request taken from the queue whose handler had not finished when
    // the writer looked for answers to send with the previous one.
    let mut carried: Option<Pending> = None;
    loop {
        let pending = match carried.take() {
            Some(pending) => pending,
            None => match queued.recv().await {
                Some(pending) => pending,
                None => break,
            },
        };
        let reply = match pending {
            Pending::Ready(bytes) => handlers::Reply::Send(bytes),
            Pending::Handler(task, _permit) => task.await,
        };
        finished(&shard, &outstanding);
        let Some(mut parts) = reply_parts(reply) else {
            break;
        };
        // Later requests already answered go out in the same write: a client
        // pipelining produces gets acknowledgements finished by one disk
        // write in one send instead of one each. Only while the answers are
        // small: a large one is written as it is anyway.
        let mut close_after = false;
        let mut answer_bytes: u64 = parts.iter().map(WirePart::len).sum();
        while answer_bytes < JOIN_ANSWERS_BELOW_BYTES {
            let Poll::Ready(Some(next)) = futures::poll!(std::pin::pin!(queued.recv())) else {
                break;
            };
            let reply = match next {
                Pending::Ready(bytes) => handlers::Reply::Send(bytes),
                Pending::Handler(mut task, permit) => match futures::poll!(&mut task) {
                    Poll::Ready(reply) => reply,
                    Poll::Pending => {
                        carried = Some(Pending::Handler(task, permit));
                        break;
                    }
                },
            };
            finished(&shard, &outstanding);
            match reply_parts(reply) {
                Some(more) => {
                    answer_bytes += more.iter().map(WirePart::len).sum::<u64>();
                    parts.extend(more);
                }
                None => {
                    close_after = true;
                    break;
                }
            }
        }
        let parts = crate::zerocopy::join_small(
            parts,
            COPY_PARTS_BELOW_BYTES,
            JOIN_ANSWERS_BELOW_BYTES as usize,
        );
        if !parts.is_empty() {
            if let Err(error) =
                crate::zerocopy::write_parts(&mut writer, socket, &mut splicer, &parts).await
            {
                tracing::debug!(%peer, %error, "client went away while we wrote");
                break;
            }
            shard.metrics.answers_written(answer_bytes);
        }
        if close_after {
            break;
        }
    }
    let _ = writer.close().await;
    reader_task.cancel().await;
    // Requests still queued when the connection ends will never finish.
    for _ in 0..outstanding.get() {
        shard.metrics.request_finished();
    }
}

/// Bookkeeping of a request whose answer the writer has taken.
fn finished(shard: &Shard, outstanding: &std::cell::Cell<usize>) {
    shard.metrics.request_finished();
    outstanding.set(outstanding.get().saturating_sub(1));
}

/// What to write for `reply`; `None` when the connection is to be closed.
fn reply_parts(reply: handlers::Reply) -> Option<Vec<WirePart>> {
    match reply {
        handlers::Reply::Send(bytes) => Some(vec![WirePart::Bytes(bytes)]),
        handlers::Reply::Parts(parts) => Some(parts),
        handlers::Reply::Nothing => Some(Vec::new()),
        handlers::Reply::Close => None,
    }
}

async fn read_requests(
    shard: Rc<Shard>,
    mut reader: futures::io::ReadHalf<TcpStream>,
    peer: SocketAddr,
    frame_limit: usize,
    budget: Rc<Semaphore>,
    queue: local_channel::LocalSender<Pending>,
    outstanding: Rc<std::cell::Cell<usize>>,
) {
    let decoder = FrameDecoder::for_requests(frame_limit);
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    loop {
        // Hand out every whole frame already buffered.
        loop {
            let frame = match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(error) => {
                    shard.metrics.frame_refused("frame_length");
                    tracing::warn!(%peer, %error, "refusing frame; closing connection");
                    return;
                }
            };
            let permit = match budget
                .clone()
                .acquire_static_permit(frame.len() as u64)
                .await
            {
                Ok(permit) => permit,
                Err(_) => return,
            };
            let pending = match kafki_net::decode_request(frame.clone(), handlers::supported_apis())
            {
                Ok(request) => {
                    let handler_shard = shard.clone();
                    let task = glommio::spawn_local(async move {
                        handlers::handle(handler_shard, request, peer).await
                    });
                    Pending::Handler(task, permit)
                }
                Err(error) => match handlers::answer_undecodable(&frame, &error) {
                    Some(answer) => Pending::Ready(answer),
                    None => {
                        shard.metrics.frame_refused("undecodable");
                        log_refused(&peer, &error);
                        return;
                    }
                },
            };
            shard.metrics.request_started();
            outstanding.set(outstanding.get() + 1);
            if queue.send(pending).await.is_err() {
                return;
            }
        }
        // Never read more than the frame being assembled can still need.
        let read = match reader.read(&mut chunk).await {
            Ok(0) => return,
            Ok(read) => read,
            Err(error) => {
                tracing::debug!(%peer, %error, "read failed; closing connection");
                return;
            }
        };
        shard.metrics.add_bytes_in(read as u64);
        buffer.extend_from_slice(&chunk[..read]);
    }
}

fn log_refused(peer: &SocketAddr, error: &RequestError) {
    tracing::warn!(%peer, %error, "refusing request; closing connection");
}
