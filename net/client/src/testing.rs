//! Test support: a real `kafki serve` on free loopback ports, for integration tests of this
//! crate and of the bench (a plain process wrapper; nothing here runs in production).
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
