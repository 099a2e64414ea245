//! The admin HTTP listener, served by hyper on a current-thread tokio
//! runtime in one OS thread of its own, never on a glommio shard:
//!
//! * `GET /metrics` (Prometheus text), `GET /health`, `GET /v1/layout`;
//! * `GET /v1/assignments`: the explicit partition → shard assignments;
//! * `PUT /v1/partitions/{topic}/{partition}/shard` with `{"shard": N}`:
//!   assigns the partition to shard `N`, answering once the hand-over is
//!   done (`200` with the new owner; `400` bad input or internal topic,
//!   `404` unknown topic/partition, `409` another move running or this one
//!   aborted, `503` shutting down);
//! * `DELETE /v1/partitions/{topic}/{partition}/shard`: drops the
//!   assignment, moving the partition back to the placement function's shard.
//!
//! The assignment routes talk to the controller (shard 0) through a bounded
//! queue of [`AssignmentCommand`]s, each answered over a oneshot.
//!
//! It is bounded so a hostile client cannot hold it for long: request heads
//! are capped at [`MAX_HEAD_BYTES`] (larger ones get `431` and the
//! connection is closed), headers must arrive within [`HEADER_TIMEOUT`],
//! request bodies are capped at [`MAX_BODY_BYTES`] (`413`) and must arrive
//! within [`BODY_TIMEOUT`] (`408`), each connection lives at most
//! [`CONNECTION_DEADLINE`] (a well-formed move: [`MOVE_CONNECTION_DEADLINE`],
//! since it answers when its hand-over finished) and serves one request (no
//! keep-alive), and at most [`MAX_CONNECTIONS`] are served at a time (more
//! are closed at once). The `health` and `layout` callbacks run on a small
//! blocking pool with a [`CALLBACK_TIMEOUT`], so one that hangs or panics
//! costs that request a `503`/`500`, not the listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::metrics;
use crate::reassign::{
    AssignmentAnswer, AssignmentCommand, AssignmentError, AssignmentRequest, AssignmentSender,
};

/// Largest request head (request line + headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Time allowed for a request's head to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is served, response writing included.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(15);
/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest a `health` or `layout` callback may take.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest request body read (a move's body is `{"shard": N}`).
pub const MAX_BODY_BYTES: usize = 4 * 1024;
/// Time allowed for a request's body to arrive.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for the controller's answer to a move: the old owner may
/// wait [`crate::reassign::RELEASE_WAIT_MAX`] for requests to let go, then
/// the new owner opens the log.
pub const MOVE_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a connection carrying a well-formed move is served.
pub const MOVE_CONNECTION_DEADLINE: Duration = Duration::from_secs(70);
/// Threads for the callbacks (a hung callback holds one).
const CALLBACK_THREADS: usize = 2;
/// How long `stop()`/drop waits for the listener thread before leaving it.
const STOP_WAIT: Duration = Duration::from_secs(2);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What `GET /health` reports. `ready == false` answers `503`; a ready
/// broker with logs that refuse writes (a full disk) answers `200` with
/// status `degraded`: it still serves reads, so it stays in rotation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub ready: bool,
    pub degraded: bool,
    /// Included as `detail` in the JSON body (e.g. shards up, partitions
    /// open, or why the broker is not ready).
    pub detail: serde_json::Value,
}

/// Returns the health of the broker; called on the admin thread pool.
pub type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;
/// Returns the layout JSON document; called on the admin thread pool.
pub type LayoutFn = Arc<dyn Fn() -> String + Send + Sync>;

