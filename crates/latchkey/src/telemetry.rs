//! Logging setup. Logs go to stderr (stdout is protocol for `latchkey stdio`), with the
//! level from `RUST_LOG` or `--log-level`.
//!
//! Under systemd, stderr is the journal, which stamps every line itself: text lines
//! then go without their own timestamp (and without colour).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `level` is used when `RUST_LOG` is unset.
pub fn init(level: &str, json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: not in files, pipes or the journal.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder.json().init();
    } else if stderr_is_journal() {
        builder.without_time().init();
    } else {
        builder.init();
    }
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
