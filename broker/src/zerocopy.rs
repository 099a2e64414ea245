//! The zero-copy send path: file regions go file → pipe → socket with
//! `splice(2)`, never through user space.
//!
//! glommio's sockets are blocking-mode descriptors, so a plain `sendfile`
//! would block the whole shard once the socket buffer fills. `splice` into
//! a socket sends with `MSG_DONTWAIT` only when the *socket's* file has
//! `O_NONBLOCK` (fs/splice.c `splice_to_socket`; `SPLICE_F_NONBLOCK` only
//! makes the pipe side non-blocking): a consumer that stopped reading froze
//! its whole shard in `sk_stream_wait_memory`. So the pipe → socket step
//! runs with `O_NONBLOCK` set on the socket for that one call (no await in
//! between, so nothing else of this shard touches the socket meanwhile, and
//! glommio's io_uring operations do not consult the flag): when the socket
//! is full we get `EAGAIN` and wait cooperatively (a short, growing sleep
//! on the shard's timer) until `poll` says it is writable. The file → pipe step reads through the
//! page cache. Regions read for the first time since the broker started were
//! just CRC-checked through that cache (storage's `SegmentFile`), so they are
//! there; others are advised with `POSIX_FADV_WILLNEED` when the fetch is
//! planned ([`prefetch`]), and a page still missing at splice time is read
//! synchronously by the kernel (io_uring `Splice` would make that wait
//! asynchronous too).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::io::{AsyncWrite, AsyncWriteExt};
use kafki_storage::{LogResult, ReadChunk};
use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::metrics::FetchPath;

/// One piece of a response on the wire: bytes, or a file region to splice.
/// `Send`, so owners on other shards can hand regions to the connection.
#[derive(Debug, Clone)]
pub enum WirePart {
    Bytes(Bytes),
    File {
        file: Arc<File>,
        position: u64,
        len: u64,
    },
}

impl From<Bytes> for WirePart {
    fn from(bytes: Bytes) -> Self {
        WirePart::Bytes(bytes)
    }
}