/// The running admin listener. Stops it on drop or [`AdminHandle::stop`].
#[derive(Debug)]
pub struct AdminHandle {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<mpsc::Receiver<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminHandle {
    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drops open connections and waits (at most about two
    /// seconds) for the listener thread to end; a thread still stuck after
    /// that is left to die with the process.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let finished = self
            .done
            .take()
            .is_some_and(|done| done.recv_timeout(STOP_WAIT).is_ok());
        if let Some(thread) = self.thread.take() {
            if finished {
                let _ = thread.join();
            } else {
                tracing::warn!(addr = %self.local_addr, "admin listener did not stop in time; leaving it");
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds `addr` and serves the admin API on a new OS thread named
/// `kafki-admin`. Returns once the socket is bound, so a bind failure (with
/// the address in the message) is reported here. Without `assignments`
/// (no controller), the assignment routes answer `503`.
pub fn spawn_admin(
    addr: SocketAddr,
    health: HealthFn,
    layout: LayoutFn,
    assignments: Option<AssignmentSender>,
) -> anyhow::Result<AdminHandle> {
    spawn_admin_with_cluster(addr, health, layout, assignments, None)
}

/// [`spawn_admin`] with `GET /v1/cluster` answered by `cluster` (the
/// cluster's nodes, controller and quorum state as JSON).
pub fn spawn_admin_with_cluster(
    addr: SocketAddr,
    health: HealthFn,
    layout: LayoutFn,
    assignments: Option<AssignmentSender>,
    cluster: Option<LayoutFn>,
) -> anyhow::Result<AdminHandle> {
    let std_listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("binding the admin listener on {addr}"))?;
    let local_addr = std_listener
        .local_addr()
        .with_context(|| format!("admin listener on {addr}"))?;
    std_listener
        .set_nonblocking(true)
        .with_context(|| format!("admin listener on {addr}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(CALLBACK_THREADS)
        .thread_name("kafki-admin-callback")
        .build()
        .context("starting the admin listener's runtime")?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(std_listener)
            .with_context(|| format!("admin listener on {addr}"))?
    };
    let (stop_tx, stop_rx) = oneshot::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let routes = Arc::new(Routes {
        health,
        layout,
        assignments,
        cluster,
    });
    let thread = std::thread::Builder::new()
        .name("kafki-admin".into())
        .spawn(move || {
            runtime.block_on(accept_loop(listener, routes, stop_rx));
            // Drops in-flight connections; does not wait for hung callbacks.
            runtime.shutdown_background();
            let _ = done_tx.send(());
        })
        .context("starting the admin listener thread")?;
    tracing::info!(addr = %local_addr, "admin listener up");
    Ok(AdminHandle {
        local_addr,
        stop: Some(stop_tx),
        done: Some(done_rx),
        thread: Some(thread),
    })
}

struct Routes {
    health: HealthFn,
    layout: LayoutFn,
    assignments: Option<AssignmentSender>,
    cluster: Option<LayoutFn>,
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    routes: Arc<Routes>,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(false);
    let http = Arc::new(http);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // E.g. out of file descriptors: back off rather than spin.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "admin listener busy; closing connection");
            drop(stream);
            continue;
        };
        let routes = routes.clone();
        let http = http.clone();
        tokio::spawn(async move {
            // Raised by the route once it knows the request is a well-formed
            // move, which may legitimately outlast CONNECTION_DEADLINE.
            let long = Arc::new(AtomicBool::new(false));
            let service = {
                let long = long.clone();
                hyper::service::service_fn(move |request| {
                    let routes = routes.clone();
                    let long = long.clone();
                    async move { Ok::<_, Infallible>(route(&routes, request, &long).await) }
                })
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            let served = match tokio::time::timeout(CONNECTION_DEADLINE, connection.as_mut()).await
            {
                Err(_) if long.load(Ordering::SeqCst) => {
                    let rest = MOVE_CONNECTION_DEADLINE.saturating_sub(CONNECTION_DEADLINE);
                    tokio::time::timeout(rest, connection.as_mut()).await
                }
                other => other,
            };
            match served {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin connection error"),
                Err(_) => tracing::debug!(%peer, "admin connection took too long; closed"),
            }
            drop(slot);
        });
    }
    tracing::info!("admin listener stopped");
}

/// The admin routes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Metrics,
    Health,
    Layout,
    Assignments,
    Cluster,
    /// `POST /v1/cluster/voters` with `{"remove": N, "add": M}`.
    Voters,
    /// `POST /v1/cluster/decommission` with `{"node": N}`.
    Decommission,
    /// `POST /v1/cluster/remove` with `{"node": N}`.
    RemoveNode,
    /// `/v1/partitions/{topic}/{partition}/shard`; the partition is checked
    /// later so a malformed one gets `400`, not `404`.
    PartitionShard {
        topic: String,
        partition: String,
    },
}

impl Route {
    fn parse(path: &str) -> Option<Self> {
        match path {
            "/metrics" => return Some(Route::Metrics),
            "/health" => return Some(Route::Health),
            "/v1/layout" => return Some(Route::Layout),
            "/v1/assignments" => return Some(Route::Assignments),
            "/v1/cluster" => return Some(Route::Cluster),
            "/v1/cluster/voters" => return Some(Route::Voters),
            "/v1/cluster/decommission" => return Some(Route::Decommission),
            "/v1/cluster/remove" => return Some(Route::RemoveNode),
            _ => {}
        }
        let rest = path.strip_prefix("/v1/partitions/")?;
        let mut segments = rest.split('/');
        let (Some(topic), Some(partition), Some("shard"), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return None;
        };
        if topic.is_empty() || partition.is_empty() {
            return None;
        }
        Some(Route::PartitionShard {
            topic: topic.to_string(),
            partition: partition.to_string(),
        })
    }

    /// The methods the route answers, as the `Allow` header lists them.
    fn allowed(&self) -> &'static str {
        match self {
            Route::PartitionShard { .. } => "PUT, DELETE",
            Route::Voters | Route::Decommission | Route::RemoveNode => "POST",
            _ => "GET",
        }
    }

    fn allows(&self, method: &Method) -> bool {
        match self {
            Route::PartitionShard { .. } => method == Method::PUT || method == Method::DELETE,
            Route::Voters | Route::Decommission | Route::RemoveNode => method == Method::POST,
            _ => method == Method::GET,
        }
    }
}

async fn route(
    routes: &Routes,
    request: Request<Incoming>,
    long: &AtomicBool,
) -> Response<Full<Bytes>> {
    let Some(route) = Route::parse(request.uri().path()) else {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
    };
    if !route.allows(request.method()) {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static(route.allowed()));
        return response;
    }
    match route {
        Route::Metrics => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render()),
        Route::Assignments => {
            match ask_controller(routes, AssignmentRequest::List, CALLBACK_TIMEOUT).await {
                Ok(AssignmentAnswer::List(list)) => json_reply(StatusCode::OK, &list),
                Ok(other) => unexpected(other),
                Err(response) => response,
            }
        }
        Route::PartitionShard { topic, partition } => {
            change_assignment(routes, request, topic, partition, long).await
        }
        Route::Health => {
            let health = routes.health.clone();
            match call(move || health()).await {
                Ok(report) => health_response(&report),
                Err(status) => reply(
                    status,
                    JSON,
                    r#"{"status":"unavailable","detail":"health check failed"}"#,
                ),
            }
        }
        Route::Voters => replace_voter(routes, request, long).await,
        Route::Decommission => node_change(routes, request, long, true).await,
        Route::RemoveNode => node_change(routes, request, long, false).await,
        Route::Cluster => match routes.cluster.clone() {
            Some(cluster) => match call(move || cluster()).await {
                Ok(body) => reply(StatusCode::OK, JSON, body),
                Err(status) => reply(status, TEXT, "cluster state unavailable\n"),
            },
            None => reply(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        },
        Route::Layout => {
            let layout = routes.layout.clone();
            match call(move || layout()).await {
                Ok(body) => reply(StatusCode::OK, JSON, body),
                Err(status) => reply(status, TEXT, "layout unavailable\n"),
            }
        }
    }
}

/// The body of `PUT /v1/partitions/{topic}/{partition}/shard`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ShardBody {
    shard: usize,
}

