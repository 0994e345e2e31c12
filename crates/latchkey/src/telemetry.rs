//! Logging setup. Logs go to stderr (stdout is protocol for `latchkey stdio`), with the
//! level from `RUST_LOG` or `--log-level`.
//!
//! Under systemd, stderr is the journal, which stamps every line itself: text lines
//! then go without their own timestamp (and without colour).
//!
//! The daemon logs a line per request, on the hot path of every tool call, so a line
//! costs neither a syscall nor a wake-up of its own:
//! - a request's line is formatted when the runtime's thread is about to sleep
//!   ([`later`], run by [`flush`] from the runtime's park hook), not between the
//!   proxy's last body frame and the write of it;
//! - a thread of its own does the writing, so that a stderr nobody reads (a full
//!   pipe, a stalled journal) never stops the runtime. Lines wait for it in a
//!   bounded backlog; what does not fit is dropped and counted in a line written
//!   once stderr moves again;
//! - that thread is woken only when it is idle, and after each write it lets lines
//!   gather for [`GATHER`] before the next one: a burst of requests costs one wake-up
//!   and one `write` per few milliseconds, not one per request, and an idle daemon
//!   none at all.
//!
//! [`finish`] (at exit, and from the panic hook) waits until everything handed on is
//! written, so that nothing logged before an error or a panic message comes after it.

use std::cell::RefCell;
use std::io::{IsTerminal as _, Write};
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::MakeExt as _;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{self, Writer};
use tracing_subscriber::fmt::time::FormatTime;

/// Log bytes waiting for the writer (some 2,000 request lines); lines that would go
/// past it are dropped.
const BACKLOG_BYTES: usize = 256 * 1024;
/// How long the writer lets lines gather after a write.
const GATHER: Duration = Duration::from_millis(10);
/// How long [`finish`] waits for the writer.
const FINISH_WAIT: Duration = Duration::from_secs(2);
/// Deferred lines a thread keeps before it formats them anyway (a runtime that
/// never runs out of work never parks).
const LATER_MAX: usize = 64;

type Deferred = Box<dyn FnOnce()>;

thread_local! {
    /// Lines to log when this thread next parks; `None` on threads that log at once
    /// (all of them, until their first park).
    static LATER: RefCell<Option<Vec<Deferred>>> = const { RefCell::new(None) };
}

/// The lines between the threads that log and the writer.
struct Backlog {
    state: Mutex<State>,
    /// The writer waits here, for lines or for [`finish`].
    work: Condvar,
    /// [`finish`] waits here, for the writer.
    written: Condvar,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// Lines handed on, and lines written (or given up on), ever.
    handed: u64,
    written: u64,
    /// Lines dropped since the writer last said so.
    dropped: u64,
    /// The writer waits for lines: a thread that hands some on wakes it.
    idle: bool,
    /// [`finish`] is waiting: no gathering.
    hurry: bool,
}

static BACKLOG: LazyLock<Backlog> = LazyLock::new(|| {
    // Without the thread, lines go nowhere; there is no better place to say so.
    let _ = std::thread::Builder::new()
        .name("latchkey-log".into())
        .spawn(write_all);
    Backlog {
        state: Mutex::new(State::default()),
        work: Condvar::new(),
        written: Condvar::new(),
    }
});

