//! One TCP connection to one broker: ApiVersions negotiation at connect, then pipelined
//! requests matched to their responses.
//!
//! Shape: the caller encodes its request (with a fresh correlation id) and hands the frame
//! to the connection's *writer* task over a bounded channel; the writer registers what it
//! expects back in the FIFO of outstanding requests, in the order it writes, and writes
//! the frames of everything queued with one vectored write. The *reader* task splits the
//! byte stream into frames (`kafki_net::FrameDecoder`, length checked before buffering),
//! pops the oldest outstanding request, checks the correlation id matches (Kafka answers
//! in request order on a connection) and hands the raw frame back; the caller decodes it.
//!
//! Invariants:
//! - At most `max_in_flight` requests are outstanding: each holds a semaphore permit from
//!   before it is queued until its response arrived (or, for a request without response,
//!   until it was written).
//! - A connection that saw any failure (I/O error, a response that matches nothing, a
//!   request timeout) is closed for good: every outstanding request fails with the reason,
//!   later requests fail at once, and the owner reconnects. Nothing is retried here.
//! - A caller that gives up (drops its future) never corrupts the stream: frames are
//!   written whole by the writer task, never by the caller.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafki_net::kafka_protocol::messages::RequestHeader;
use kafki_net::kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};
use kafki_net::kafka_protocol::protocol::{Request, StrBytes};
use kafki_net::FrameDecoder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};

use crate::error::{ClientError, ClientResult, KafkaCode};
use crate::versions::{api_versions_retry_version, ApiVersionTable, API_VERSIONS_PREFERRED};

/// Settings of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Sent in every request header.
    pub client_id: String,
    pub connect_timeout: Duration,
    /// From handing a request over to its response; a request that takes longer closes
    /// the connection (as Kafka's clients do: the pipeline behind it is suspect).
    pub request_timeout: Duration,
    /// Requests outstanding at once (Kafka's `max.in.flight.requests.per.connection`).
    pub max_in_flight: usize,
    /// Largest response frame accepted; larger ones close the connection.
    pub response_bytes_max: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            client_id: "kafki-client".to_string(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 5,
            response_bytes_max: kafki_net::SOCKET_REQUEST_MAX_BYTES_DEFAULT,
        }
    }
}

/// Frames queued per vectored write.
const WRITE_BATCH_FRAMES: usize = 32;
/// Read buffer growth step.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// What the caller waits for: the response frame (correlation id and header included), or
/// an empty frame once a request without response was written.
type Reply = oneshot::Sender<ClientResult<Bytes>>;

/// A request on its way to the writer.
struct Outgoing {
    frame: Bytes,
    correlation_id: i32,
    expects_response: bool,
    reply: Reply,
    permit: OwnedSemaphorePermit,
}

/// A written request waiting for its response.
struct Outstanding {
    correlation_id: i32,
    reply: Reply,
    /// Released when the response arrives: the in-flight bound.
    _permit: OwnedSemaphorePermit,
}

/// State both tasks and the callers see.
struct Shared {
    address: String,
    outstanding: Mutex<VecDeque<Outstanding>>,
    closed_reason: Mutex<Option<String>>,
    closed: AtomicBool,
    in_flight: Arc<Semaphore>,
    shutdown: watch::Sender<bool>,
}

impl Shared {
    fn closed_error(&self) -> ClientError {
        let reason = self
            .closed_reason
            .lock()
            .ok()
            .and_then(|reason| reason.clone())
            .unwrap_or_else(|| "closed".to_string());
        ClientError::ConnectionClosed {
            address: self.address.clone(),
            reason,
        }
    }

    /// Closes the connection once: records why, fails everything outstanding, wakes both
    /// tasks so they end (dropping the socket halves closes the socket).
    fn close(&self, reason: String) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(address = %self.address, %reason, "connection closed");
        if let Ok(mut slot) = self.closed_reason.lock() {
            *slot = Some(reason);
        }
        self.in_flight.close();
        let _ = self.shutdown.send(true);
        let drained: Vec<Outstanding> = match self.outstanding.lock() {
            Ok(mut outstanding) => outstanding.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for waiting in drained {
            let _ = waiting.reply.send(Err(self.closed_error()));
        }
    }
}

/// A connection to one broker. Cheap to share (`Arc<Connection>`); dropping the last
/// handle closes it.
pub struct Connection {
    shared: Arc<Shared>,
    outgoing: mpsc::Sender<Outgoing>,
    next_correlation_id: AtomicI32,
    client_id: StrBytes,
    request_timeout: Duration,
    versions: ApiVersionTable,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Connection")
            .field("address", &self.shared.address)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared
            .close("connection dropped by its owner".to_string());
    }
}