/// Only a JSON object with exactly `shard` (serde alone would also take
/// the array `[N]`).
fn parse_shard_body(body: &[u8]) -> serde_json::Result<ShardBody> {
    let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)?;
    serde_json::from_value(serde_json::Value::Object(object))
}

/// `PUT` (assign) or `DELETE` (drop the assignment) of one partition.
async fn change_assignment(
    routes: &Routes,
    request: Request<Incoming>,
    topic: String,
    partition: String,
    long: &AtomicBool,
) -> Response<Full<Bytes>> {
    let Ok(partition) = partition.parse::<i32>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("partition {partition:?} is not a number"),
        );
    };
    let command = if request.method() == Method::PUT {
        let body = match read_body(request).await {
            Ok(body) => body,
            Err(response) => return response,
        };
        match parse_shard_body(&body) {
            Ok(ShardBody { shard }) => AssignmentRequest::Move {
                topic,
                partition,
                shard,
            },
            Err(error) => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("the body must be {{\"shard\": N}} with N ≥ 0: {error}"),
                )
            }
        }
    } else {
        AssignmentRequest::Reset { topic, partition }
    };
    long.store(true, Ordering::SeqCst);
    match ask_controller(routes, command, MOVE_ANSWER_TIMEOUT).await {
        Ok(AssignmentAnswer::Moved(report)) => json_reply(StatusCode::OK, &report),
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

/// The body of `POST /v1/cluster/voters`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct VoterChange {
    remove: i32,
    add: i32,
}