impl WirePart {
    pub fn len(&self) -> u64 {
        match self {
            WirePart::Bytes(bytes) => bytes.len() as u64,
            WirePart::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// `parts` in order with runs of byte parts below `below` bytes each joined
/// into buffers of at most about `joined_max` bytes (one `send` instead of
/// one per part); larger byte parts and file regions pass through as they
/// are.
pub fn join_small(
    parts: impl IntoIterator<Item = WirePart>,
    below: usize,
    joined_max: usize,
) -> Vec<WirePart> {
    let mut joined = Vec::new();
    let mut small = BytesMut::new();
    for part in parts {
        match part {
            WirePart::Bytes(bytes) if bytes.len() < below => {
                if !small.is_empty() && small.len() + bytes.len() > joined_max {
                    joined.push(WirePart::Bytes(small.split().freeze()));
                }
                small.extend_from_slice(&bytes);
            }
            large => {
                if !small.is_empty() {
                    joined.push(WirePart::Bytes(small.split().freeze()));
                }
                joined.push(large);
            }
        }
    }
    if !small.is_empty() {
        joined.push(WirePart::Bytes(small.freeze()));
    }
    joined
}

/// A storage read's piece as a piece to send, and how it will reach the
/// socket: memory as it is; a file region as a shared descriptor to splice
/// (advised into the page cache now, [`prefetch`]), or read into memory
/// when the file cannot be shared (out of descriptors: one response over
/// thousands of partitions holds one per region until it is sent).
pub async fn wire_part(chunk: ReadChunk) -> LogResult<(WirePart, FetchPath)> {
    match chunk {
        ReadChunk::Memory(bytes) => Ok((WirePart::Bytes(bytes), FetchPath::Memory)),
        ReadChunk::File {
            file,
            position,
            len,
        } => match file.share() {
            Ok(handle) => {
                prefetch(&handle, position, len);
                let part = WirePart::File {
                    file: Arc::new(handle),
                    position,
                    len,
                };
                Ok((part, FetchPath::Sendfile))
            }
            Err(error) => {
                let bytes = file.read_bytes(position, len as usize).await.inspect_err(|read_error| {
                    tracing::error!(path = %file.path.display(), %error, %read_error, "cannot share or read segment file");
                })?;
                tracing::debug!(path = %file.path.display(), %error, "segment file not shareable; region copied");
                Ok((WirePart::Bytes(bytes.into()), FetchPath::Copy))
            }
        },
    }
}

/// Asks the kernel to start reading a file region into the page cache now,
/// without waiting for it. A fetch builds all its file regions before it
/// sends the first: advising each one as it is planned puts every cold
/// partition's read in flight at once, instead of one synchronous page-in
/// per splice while the shard waits (the file side of `splice` cannot be
/// made non-blocking). Advice is only advice: a failure changes nothing.
pub fn prefetch(file: &File, position: u64, len: u64) {
    let (Ok(offset), Ok(len)) = (i64::try_from(position), i64::try_from(len)) else {
        return;
    };
    if let Err(error) = nix::fcntl::posix_fadvise(
        std::os::fd::AsRawFd::as_raw_fd(file),
        offset,
        len,
        nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
    ) {
        tracing::debug!(%error, "posix_fadvise(WILLNEED) refused");
    }
}

/// Largest single splice step.
const SPLICE_STEP_BYTES: usize = 1 << 20;
/// Longest pause between writability checks.
const WAIT_MAX: Duration = Duration::from_millis(2);

/// A connection's pipe for splicing (created on the first file region).
pub struct Splicer {
    pipe_read: OwnedFd,
    pipe_write: OwnedFd,
}

impl Splicer {
    pub fn new() -> io::Result<Self> {
        let (pipe_read, pipe_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC)?;
        // A bigger pipe means fewer steps; the default (64 KiB) still works.
        let _ = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&pipe_write),
            nix::fcntl::FcntlArg::F_SETPIPE_SZ(SPLICE_STEP_BYTES as i32),
        );
        Ok(Self {
            pipe_read,
            pipe_write,
        })
    }

    /// Sends `len` bytes of `file` from `position` to the socket `socket`.
    pub async fn send_file(
        &self,
        socket: RawFd,
        file: &File,
        position: u64,
        len: u64,
    ) -> io::Result<()> {
        // SAFETY: the caller owns the connection whose socket this is and
        // keeps it open for the duration of the call.
        let socket = unsafe { BorrowedFd::borrow_raw(socket) };
        let mut offset = position as i64;
        let mut remaining = len;
        let mut in_pipe = 0usize;
        let mut wait = Duration::from_micros(50);
        while remaining > 0 || in_pipe > 0 {
            if in_pipe == 0 {
                let step = remaining.min(SPLICE_STEP_BYTES as u64) as usize;
                match splice(
                    file.as_fd(),
                    Some(&mut offset),
                    self.pipe_write.as_fd(),
                    None,
                    step,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                ) {
                    Ok(0) => {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "file region ends before its length",
                        ))
                    }
                    Ok(moved) => {
                        in_pipe = moved;
                        remaining -= moved as u64;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(error) => return Err(error.into()),
                }
            }
            let sent = with_nonblocking(socket, || {
                splice(
                    self.pipe_read.as_fd(),
                    None,
                    socket,
                    None,
                    in_pipe,
                    SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK,
                )
            });
            match sent {
                Ok(sent) => {
                    in_pipe -= sent;
                    wait = Duration::from_micros(50);
                }
                Err(Errno::EAGAIN) => {
                    wait_writable(socket, wait).await;
                    wait = (wait * 2).min(WAIT_MAX);
                }
                Err(Errno::EINTR) => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(())
    }
}

/// Writes parts in order to a socket: bytes through `writer` (any buffered
/// writer of the socket `socket`), file regions spliced straight from the
/// file after flushing what the writer holds, so the order on the wire is
/// kept. `splicer` is created on the first file region; after an error the
/// caller must not reuse it (see [`Splicer`]). When no pipe can be made
/// (the descriptor table is full: a fetch over thousands of cold partitions
/// holds a descriptor per region until it is sent), this write's file
/// regions are read into memory and written instead.
pub async fn write_parts<W: AsyncWrite + Unpin>(
    writer: &mut W,
    socket: RawFd,
    splicer: &mut Option<Splicer>,
    parts: &[WirePart],
) -> io::Result<()> {
    let mut no_pipe = false;
    for part in parts {
        match part {
            WirePart::Bytes(bytes) => writer.write_all(bytes).await?,
            WirePart::File {
                file,
                position,
                len,
            } => {
                if splicer.is_none() && !no_pipe {
                    match Splicer::new() {
                        Ok(created) => *splicer = Some(created),
                        Err(error) => {
                            no_pipe = true;
                            note_no_pipe(&error);
                        }
                    }
                }
                match splicer.as_ref() {
                    Some(splicer) => {
                        writer.flush().await?;
                        splicer.send_file(socket, file, *position, *len).await?;
                    }
                    None => {
                        writer
                            .write_all(&read_region(file, *position, *len)?)
                            .await?
                    }
                }
            }
        }
    }
    writer.flush().await
}

/// Warnings about splices replaced by copies, at most one per this long.
const NO_PIPE_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Logs that a write copies its file regions for want of a pipe: a warning
/// now and then (it repeats for as long as descriptors are short), else at
/// debug level.
fn note_no_pipe(error: &io::Error) {
    static LAST_WARNING: std::sync::Mutex<Option<std::time::Instant>> = std::sync::Mutex::new(None);
    let now = std::time::Instant::now();
    let warn = match LAST_WARNING.lock() {
        Ok(mut last) => {
            let due = last.is_none_or(|at| now.duration_since(at) >= NO_PIPE_WARNING_EVERY);
            if due {
                *last = Some(now);
            }
            due
        }
        Err(_) => false,
    };
    if warn {
        tracing::warn!(%error, "cannot make a pipe to splice file regions (descriptors short?); copying them through memory (warned at most once a minute)");
    } else {
        tracing::debug!(%error, "no pipe to splice; file regions copied");
    }
}

/// A file region read into memory (a synchronous read, as splice's own file
/// side is: the region was advised into the page cache when planned).
fn read_region(file: &File, position: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let len = usize::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "file region too large"))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, position)?;
    Ok(bytes)
}