impl Connection {
    /// Connects to `address` (`host:port`), negotiates API versions and returns the
    /// connection ready for requests.
    pub async fn connect(address: &str, config: &ConnectionConfig) -> ClientResult<Self> {
        let connect_error = |reason: String| ClientError::Connect {
            address: address.to_string(),
            reason,
        };
        let stream =
            match tokio::time::timeout(config.connect_timeout, TcpStream::connect(address)).await {
                Err(_) => {
                    return Err(connect_error(format!(
                        "timed out after {:?}",
                        config.connect_timeout
                    )))
                }
                Ok(Err(error)) => return Err(connect_error(error.to_string())),
                Ok(Ok(stream)) => stream,
            };
        // Requests are written whole; waiting for more bytes (Nagle) only adds latency.
        stream
            .set_nodelay(true)
            .map_err(|error| connect_error(error.to_string()))?;
        let mut connection = Self::start(stream, address, config);
        connection.versions = connection.negotiate_versions().await?;
        tracing::debug!(
            address,
            produce = ?connection.versions.get(ApiKey::Produce).and_then(|api| api.version),
            fetch = ?connection.versions.get(ApiKey::Fetch).and_then(|api| api.version),
            metadata = ?connection.versions.get(ApiKey::Metadata).and_then(|api| api.version),
            "connected"
        );
        Ok(connection)
    }