fn state() -> MutexGuard<'static, State> {
    BACKLOG.state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn write_all() {
    let backlog = &*BACKLOG;
    let mut state = state();
    loop {
        while state.lines.is_empty() && !state.hurry {
            state.idle = true;
            state = backlog
                .work
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.idle = false;
        state.hurry = false;
        let lines = std::mem::take(&mut state.lines);
        let upto = state.handed;
        let dropped = std::mem::take(&mut state.dropped);
        drop(state);
        let mut stderr = std::io::stderr().lock();
        // Nowhere to report a failed write of the log itself.
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "latchkey: {dropped} log write(s) dropped: stderr was not being read"
            );
        }
        let _ = stderr.write_all(&lines);
        drop(stderr);
        state = self::state();
        state.written = upto;
        backlog.written.notify_all();
        state = backlog
            .work
            .wait_timeout_while(state, GATHER, |state| !state.hurry)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// Adds `line` to the backlog, or drops it if the writer is that far behind.
fn hand_on(line: &[u8]) {
    let mut state = state();
    if state.lines.len() + line.len() > BACKLOG_BYTES {
        state.dropped += 1;
        return;
    }
    state.lines.extend_from_slice(line);
    state.handed += 1;
    if state.idle {
        state.idle = false;
        BACKLOG.work.notify_one();
    }
}

/// Logs with `log` when the calling thread is next about to sleep (see [`flush`]),
/// or at once on a thread that has no park hook.
pub fn later(log: impl FnOnce() + 'static) {
    let now = LATER.with_borrow_mut(|later| match later {
        Some(lines) if lines.len() < LATER_MAX => {
            lines.push(Box::new(log));
            None
        }
        Some(lines) => {
            let mut all = std::mem::take(lines);
            all.push(Box::new(log));
            Some(all)
        }
        None => Some(vec![Box::new(log) as Deferred]),
    });
    for log in now.into_iter().flatten() {
        log();
    }
}

/// Logs the calling thread's deferred lines, and defers its later ones until the
/// next call: the runtime's `on_thread_park` hook.
pub fn flush() {
    let deferred = LATER.with_borrow_mut(|later| match later {
        Some(lines) => std::mem::take(lines),
        None => {
            *later = Some(Vec::new());
            Vec::new()
        }
    });
    for log in deferred {
        log();
    }
}

/// Logs the calling thread's deferred lines, stops deferring, and waits (a little)
/// until every line handed on is written: for the thread that ran the runtime once
/// it returns, and for a panic, before its message.
pub fn finish() {
    // `try_borrow_mut`: a panic while this thread was deferring a line must not turn
    // into a second one here.
    let deferred = LATER.with(|later| later.try_borrow_mut().ok().and_then(|mut l| l.take()));
    for log in deferred.into_iter().flatten() {
        log();
    }
    let backlog = &*BACKLOG;
    let mut state = state();
    let target = state.handed;
    state.hurry = true;
    backlog.work.notify_one();
    let _ = backlog
        .written
        .wait_timeout_while(state, FINISH_WAIT, |state| state.written < target);
}

/// stderr, through the backlog and its writer thread.
struct Stderr;

impl Write for Stderr {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        hand_on(line);
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
        .with_timer(Timestamp)
        .with_ansi(colour);
    // JSON escapes control characters itself; the text formats go through
    // `plain_fields`, which escapes them, whether or not stderr is a terminal.
    if json {
        builder.json().init();
    } else if stderr_is_journal() {
        builder.fmt_fields(plain_fields()).without_time().init();
    } else {
        builder.fmt_fields(plain_fields()).init();
    }
}

/// `name=value` fields, as the default format writes them without colour, but
/// without its styling calls, which it makes even with colours off and which were a
/// third of the cost of a request's log line. Control characters in any field are
/// escaped: text from a server (an error description, a scope) must not split a log
/// line or reach a terminal as an escape sequence.
fn plain_fields() -> impl for<'w> FormatFields<'w> {
    format::debug_fn(|writer, field, value| {
        let mut escaped = crate::redact::Escaped(writer);
        if field.name() == "message" {
            std::fmt::Write::write_fmt(&mut escaped, format_args!("{value:?}"))
        } else {
            std::fmt::Write::write_fmt(&mut escaped, format_args!("{field}={value:?}"))
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

/// RFC 3339 timestamps in UTC with microseconds, as tracing-subscriber's default
/// writes them, with the date and time of day formatted once per second: the
/// default formats every component with `write!`, about a third of a request line.
struct Timestamp;

thread_local! {
    /// The second last formatted, and its `YYYY-MM-DDTHH:MM:SS.`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl FormatTime for Timestamp {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs();
        SECOND.with_borrow_mut(|(second, text)| {
            if *second != secs {
                *second = secs;
                *text = date_time(secs);
            }
            w.write_str(text)
        })?;
        let mut micros = since.subsec_micros();
        let mut digits = *b"000000Z";
        for digit in digits[..6].iter_mut().rev() {
            *digit = b'0' + (micros % 10) as u8;
            micros /= 10;
        }
        w.write_str(std::str::from_utf8(&digits).unwrap_or_default())
    }
}

/// `YYYY-MM-DDTHH:MM:SS.` for seconds since the epoch (UTC), by Howard Hinnant's
/// `civil_from_days`.
fn date_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let of_day = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{LATER_MAX, date_time, flush, later};
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn every_deferred_line_is_logged_once() {
        let logged = Rc::new(Cell::new(0));
        // The first park makes the thread defer.
        flush();
        let count = LATER_MAX * 2 + 3;
        for _ in 0..count {
            let logged = logged.clone();
            later(move || logged.set(logged.get() + 1));
        }
        // Past `LATER_MAX`, lines are logged without waiting for the park.
        assert!(logged.get() >= LATER_MAX, "{}", logged.get());
        flush();
        assert_eq!(logged.get(), count);
    }

    #[test]
    fn dates_are_proleptic_gregorian_utc() {
        assert_eq!(date_time(0), "1970-01-01T00:00:00.");
        assert_eq!(date_time(951_825_599), "2000-02-29T11:59:59.");
        assert_eq!(date_time(4_107_542_400), "2100-03-01T00:00:00.");
        assert_eq!(date_time(1_796_147_999), "2026-12-01T17:59:59.");
    }
}
