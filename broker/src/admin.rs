//! The admin HTTP listener: `GET /metrics` (Prometheus text), `GET /health`
//! and `GET /v1/layout`, served by hyper on a current-thread tokio runtime
//! in one OS thread of its own, never on a glommio shard.
//!
//! It is bounded so a hostile client cannot hold it for long: request heads
//! are capped at [`MAX_HEAD_BYTES`] (larger ones get `431` and the
//! connection is closed), headers must arrive within [`HEADER_TIMEOUT`],
//! each connection lives at most [`CONNECTION_DEADLINE`] and serves one
//! request (no keep-alive), and at most [`MAX_CONNECTIONS`] are served at a
//! time (more are closed at once). The `health` and `layout` callbacks run
//! on a small blocking pool with a [`CALLBACK_TIMEOUT`], so one that hangs
//! or panics costs that request a `503`/`500`, not the listener.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::sync::{oneshot, Semaphore};

use crate::metrics;

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
/// Threads for the callbacks (a hung callback holds one).
const CALLBACK_THREADS: usize = 2;
/// How long `stop()`/drop waits for the listener thread before leaving it.
const STOP_WAIT: Duration = Duration::from_secs(2);

const JSON: &str = "application/json";
const TEXT: &str = "text/plain; charset=utf-8";

/// What `GET /health` reports. `ready == false` answers `503`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub ready: bool,
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
/// the address in the message) is reported here.
pub fn spawn_admin(
    addr: SocketAddr,
    health: HealthFn,
    layout: LayoutFn,
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
    let routes = Arc::new(Routes { health, layout });
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
            let service = hyper::service::service_fn(move |request| {
                let routes = routes.clone();
                async move { Ok::<_, Infallible>(route(&routes, request).await) }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%peer, %error, "admin connection error"),
                Err(_) => tracing::debug!(%peer, "admin connection took too long; closed"),
            }
            drop(slot);
        });
    }
    tracing::info!("admin listener stopped");
}

async fn route(routes: &Routes, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    let known = matches!(path, "/metrics" | "/health" | "/v1/layout");
    if !known {
        return reply(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if request.method() != Method::GET {
        let mut response = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/metrics" => reply(StatusCode::OK, metrics::CONTENT_TYPE, metrics::render()),
        "/health" => {
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
        _ => {
            let layout = routes.layout.clone();
            match call(move || layout()).await {
                Ok(body) => reply(StatusCode::OK, JSON, body),
                Err(status) => reply(status, TEXT, "layout unavailable\n"),
            }
        }
    }
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
    let (status, word) = if report.ready {
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
            detail: serde_json::json!({ "shards": 2 }),
        });
        let layout: LayoutFn = Arc::new(|| r#"{"shards":[{"shard":0,"cpu":1}]}"#.to_string());
        let handle = spawn_admin(free_port(), health, layout).expect("admin listener starts");
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
        metrics::ShardMetrics::new(9201).add_bytes_out(1);

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
                detail: serde_json::Value::Null,
            }),
            Arc::new(String::new),
        )
        .expect_err("port in use");
        assert!(
            format!("{error:#}").contains(&addr.to_string()),
            "{error:#}"
        );
    }

    #[test]
    fn hung_or_panicking_callbacks_cost_only_the_request() {
        let health: HealthFn = Arc::new(|| panic!("health exploded"));
        let layout: LayoutFn = Arc::new(|| {
            std::thread::sleep(CALLBACK_TIMEOUT + Duration::from_secs(1));
            String::new()
        });
        let handle = spawn_admin(free_port(), health, layout).expect("admin listener starts");
        let addr = handle.local_addr();
        assert_eq!(get(addr, "/health").0, 500);
        assert_eq!(get(addr, "/v1/layout").0, 503);
        assert_eq!(get(addr, "/metrics").0, 200);
        let stopping = Instant::now();
        drop(handle);
        assert!(stopping.elapsed() < STOP_WAIT + Duration::from_secs(1));
    }
}