    fn start(stream: TcpStream, address: &str, config: &ConnectionConfig) -> Self {
        let max_in_flight = config.max_in_flight.max(1);
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            address: address.to_string(),
            outstanding: Mutex::new(VecDeque::with_capacity(max_in_flight)),
            closed_reason: Mutex::new(None),
            closed: AtomicBool::new(false),
            in_flight: Arc::new(Semaphore::new(max_in_flight)),
            shutdown,
        });
        let (read_half, write_half) = stream.into_split();
        let (outgoing, outgoing_receiver) = mpsc::channel(max_in_flight);
        let decoder = FrameDecoder::for_responses(config.response_bytes_max);
        tokio::spawn(write_loop(write_half, outgoing_receiver, shared.clone()));
        tokio::spawn(read_loop(read_half, decoder, shared.clone()));
        Self {
            shared,
            outgoing,
            next_correlation_id: AtomicI32::new(0),
            client_id: StrBytes::from_string(config.client_id.clone()),
            request_timeout: config.request_timeout,
            versions: ApiVersionTable::default(),
        }
    }

    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// The versions negotiated at connect.
    pub fn versions(&self) -> &ApiVersionTable {
        &self.versions
    }

    /// The version this connection uses for `api_key`.
    pub fn version_for(&self, api_key: ApiKey) -> ClientResult<i16> {
        self.versions.version_for(api_key, self.address())
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Sends `request` at the highest version both sides support and waits for its
    /// response. The one generic path every API goes through.
    pub async fn send<R: Request>(&self, request: &R) -> ClientResult<R::Response> {
        let api_key = api_key_of::<R>()?;
        let version = self.version_for(api_key)?;
        self.send_at(request, version).await
    }

    /// Sends `request` at `version` and waits for its response.
    pub async fn send_at<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> ClientResult<R::Response> {
        let api_key = api_key_of::<R>()?;
        let frame = self.encode(api_key, version, request)?;
        let response = self.round_trip(api_key, frame, true).await?;
        let (_, body) = kafki_net::decode_response_as::<R::Response>(response, api_key, version)
            .map_err(|error| ClientError::Decode {
                address: self.address().to_string(),
                reason: error.to_string(),
            })?;
        Ok(body)
    }

    /// Sends a request the broker does not answer (Produce with `acks=0`); returns once it
    /// was written to the socket.
    pub async fn send_without_response<R: Request>(
        &self,
        request: &R,
        version: i16,
    ) -> ClientResult<()> {
        let api_key = api_key_of::<R>()?;
        let frame = self.encode(api_key, version, request)?;
        self.round_trip(api_key, frame, false).await.map(|_| ())
    }

    fn encode<R: Request>(
        &self,
        api_key: ApiKey,
        version: i16,
        request: &R,
    ) -> ClientResult<(i32, Bytes)> {
        let correlation_id = self.next_correlation_id.fetch_add(1, Ordering::Relaxed);
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let frame = kafki_net::encode_request_as(&header, request).map_err(|error| {
            ClientError::Encode {
                api_key,
                reason: error.to_string(),
            }
        })?;
        Ok((correlation_id, frame))
    }

    /// Queues one encoded frame and waits for its response frame (or, without response,
    /// until it was written), all within the request timeout.
    async fn round_trip(
        &self,
        api_key: ApiKey,
        (correlation_id, frame): (i32, Bytes),
        expects_response: bool,
    ) -> ClientResult<Bytes> {
        if self.is_closed() {
            return Err(self.shared.closed_error());
        }
        let deadline = Instant::now() + self.request_timeout;
        let timeout_error = || ClientError::Timeout {
            address: self.address().to_string(),
            api_key,
            timeout: self.request_timeout,
        };
        let permit = match timeout_at(deadline, self.shared.in_flight.clone().acquire_owned()).await
        {
            Err(_) => return Err(timeout_error()),
            Ok(Err(_)) => return Err(self.shared.closed_error()),
            Ok(Ok(permit)) => permit,
        };
        let (reply, response) = oneshot::channel();
        let outgoing = Outgoing {
            frame,
            correlation_id,
            expects_response,
            reply,
            permit,
        };
        // The channel holds as many entries as there are permits: this does not wait.
        if self.outgoing.send(outgoing).await.is_err() {
            return Err(self.shared.closed_error());
        }
        match timeout_at(deadline, response).await {
            Err(_) => {
                self.shared.close(format!(
                    "{api_key:?} request timed out after {:?}",
                    self.request_timeout
                ));
                Err(timeout_error())
            }
            // The reply was dropped unanswered: the connection closed under it.
            Ok(Err(_)) => Err(self.shared.closed_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// ApiVersions at the preferred version; on `UNSUPPORTED_VERSION` (answered in v0
    /// format, as Kafka does) retries at the highest version the broker listed.
    async fn negotiate_versions(&self) -> ClientResult<ApiVersionTable> {
        let mut version = API_VERSIONS_PREFERRED;
        loop {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request = request
                    .with_client_software_name(StrBytes::from_static_str("kafki-client"))
                    .with_client_software_version(StrBytes::from_static_str(env!(
                        "CARGO_PKG_VERSION"
                    )));
            }
            let frame = self.encode(ApiKey::ApiVersions, version, &request)?;
            let response = self.round_trip(ApiKey::ApiVersions, frame, true).await?;
            // ApiVersions responses keep header v0 (correlation id only) at every version,
            // and the error code comes first in every body version.
            let error_code = match response.get(4..6) {
                Some(&[high, low]) => i16::from_be_bytes([high, low]),
                _ => {
                    return Err(ClientError::Protocol {
                        address: self.address().to_string(),
                        reason: "ApiVersions response shorter than its error code".into(),
                    })
                }
            };
            let unsupported = KafkaCode(35);
            let decode_version = if error_code == unsupported.0 {
                0
            } else {
                version
            };
            let (_, body) = kafki_net::decode_response_as::<ApiVersionsResponse>(
                response,
                ApiKey::ApiVersions,
                decode_version,
            )
            .map_err(|error| ClientError::Decode {
                address: self.address().to_string(),
                reason: error.to_string(),
            })?;
            if error_code == unsupported.0 {
                if let Some(lower) = api_versions_retry_version(&body, version) {
                    version = lower;
                    continue;
                }
            }
            if let Some(code) = KafkaCode::from_code(body.error_code) {
                return Err(ClientError::kafka(
                    code,
                    format!("ApiVersions v{version} to {}", self.address()),
                ));
            }
            return Ok(ApiVersionTable::from_response(&body));
        }
    }
}

fn api_key_of<R: Request>() -> ClientResult<ApiKey> {
    ApiKey::try_from(R::KEY)
        .map_err(|_| ClientError::Invalid(format!("request type with unknown api key {}", R::KEY)))
}

/// The writer task: registers outstanding requests in write order and writes the frames
/// of everything queued at once.
async fn write_loop(
    mut socket: OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut queued: Vec<Outgoing> = Vec::with_capacity(WRITE_BATCH_FRAMES);
    let mut written_replies: Vec<(Reply, OwnedSemaphorePermit)> = Vec::new();
    loop {
        let received = tokio::select! {
            received = outgoing.recv_many(&mut queued, WRITE_BATCH_FRAMES) => received,
            _ = shutdown.changed() => 0,
        };
        if received == 0 || shared.closed.load(Ordering::Acquire) {
            break;
        }
        let frames: Vec<Bytes> = queued.iter().map(|item| item.frame.clone()).collect();
        {
            let Ok(mut outstanding) = shared.outstanding.lock() else {
                shared.close("outstanding-request queue poisoned".into());
                break;
            };
            for item in queued.drain(..) {
                if item.expects_response {
                    outstanding.push_back(Outstanding {
                        correlation_id: item.correlation_id,
                        reply: item.reply,
                        _permit: item.permit,
                    });
                } else {
                    written_replies.push((item.reply, item.permit));
                }
            }
        }
        let written = tokio::select! {
            result = write_frames(&mut socket, &frames) => result,
            _ = shutdown.changed() => Err(std::io::Error::other("connection closed")),
        };
        match written {
            Ok(()) => {
                for (reply, _permit) in written_replies.drain(..) {
                    let _ = reply.send(Ok(Bytes::new()));
                }
            }
            Err(error) => {
                shared.close(format!("write failed: {error}"));
                for (reply, _permit) in written_replies.drain(..) {
                    let _ = reply.send(Err(shared.closed_error()));
                }
                break;
            }
        }
    }
    // Whatever is still queued fails with the close reason (its reply is dropped).
    let _ = socket.shutdown().await;
}

/// Writes every frame, whole, with as few syscalls as the socket allows.
async fn write_frames(socket: &mut OwnedWriteHalf, frames: &[Bytes]) -> std::io::Result<()> {
    if let [single] = frames {
        return socket.write_all(single).await;
    }
    let mut slices: Vec<IoSlice<'_>> = frames.iter().map(|frame| IoSlice::new(frame)).collect();
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        let written = socket.write_vectored(remaining).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut remaining, written);
    }
    Ok(())
}

