//! Logging setup. Logs go to stderr (stdout is protocol for `latchkey stdio`), with the
//! level from `RUST_LOG` or `--log-level`.
//!
//! Under systemd, stderr is the journal, which stamps every line itself: text lines
//! then go without their own timestamp (and without colour).
//!
//! The daemon logs a line per request, and a `write` per line would sit between the
//! proxy's last body frame and its reply on the wire. So the runtime's thread keeps
//! its lines and writes them together when it is about to sleep ([`flush`], from the
//! runtime's park hook): once per burst instead of once per request, and after the
//! replies of that burst have gone out, or once the batch reaches [`BATCH`]. Other
//! threads (the blocking pool) write each line at once.

use std::cell::RefCell;
use std::io::{IsTerminal as _, Write};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format;

/// The runtime's thread writes its kept lines once they reach this many bytes.
const BATCH: usize = 16 * 1024;

thread_local! {
    /// Lines the runtime's thread has not written yet; `None` on threads that write
    /// each line at once (all of them, until their first park).
    static KEPT: RefCell<Option<Vec<u8>>> = const { RefCell::new(None) };
}

/// Writes the calling thread's kept lines, and keeps its later lines until the next
/// call: the runtime's `on_thread_park` hook.
pub fn flush() {
    KEPT.with_borrow_mut(|kept| {
        write_out(kept.get_or_insert_with(|| Vec::with_capacity(BATCH)));
    });
}

/// Writes the calling thread's kept lines and stops keeping them: for the thread
/// that ran the runtime, once it returns (before an error is printed after them).
pub fn finish() {
    KEPT.with_borrow_mut(|kept| {
        if let Some(mut lines) = kept.take() {
            write_out(&mut lines);
        }
    });
}

fn write_out(lines: &mut Vec<u8>) {
    if !lines.is_empty() {
        // Nowhere to report a failed write of the log itself.
        let _ = std::io::stderr().lock().write_all(lines);
        lines.clear();
    }
}

/// stderr, through the calling thread's batch when it has one.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        KEPT.with_borrow_mut(|kept| match kept {
            Some(lines) => {
                lines.extend_from_slice(line);
                if lines.len() >= BATCH {
                    let written = std::io::stderr().lock().write_all(lines);
                    lines.clear();
                    written?;
                }
                Ok(line.len())
            }
            None => std::io::stderr()
                .lock()
                .write_all(line)
                .map(|()| line.len()),
        })
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