/// `POST /v1/cluster/voters`: answers with the new voters once the change
/// is committed by the quorum.
async fn replace_voter(
    routes: &Routes,
    request: Request<Incoming>,
    long: &AtomicBool,
) -> Response<Full<Bytes>> {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let change: VoterChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be {{\"remove\": N, \"add\": M}}: {error}"),
            )
        }
    };
    long.store(true, Ordering::SeqCst);
    let command = AssignmentRequest::ReplaceVoter {
        remove: change.remove,
        add: change.add,
    };
    match ask_controller(routes, command, MOVE_ANSWER_TIMEOUT).await {
        Ok(AssignmentAnswer::Voters(voters)) => {
            json_reply(StatusCode::OK, &serde_json::json!({ "voters": voters }))
        }
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

/// The body of `POST /v1/cluster/decommission` and `/v1/cluster/remove`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeChange {
    node: i32,
}

/// `POST /v1/cluster/decommission` (`decommission`) or
/// `POST /v1/cluster/remove`: answers once committed by the quorum with
/// what the node still holds.
async fn node_change(
    routes: &Routes,
    request: Request<Incoming>,
    long: &AtomicBool,
    decommission: bool,
) -> Response<Full<Bytes>> {
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let change: NodeChange = match serde_json::from_slice(&body) {
        Ok(change) => change,
        Err(error) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be {{\"node\": N}}: {error}"),
            )
        }
    };
    long.store(true, Ordering::SeqCst);
    let command = if decommission {
        AssignmentRequest::Decommission { node: change.node }
    } else {
        AssignmentRequest::RemoveNode { node: change.node }
    };
    match ask_controller(routes, command, MOVE_ANSWER_TIMEOUT).await {
        Ok(AssignmentAnswer::Node {
            node,
            partitions_held,
            removed,
        }) => json_reply(
            StatusCode::OK,
            &serde_json::json!({ "node": node, "partitions_held": partitions_held, "removed": removed }),
        ),
        Ok(other) => unexpected(other),
        Err(response) => response,
    }
}

/// Reads a request body of at most [`MAX_BODY_BYTES`] within
/// [`BODY_TIMEOUT`]; a larger one is refused before it is read whole.
async fn read_body(request: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("request bodies are limited to {MAX_BODY_BYTES} bytes"),
        )
    };
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = Limited::new(request.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(BODY_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(error)) => Err(json_error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {error}"),
        )),
        Err(_) => Err(json_error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time",
        )),
    }
}

/// Sends `request` to the controller and waits (at most `wait`) for its
/// answer. Every failure is already the response to send.
async fn ask_controller(
    routes: &Routes,
    request: AssignmentRequest,
    wait: Duration,
) -> Result<AssignmentAnswer, Response<Full<Bytes>>> {
    let Some(sender) = &routes.assignments else {
        return Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "assignments are not served by this listener",
        ));
    };
    let (reply, answer) = futures::channel::oneshot::channel();
    // One clone per request: futures' bounded queue grants each sender one
    // slot beyond its buffer, so at most COMMAND_QUEUE + MAX_CONNECTIONS
    // commands are ever queued.
    if let Err(error) = sender
        .clone()
        .try_send(AssignmentCommand { request, reply })
    {
        let why = if error.is_full() {
            "the controller is busy; retry"
        } else {
            "the broker is shutting down"
        };
        return Err(json_error(StatusCode::SERVICE_UNAVAILABLE, why));
    }
    match tokio::time::timeout(wait, answer).await {
        Ok(Ok(Ok(answer))) => Ok(answer),
        Ok(Ok(Err(error))) => Err(assignment_error(&error)),
        Ok(Err(_)) => Err(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker is shutting down",
        )),
        Err(_) => Err(json_error(
            StatusCode::GATEWAY_TIMEOUT,
            &format!(
                "no answer from the controller within {} s; the change may still complete \
                 (see GET /v1/assignments)",
                wait.as_secs()
            ),
        )),
    }
}

/// The one place assignment errors become HTTP statuses.
fn assignment_error(error: &AssignmentError) -> Response<Full<Bytes>> {
    let status = match error {
        AssignmentError::BadRequest(_) => StatusCode::BAD_REQUEST,
        AssignmentError::NotFound(_) => StatusCode::NOT_FOUND,
        AssignmentError::Conflict(_) => StatusCode::CONFLICT,
        AssignmentError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
        AssignmentError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, &error.to_string())
}

