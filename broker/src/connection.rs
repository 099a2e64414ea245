//! One client connection: frames in, responses out in request order.
//!
//! The reader checks each frame's length against `socket.request.max.bytes`
//! before buffering it, takes a share of the connection's in-flight byte
//! budget (`queued.max.request.bytes`) and starts the request's handler as
//! its own task, so pipelined requests run concurrently. The writer awaits
//! the handlers in arrival order and writes their responses, which keeps
//! Kafka's ordering guarantee. When the budget or the queue of in-flight
//! requests (`queued.max.requests`) is full, the reader stops reading: the
//! client is pushed back by TCP, nothing grows without bound.
//!
//! A malformed, truncated or unsupported request closes this connection
//! (after the responses already queued), with one log line; other
//! connections carry on.

use std::net::SocketAddr;
use std::rc::Rc;

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
    while let Some(pending) = queued.recv().await {
        let reply = match pending {
            Pending::Ready(bytes) => handlers::Reply::Send(bytes),
            Pending::Handler(task, _permit) => task.await,
        };
        shard.metrics.request_finished();
        outstanding.set(outstanding.get().saturating_sub(1));
        if let handlers::Reply::Close = reply {
            break;
        }
        let parts = match reply {
            handlers::Reply::Send(bytes) => vec![WirePart::Bytes(bytes)],
            handlers::Reply::Parts(parts) => parts,
            handlers::Reply::Nothing | handlers::Reply::Close => Vec::new(),
        };
        if let Err(error) =
            crate::zerocopy::write_parts(&mut writer, socket, &mut splicer, &parts).await
        {
            tracing::debug!(%peer, %error, "client went away while we wrote");
            break;
        }
        shard
            .metrics
            .add_bytes_out(parts.iter().map(WirePart::len).sum());
    }
    let _ = writer.close().await;
    reader_task.cancel().await;
    // Requests still queued when the connection ends will never finish.
    for _ in 0..outstanding.get() {
        shard.metrics.request_finished();
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