/// The reader task: frames in, each matched to the oldest outstanding request.
async fn read_loop(mut socket: OwnedReadHalf, decoder: FrameDecoder, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut buffer = BytesMut::with_capacity(READ_CHUNK_BYTES);
    loop {
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => {
                    if let Err(reason) = deliver(&shared, frame) {
                        shared.close(reason);
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    shared.close(format!("bad response frame: {error}"));
                    return;
                }
            }
        }
        if buffer.capacity() - buffer.len() < READ_CHUNK_BYTES / 4 {
            buffer.reserve(READ_CHUNK_BYTES);
        }
        let read = tokio::select! {
            read = socket.read_buf(&mut buffer) => read,
            _ = shutdown.changed() => return,
        };
        match read {
            Ok(0) => {
                shared.close("closed by the broker".into());
                return;
            }
            Ok(_) => {}
            Err(error) => {
                shared.close(format!("read failed: {error}"));
                return;
            }
        }
    }
}

/// Hands a response frame to the request it answers.
fn deliver(shared: &Shared, frame: Bytes) -> Result<(), String> {
    let correlation_id = match frame.get(..4) {
        Some(&[a, b, c, d]) => i32::from_be_bytes([a, b, c, d]),
        _ => return Err("response frame shorter than a correlation id".into()),
    };
    let waiting = shared
        .outstanding
        .lock()
        .map_err(|_| "outstanding-request queue poisoned".to_string())?
        .pop_front();
    let Some(waiting) = waiting else {
        return Err(format!(
            "response with correlation id {correlation_id} while no request is outstanding"
        ));
    };
    if waiting.correlation_id != correlation_id {
        let reason = format!(
            "response with correlation id {correlation_id}, expected {} (responses out of order)",
            waiting.correlation_id
        );
        let _ = waiting.reply.send(Err(ClientError::Protocol {
            address: shared.address.clone(),
            reason: reason.clone(),
        }));
        return Err(reason);
    }
    // The caller may have given up (timeout, cancellation): nothing to do then.
    let _ = waiting.reply.send(Ok(frame));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafki_net::kafka_protocol::messages::MetadataRequest;
    use tokio::net::TcpListener;

    /// A fake broker that answers ApiVersions and then hands the raw socket to `script`.
    async fn fake_broker<F, Fut>(script: F) -> String
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        tokio::spawn(async move {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let Some((correlation_id, _)) = read_request(&mut socket).await else {
                return;
            };
            let supported = kafki_net::SupportedApis::new(vec![
                kafki_net::SupportedApi::new(ApiKey::ApiVersions, 0, 3),
                kafki_net::SupportedApi::new(ApiKey::Metadata, 0, 12),
            ])
            .expect("table");
            let body = kafki_net::api_versions_response(&supported, None);
            let frame = kafki_net::encode_api_versions_response(
                kafki_net::CorrelationId(correlation_id),
                3,
                &body,
            )
            .expect("encodes");
            let _ = socket.write_all(&frame).await;
            script(socket).await;
        });
        address
    }

    async fn read_request(socket: &mut TcpStream) -> Option<(i32, Vec<u8>)> {
        let mut length = [0u8; 4];
        socket.read_exact(&mut length).await.ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
        socket.read_exact(&mut body).await.ok()?;
        let correlation_id = i32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        Some((correlation_id, body))
    }

    fn test_config() -> ConnectionConfig {
        ConnectionConfig {
            request_timeout: Duration::from_millis(500),
            max_in_flight: 2,
            ..ConnectionConfig::default()
        }
    }

    #[tokio::test]
    async fn negotiates_versions_at_connect() {
        let address = fake_broker(|_socket| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let connection = Connection::connect(&address, &test_config())
            .await
            .expect("connects");
        assert_eq!(connection.version_for(ApiKey::Metadata).ok(), Some(12));
        assert!(matches!(
            connection.version_for(ApiKey::Produce),
            Err(ClientError::UnsupportedApi { .. })
        ));
    }

    #[tokio::test]
    async fn timeout_closes_the_connection_and_fails_later_requests() {
        let address = fake_broker(|socket| async move {
            // Reads nothing, answers nothing.
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(socket);
        })
        .await;
        let connection = Connection::connect(&address, &test_config())
            .await
            .expect("connects");
        let result = connection.send(&MetadataRequest::default()).await;
        assert!(
            matches!(result, Err(ClientError::Timeout { .. })),
            "{result:?}"
        );
        assert!(connection.is_closed());
        let later = connection.send(&MetadataRequest::default()).await;
        assert!(
            matches!(&later, Err(ClientError::ConnectionClosed { reason, .. }) if reason.contains("timed out")),
            "{later:?}"
        );
    }

    #[tokio::test]
    async fn mismatched_correlation_id_is_a_protocol_error() {
        let address = fake_broker(|mut socket| async move {
            let Some((correlation_id, _)) = read_request(&mut socket).await else {
                return;
            };
            let body =
                kafki_net::kafka_protocol::messages::ResponseKind::Metadata(Default::default());
            let frame = kafki_net::encode_response(
                kafki_net::CorrelationId(correlation_id + 7),
                ApiKey::Metadata,
                12,
                &body,
            )
            .expect("encodes");
            let _ = socket.write_all(&frame).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let connection = Connection::connect(&address, &test_config())
            .await
            .expect("connects");
        let result = connection.send(&MetadataRequest::default()).await;
        assert!(
            matches!(&result, Err(ClientError::Protocol { reason, .. }) if reason.contains("out of order")),
            "{result:?}"
        );
        assert!(connection.is_closed());
    }

    #[tokio::test]
    async fn pipelined_requests_get_their_own_responses() {
        let address = fake_broker(|mut socket| async move {
            // Read three requests before answering any: they were pipelined.
            let mut ids = Vec::new();
            for _ in 0..3 {
                match read_request(&mut socket).await {
                    Some((id, _)) => ids.push(id),
                    None => return,
                }
            }
            for (index, id) in ids.into_iter().enumerate() {
                let body = kafki_net::kafka_protocol::messages::ResponseKind::Metadata(
                    kafki_net::kafka_protocol::messages::MetadataResponse::default()
                        .with_throttle_time_ms(index as i32),
                );
                let frame = kafki_net::encode_response(
                    kafki_net::CorrelationId(id),
                    ApiKey::Metadata,
                    12,
                    &body,
                )
                .expect("encodes");
                let _ = socket.write_all(&frame).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        })
        .await;
        let config = ConnectionConfig {
            max_in_flight: 3,
            ..test_config()
        };
        let connection = Connection::connect(&address, &config)
            .await
            .expect("connects");
        let request = MetadataRequest::default();
        let (a, b, c) = tokio::join!(
            connection.send(&request),
            connection.send(&request),
            connection.send(&request)
        );
        let mut throttles: Vec<i32> = [a, b, c]
            .into_iter()
            .map(|result| result.expect("answered").throttle_time_ms)
            .collect();
        throttles.sort_unstable();
        assert_eq!(throttles, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        drop(listener);
        let result = Connection::connect(&address, &test_config()).await;
        assert!(matches!(result, Err(ClientError::Connect { .. })));
    }
}