/// An answer of the wrong kind (a controller bug, not a client's fault).
fn unexpected(answer: AssignmentAnswer) -> Response<Full<Bytes>> {
    tracing::error!(?answer, "controller answered a different request");
    json_error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected controller answer",
    )
}

fn json_reply(status: StatusCode, value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => reply(status, JSON, body),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &error.to_string()),
    }
}

fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        JSON,
        serde_json::json!({ "error": message }).to_string(),
    )
}

/// Runs a callback on the blocking pool: `503` if it takes too long, `500`
/// if it panics.
async fn call<T: Send + 'static>(
    callback: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StatusCode> {
    match tokio::time::timeout(CALLBACK_TIMEOUT, tokio::task::spawn_blocking(callback)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => {
            tracing::error!(%error, "admin callback failed");
            Err(StatusCode::INTERNAL_SERVER_ERROR)
        }
        Err(_) => {
            tracing::warn!("admin callback timed out");
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

fn health_response(report: &HealthReport) -> Response<Full<Bytes>> {
    let (status, word) = if report.ready && report.degraded {
        (StatusCode::OK, "degraded")
    } else if report.ready {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let body = serde_json::json!({ "status": word, "detail": report.detail });
    reply(status, JSON, body.to_string())
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    fn free_port() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        listener.local_addr().expect("local addr")
    }

    struct Fixture {
        handle: AdminHandle,
        ready: Arc<AtomicBool>,
    }

    fn start() -> Fixture {
        let ready = Arc::new(AtomicBool::new(true));
        let flag = ready.clone();
        let health: HealthFn = Arc::new(move || HealthReport {
            ready: flag.load(Ordering::SeqCst),
            degraded: false,
            detail: serde_json::json!({ "shards": 2 }),
        });
        let layout: LayoutFn = Arc::new(|| r#"{"shards":[{"shard":0,"cpu":1}]}"#.to_string());
        let handle = spawn_admin(free_port(), health, layout, None).expect("admin listener starts");
        Fixture { handle, ready }
    }

    /// Sends `request` and returns (status, headers, body).
    fn send(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String, String)> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(request)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Ok((status, head.to_ascii_lowercase(), body.to_string()))
    }

    fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: kafki\r\n\r\n");
        send(addr, request.as_bytes()).expect("request answered")
    }

    #[test]
    fn serves_metrics_health_layout_and_errors() {
        let fixture = start();
        let addr = fixture.handle.local_addr();
        metrics::ShardMetrics::new(9201).answers_written(1);

        let (status, head, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            body.contains("# TYPE kafki_bytes_out_total counter"),
            "{body}"
        );
        assert!(
            body.contains(r#"kafki_bytes_out_total{shard="9201"} 1"#),
            "{body}"
        );

        let (status, head, body) = get(addr, "/health");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
        assert_eq!(json["status"], "ok");
        assert_eq!(json["detail"]["shards"], 2);

        fixture.ready.store(false, Ordering::SeqCst);
        let (status, _, body) = get(addr, "/health");
        assert_eq!(status, 503);
        let json: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
        assert_eq!(json["status"], "unavailable");

        let (status, head, body) = get(addr, "/v1/layout?pretty");
        assert_eq!(status, 200);
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(body, r#"{"shards":[{"shard":0,"cpu":1}]}"#);

        assert_eq!(get(addr, "/nope").0, 404);
        assert_eq!(get(addr, "/").0, 404);
        let (status, head, _) = send(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: kafki\r\nContent-Length: 2\r\n\r\nhi",
        )
        .expect("request answered");
        assert_eq!(status, 405);
        assert!(head.contains("allow: get"), "{head}");

        fixture.handle.stop();
        assert!(
            TcpStream::connect(addr).is_err(),
            "stopped listener still accepts"
        );
    }

    #[test]
    fn huge_header_is_refused_and_server_survives() {
        let fixture = start();
        let addr = fixture.handle.local_addr();
        let started = Instant::now();
        let mut request = b"GET /metrics HTTP/1.1\r\nHost: kafki\r\nX-Big: ".to_vec();
        request.extend(std::iter::repeat_n(b'a', 1 << 20));
        request.extend(b"\r\n\r\n");
        // The server may reset the connection while we are still writing.
        match send(addr, &request) {
            Ok((status, _, _)) => assert!(status == 431 || status == 0, "status {status}"),
            Err(error) => assert!(
                !matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
                "server hung: {error}"
            ),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(get(addr, "/metrics").0, 200);
    }

    #[test]
    fn slow_and_surplus_connections_do_not_block_it() {
        let fixture = start();
        let addr = fixture.handle.local_addr();
        // Idle connections that never send a full head: they are dropped
        // after HEADER_TIMEOUT, and past MAX_CONNECTIONS closed at once.
        let idle: Vec<TcpStream> = (0..MAX_CONNECTIONS + 4)
            .filter_map(|_| {
                let mut stream = TcpStream::connect(addr).ok()?;
                stream.write_all(b"GET /metr").ok()?;
                Some(stream)
            })
            .collect();
        let started = Instant::now();
        let mut status = 0;
        while started.elapsed() < HEADER_TIMEOUT * 3 {
            if let Ok((answer, _, _)) = send(addr, b"GET /health HTTP/1.1\r\nHost: k\r\n\r\n") {
                status = answer;
                if status == 200 {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(status, 200);
        drop(idle);
    }

    #[test]
    fn bind_failure_names_the_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let addr = taken.local_addr().expect("local addr");
        let error = spawn_admin(
            addr,
            Arc::new(|| HealthReport {
                ready: true,
                degraded: false,
                detail: serde_json::Value::Null,
            }),
            Arc::new(String::new),
            None,
        )
        .expect_err("port in use");
        assert!(
            format!("{error:#}").contains(&addr.to_string()),
            "{error:#}"
        );
    }

    /// A stand-in controller on its own thread: answers each command by
    /// its topic name and records what it was asked.
    fn fake_controller() -> (
        AssignmentSender,
        Arc<std::sync::Mutex<Vec<AssignmentRequest>>>,
    ) {
        use crate::reassign::{AssignmentEntry, AssignmentList, MoveReport};
        use futures::StreamExt;
        let (sender, mut commands) = crate::reassign::command_channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            futures::executor::block_on(async move {
                while let Some(command) = commands.next().await {
                    log.lock().expect("log").push(command.request.clone());
                    let report = |topic: &str, partition, shard| {
                        Ok(AssignmentAnswer::Moved(MoveReport {
                            topic: topic.to_string(),
                            partition,
                            from: 0,
                            shard,
                            moved: true,
                            duration_ms: 3,
                        }))
                    };
                    let answer = match command.request {
                        AssignmentRequest::List => Ok(AssignmentAnswer::List(AssignmentList {
                            shards: 2,
                            assignments: vec![AssignmentEntry {
                                topic: "t".into(),
                                partition: 0,
                                shard: 1,
                                in_effect: true,
                            }],
                            moving: None,
                        })),
                        AssignmentRequest::Move { topic, .. } if topic == "gone" => {
                            Err(AssignmentError::NotFound("unknown topic \"gone\"".into()))
                        }
                        AssignmentRequest::Move { topic, .. } if topic == "busy" => Err(
                            AssignmentError::Conflict("another partition move is running".into()),
                        ),
                        AssignmentRequest::Move { topic, .. } if topic == "stopping" => {
                            Err(AssignmentError::ShuttingDown)
                        }
                        AssignmentRequest::Move {
                            topic,
                            partition,
                            shard,
                        } if topic == "slow" => {
                            // A hand-over waiting for requests to let go.
                            std::thread::sleep(CONNECTION_DEADLINE + Duration::from_secs(1));
                            report(&topic, partition, shard)
                        }
                        AssignmentRequest::Move { shard, .. } if shard > 1 => {
                            Err(AssignmentError::BadRequest("shard does not exist".into()))
                        }
                        AssignmentRequest::Move {
                            topic,
                            partition,
                            shard,
                        } => report(&topic, partition, shard),
                        AssignmentRequest::ReplaceVoter { remove, add } if remove == add => {
                            Err(AssignmentError::BadRequest("the same node".into()))
                        }
                        AssignmentRequest::ReplaceVoter { add, .. } => {
                            Ok(AssignmentAnswer::Voters(vec![1, add]))
                        }
                        AssignmentRequest::Decommission { node } => Ok(AssignmentAnswer::Node {
                            node,
                            partitions_held: 3,
                            removed: false,
                        }),
                        AssignmentRequest::RemoveNode { node: 9 } => Err(
                            AssignmentError::BadRequest("node 9 still holds 3 partition(s)".into()),
                        ),
                        AssignmentRequest::RemoveNode { node } => Ok(AssignmentAnswer::Node {
                            node,
                            partitions_held: 0,
                            removed: true,
                        }),
                        AssignmentRequest::Reset { topic, partition } => {
                            report(&topic, partition, 0)
                        }
                    };
                    let _ = command.reply.send(answer);
                }
            })
        });
        (sender, seen)
    }

    fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: kafki\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn assignment_routes_reach_the_controller_and_map_its_answers() {
        let (sender, seen) = fake_controller();
        let handle = spawn_admin(
            free_port(),
            Arc::new(|| HealthReport {
                ready: true,
                degraded: false,
                detail: serde_json::Value::Null,
            }),
            Arc::new(String::new),
            Some(sender),
        )
        .expect("admin listener starts");
        let addr = handle.local_addr();
        let send_ok = |bytes: Vec<u8>| send(addr, &bytes).expect("request answered");

        let (status, head, body) = get(addr, "/v1/assignments");
        assert_eq!(status, 200, "{body}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["assignments"][0]["shard"], 1);

        let (status, _, body) = send_ok(request(
            "PUT",
            "/v1/partitions/orders.v1/3/shard",
            r#"{"shard": 1}"#,
        ));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            (json["shard"].as_u64(), json["partition"].as_i64()),
            (Some(1), Some(3))
        );
        let (status, _, _) = send_ok(request("DELETE", "/v1/partitions/orders.v1/3/shard", ""));
        assert_eq!(status, 200);
        assert_eq!(
            seen.lock().expect("seen")[1..],
            [
                AssignmentRequest::Move {
                    topic: "orders.v1".into(),
                    partition: 3,
                    shard: 1
                },
                AssignmentRequest::Reset {
                    topic: "orders.v1".into(),
                    partition: 3
                }
            ]
        );

        // Voter replacement: the body checked here, the rest by the quorum.
        let (status, _, body) = send_ok(request(
            "POST",
            "/v1/cluster/voters",
            r#"{"remove": 3, "add": 4}"#,
        ));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["voters"], serde_json::json!([1, 4]));
        let voters = |body: &str| send_ok(request("POST", "/v1/cluster/voters", body)).0;
        assert_eq!(voters(r#"{"remove": 4, "add": 4}"#), 400);
        assert_eq!(voters(r#"{"remove": 4}"#), 400);
        assert_eq!(voters(r#"{"remove": 1, "add": 2, "x": 3}"#), 400);
        assert_eq!(get(addr, "/v1/cluster/voters").0, 405);
        seen.lock()
            .expect("seen")
            .retain(|request| !matches!(request, AssignmentRequest::ReplaceVoter { .. }));

        // Decommission and removal of a node.
        let (status, _, body) = send_ok(request(
            "POST",
            "/v1/cluster/decommission",
            r#"{"node": 2}"#,
        ));
        assert_eq!(status, 200, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(json["partitions_held"], 3);
        assert_eq!(json["removed"], false);
        let node = |path: &str, body: &str| send_ok(request("POST", path, body)).0;
        assert_eq!(node("/v1/cluster/decommission", r#"{"id": 2}"#), 400);
        assert_eq!(node("/v1/cluster/remove", r#"{"node": 9}"#), 400);
        assert_eq!(node("/v1/cluster/remove", r#"{"node": 2}"#), 200);
        assert_eq!(get(addr, "/v1/cluster/remove").0, 405);
        seen.lock().expect("seen").retain(|request| {
            !matches!(
                request,
                AssignmentRequest::Decommission { .. } | AssignmentRequest::RemoveNode { .. }
            )
        });

        // Errors the controller reports.
        let put = |topic: &str, body: &str| {
            send_ok(request(
                "PUT",
                &format!("/v1/partitions/{topic}/0/shard"),
                body,
            ))
        };
        assert_eq!(put("gone", r#"{"shard":0}"#).0, 404);
        assert_eq!(put("busy", r#"{"shard":0}"#).0, 409);
        assert_eq!(put("stopping", r#"{"shard":0}"#).0, 503);
        let (status, _, body) = put("t", r#"{"shard":9}"#);
        assert_eq!(status, 400);
        assert!(body.contains("does not exist"), "{body}");

        // Refused here, never sent to the controller.
        let asked = seen.lock().expect("seen").len();
        for bad in [
            "",
            "{",
            "[1]",
            r#"{"shard":-1}"#,
            r#"{"shard":"1"}"#,
            r#"{"shard":1,"extra":2}"#,
            r#"{"shard":1e30}"#,
        ] {
            let (status, _, body) = put("t", bad);
            assert_eq!(status, 400, "{bad:?}: {body}");
            assert!(body.contains("error"), "{body}");
        }
        let (status, _, _) = send_ok(request("PUT", "/v1/partitions/t/x/shard", r#"{"shard":0}"#));
        assert_eq!(status, 400);
        let (status, _, _) = send_ok(request("PUT", "/v1/partitions/t/99999999999/shard", "{}"));
        assert_eq!(status, 400);
        let huge = format!(r#"{{"shard":1,"pad":"{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert_eq!(put("t", &huge).0, 413);
        // A body larger than the cap without a declared length (chunked).
        let mut chunked =
            b"PUT /v1/partitions/t/0/shard HTTP/1.1\r\nHost: k\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec();
        for _ in 0..4 {
            chunked.extend(format!("{:x}\r\n{}\r\n", 2000, "x".repeat(2000)).as_bytes());
        }
        chunked.extend(b"0\r\n\r\n");
        match send(addr, &chunked) {
            Ok((status, _, _)) => assert_eq!(status, 413),
            Err(error) => panic!("chunked body: {error}"),
        }
        let (status, head, _) = get(addr, "/v1/partitions/t/0/shard");
        assert_eq!(status, 405);
        assert!(head.contains("allow: put, delete"), "{head}");
        assert_eq!(send_ok(request("PUT", "/v1/assignments", "{}")).0, 405);
        assert_eq!(get(addr, "/v1/partitions/t/0").0, 404);
        assert_eq!(get(addr, "/v1/partitions/t/0/shard/x").0, 404);
        assert_eq!(
            seen.lock().expect("seen").len(),
            asked,
            "bad input reached the controller"
        );
        assert_eq!(get(addr, "/metrics").0, 200);
    }

    #[test]
    fn a_move_may_outlast_the_connection_deadline() {
        let (sender, _) = fake_controller();
        let handle = spawn_admin(
            free_port(),
            Arc::new(|| HealthReport {
                ready: true,
                degraded: false,
                detail: serde_json::Value::Null,
            }),
            Arc::new(String::new),
            Some(sender),
        )
        .expect("admin listener starts");
        let mut stream = TcpStream::connect(handle.local_addr()).expect("connect");
        stream
            .set_read_timeout(Some(MOVE_CONNECTION_DEADLINE))
            .expect("timeout");
        stream
            .write_all(&request(
                "PUT",
                "/v1/partitions/slow/0/shard",
                r#"{"shard":1}"#,
            ))
            .expect("send");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("answer");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[test]
    fn assignment_routes_without_a_controller_answer_503() {
        let (sender, receiver) = crate::reassign::command_channel();
        drop(receiver);
        for assignments in [None, Some(sender)] {
            let handle = spawn_admin(
                free_port(),
                Arc::new(|| HealthReport {
                    ready: true,
                    degraded: false,
                    detail: serde_json::Value::Null,
                }),
                Arc::new(String::new),
                assignments,
            )
            .expect("admin listener starts");
            let addr = handle.local_addr();
            assert_eq!(get(addr, "/v1/assignments").0, 503);
            let put = request("PUT", "/v1/partitions/t/0/shard", r#"{"shard":0}"#);
            assert_eq!(send(addr, &put).expect("answered").0, 503);
            assert_eq!(get(addr, "/health").0, 200);
        }
    }

    #[test]
    fn hung_or_panicking_callbacks_cost_only_the_request() {
        let health: HealthFn = Arc::new(|| panic!("health exploded"));
        let layout: LayoutFn = Arc::new(|| {
            std::thread::sleep(CALLBACK_TIMEOUT + Duration::from_secs(1));
            String::new()
        });
        let handle = spawn_admin(free_port(), health, layout, None).expect("admin listener starts");
        let addr = handle.local_addr();
        assert_eq!(get(addr, "/health").0, 500);
        assert_eq!(get(addr, "/v1/layout").0, 503);
        assert_eq!(get(addr, "/metrics").0, 200);
        let stopping = Instant::now();
        drop(handle);
        assert!(stopping.elapsed() < STOP_WAIT + Duration::from_secs(1));
    }
}
