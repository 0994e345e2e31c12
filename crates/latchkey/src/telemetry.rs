//! Logging setup. Logs go to stderr (stdout is protocol for `latchkey stdio`), with the
//! level from `RUST_LOG` or `--log-level`.
//!
//! Under systemd, stderr is the journal, which stamps every line itself: text lines
//! then go without their own timestamp (and without colour).
//!
//! The daemon logs a line per request, and a `write` per line would sit between the
//! proxy's last body frame and its reply on the wire. So the runtime's thread keeps
//! its lines and hands them on together when it is about to sleep ([`flush`], from
//! the runtime's park hook): once per burst instead of once per request, and after
//! the replies of that burst have gone out, or once the batch reaches [`BATCH`].
//!
//! A thread of its own does the writing, so that a stderr nobody reads (a full pipe,
//! a stalled journal) never stops the runtime: the queue to it is bounded, and what
//! does not fit is dropped and counted in a line written once stderr moves again.
//! [`finish`] (at exit, and from the panic hook) waits until everything handed on is
//! written, so that nothing logged before an error or a panic message comes after it.

use std::cell::RefCell;
use std::io::{IsTerminal as _, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{LazyLock, mpsc};
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format;

/// The runtime's thread hands its kept lines on once they reach this many bytes.
const BATCH: usize = 16 * 1024;
/// Batches (or single lines) waiting for the writer; more are dropped.
const QUEUE: usize = 256;
/// How long [`finish`] waits for the writer.
const FINISH_WAIT: Duration = Duration::from_secs(2);

thread_local! {
    /// Lines the runtime's thread has not handed on yet; `None` on threads that hand
    /// on each line at once (all of them, until their first park).
    static KEPT: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

enum Message {
    Lines(Vec<u8>),
    /// Everything before it is written.
    Written(mpsc::Sender<()>),
}

struct Writer {
    queue: SyncSender<Message>,
    dropped: AtomicUsize,
}

static WRITER: LazyLock<Writer> = LazyLock::new(|| {
    let (queue, received) = mpsc::sync_channel(QUEUE);
    // Without the thread, lines go nowhere; there is no better place to say so.
    let _ = std::thread::Builder::new()
        .name("latchkey-log".into())
        .spawn(move || write_all(&received));
    Writer {
        queue,
        dropped: AtomicUsize::new(0),
    }
});

fn write_all(received: &Receiver<Message>) {
    for message in received {
        match message {
            Message::Lines(lines) => {
                let mut stderr = std::io::stderr().lock();
                let dropped = WRITER.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    let _ = writeln!(
                        stderr,
                        "latchkey: {dropped} log write(s) dropped: stderr was not being read"
                    );
                }
                // Nowhere to report a failed write of the log itself.
                let _ = stderr.write_all(&lines);
            }
            Message::Written(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Hands `lines` to the writer, or drops them if it is that far behind.
fn hand_on(lines: Vec<u8>) {
    if let Err(TrySendError::Full(_)) = WRITER.queue.try_send(Message::Lines(lines)) {
        WRITER.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Hands on the calling thread's kept lines, and keeps its later lines until the
/// next call: the runtime's `on_thread_park` hook.
pub fn flush() {
    KEPT.with_borrow_mut(|kept| match kept {
        Some(lines) if !lines.is_empty() => {
            hand_on(std::mem::replace(lines, Vec::with_capacity(BATCH)));
        }
        Some(_) => {}
        None => *kept = Some(Vec::with_capacity(BATCH)),
    });
}

/// Hands on the calling thread's kept lines, stops keeping them, and waits (a
/// little) until every line handed on is written: for the thread that ran the
/// runtime once it returns, and for a panic, before its message.
pub fn finish() {
    // `try_borrow_mut`: a panic while this thread was adding a line must not turn
    // into a second one here.
    let kept = KEPT.with(|kept| kept.try_borrow_mut().ok().and_then(|mut kept| kept.take()));
    if let Some(lines) = kept
        && !lines.is_empty()
    {
        hand_on(lines);
    }
    let (done, written) = mpsc::channel();
    if WRITER.queue.try_send(Message::Written(done)).is_ok() {
        let _ = written.recv_timeout(FINISH_WAIT);
    }
}

/// stderr, through the writer thread, and through the calling thread's batch when
/// it has one.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        KEPT.with_borrow_mut(|kept| match kept {
            Some(lines) => {
                lines.extend_from_slice(line);
                if lines.len() >= BATCH {
                    hand_on(std::mem::replace(lines, Vec::with_capacity(BATCH)));
                }
            }
            None => hand_on(line.to_vec()),
        });
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber. `level` is used when `RUST_LOG` is unset.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colour codes only for a terminal: not in files, pipes or the journal.
    let colour = std::io::stderr().is_terminal();
    // The lines logged before a panic come before its message.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        finish();
        report(info);
    }));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Stderr)
        .with_ansi(colour);
    if json {
        builder.json().init();
    } else if colour {
        builder.init();
    } else if stderr_is_journal() {
        builder.fmt_fields(plain_fields()).without_time().init();
    } else {
        builder.fmt_fields(plain_fields()).init();
    }
}

/// `name=value` fields, as the default format writes them without colour, but
/// without its styling calls, which it makes even with colours off and which were a
/// third of the cost of a request's log line.
fn plain_fields() -> impl for<'w> FormatFields<'w> {
    format::debug_fn(|writer, field, value| {
        if field.name() == "message" {
            write!(writer, "{value:?}")
        } else {
            write!(writer, "{field}={value:?}")
        }
    })
    .delimited(" ")
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM` to
/// that stream's `device:inode`, and a stderr redirected elsewhere (by a shell
/// started from the service, say) no longer matches it.
#[cfg(unix)]
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((device, inode)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    device.parse() == Ok(meta.dev()) && inode.parse() == Ok(meta.ino())
}

#[cfg(not(unix))]
pub fn stderr_is_journal() -> bool {
    false
}