/// Runs `call` with `O_NONBLOCK` set on `socket`'s file, restoring its flags
/// after. A failure to set the flag is returned as the call's error rather
/// than risking a blocking call on the shard.
fn with_nonblocking(
    socket: BorrowedFd<'_>,
    call: impl FnOnce() -> nix::Result<usize>,
) -> nix::Result<usize> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(socket.as_raw_fd(), FcntlArg::F_GETFL)?);
    if flags.contains(OFlag::O_NONBLOCK) {
        return call();
    }
    fcntl(
        socket.as_raw_fd(),
        FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK),
    )?;
    let outcome = call();
    // Back to blocking mode, as glommio expects its sockets.
    if let Err(error) = fcntl(socket.as_raw_fd(), FcntlArg::F_SETFL(flags)) {
        tracing::warn!(%error, "cannot restore a socket's flags after a splice");
    }
    outcome
}

/// Waits cooperatively until `socket` is writable: checks with a zero
/// timeout `poll`, else sleeps `wait` on the shard's timer.
async fn wait_writable(socket: BorrowedFd<'_>, wait: Duration) {
    let mut fds = [PollFd::new(socket, PollFlags::POLLOUT)];
    if matches!(poll(&mut fds, PollTimeout::ZERO), Ok(ready) if ready > 0) {
        return;
    }
    glommio::timer::sleep(wait).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(fill: u8, len: usize) -> WirePart {
        WirePart::Bytes(Bytes::from(vec![fill; len]))
    }

    /// Each part as (kind, length, first byte for bytes).
    fn shape(parts: &[WirePart]) -> Vec<(&'static str, u64, u8)> {
        parts
            .iter()
            .map(|part| match part {
                WirePart::Bytes(bytes) => ("bytes", bytes.len() as u64, bytes[0]),
                WirePart::File { len, .. } => ("file", *len, 0),
            })
            .collect()
    }

    #[test]
    fn small_parts_are_joined_in_order_around_large_ones_and_files() -> io::Result<()> {
        let file = Arc::new(File::open(std::env::current_exe()?)?);
        let parts = vec![
            bytes(1, 10),
            bytes(2, 20),
            bytes(3, 100),
            WirePart::File {
                file,
                position: 0,
                len: 7,
            },
            bytes(4, 30),
            bytes(5, 40),
        ];
        let joined = join_small(parts, 50, usize::MAX);
        assert_eq!(
            shape(&joined),
            vec![
                ("bytes", 30, 1),
                ("bytes", 100, 3),
                ("file", 7, 0),
                ("bytes", 70, 4)
            ]
        );
        let WirePart::Bytes(first) = &joined[0] else {
            panic!("first part is not bytes");
        };
        assert_eq!(&first[..], [[1u8; 10].as_slice(), &[2u8; 20]].concat());
        Ok(())
    }

    #[test]
    fn a_joined_buffer_stays_near_its_cap() {
        let parts = (0..10).map(|index| bytes(index, 40)).collect::<Vec<_>>();
        let joined = join_small(parts, 50, 100);
        // 40 + 40 fits under 100, a third would not.
        assert_eq!(
            shape(&joined),
            vec![
                ("bytes", 80, 0),
                ("bytes", 80, 2),
                ("bytes", 80, 4),
                ("bytes", 80, 6),
                ("bytes", 80, 8)
            ]
        );
        let total: u64 = joined.iter().map(WirePart::len).sum();
        assert_eq!(total, 400);
    }

    #[test]
    fn a_region_read_for_want_of_a_pipe_is_exactly_the_region() -> io::Result<()> {
        let path = std::env::temp_dir().join(format!("kafki-read-region-{}", std::process::id()));
        std::fs::write(&path, (0..=255u8).collect::<Vec<_>>())?;
        let file = File::open(&path)?;
        let region = read_region(&file, 10, 5);
        let past_the_end = read_region(&file, 250, 10);
        std::fs::remove_file(&path)?;
        assert_eq!(region?, vec![10, 11, 12, 13, 14]);
        assert!(
            past_the_end.is_err(),
            "a region past the end must fail, not come short"
        );
        Ok(())
    }

    #[test]
    fn nothing_in_nothing_out() {
        assert!(join_small(Vec::new(), 50, 100).is_empty());
    }
}
