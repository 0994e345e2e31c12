//! What the commands print on stdout. `println!` panics when the reader has gone
//! (`latchkey status | head -1`); a command in a pipe should stop quietly instead,
//! as it would by SIGPIPE's default action, which Rust turns off and which only
//! `unsafe` could set back. Its exit status is the one a shell shows for a process
//! SIGPIPE ended (141), not 0: `latchkey doctor | grep -q …` under `pipefail` must
//! not pass for a doctor that found problems.

use std::fmt;
use std::io::{self, Write as _};

/// 128 + SIGPIPE (13).
const SIGPIPE_STATUS: i32 = 141;

/// Writes `text` to stdout, and exits (141) once nobody reads it.
pub fn write(text: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    if let Err(e) = stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        crate::telemetry::finish();
        if e.kind() == io::ErrorKind::BrokenPipe {
            std::process::exit(SIGPIPE_STATUS);
        }
        eprintln!("latchkey: could not write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `print!`, through [`write`].
#[doc(hidden)]
#[macro_export]
macro_rules! __say {
    ($($arg:tt)*) => { $crate::out::write(::std::format_args!($($arg)*)) };
}
pub use __say as say;

/// `println!`, through [`write`].
#[doc(hidden)]
#[macro_export]
macro_rules! __sayln {
    () => { $crate::out::write(::std::format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::out::write(::std::format_args!("{}\n", ::std::format_args!($($arg)*)))
    };
}
pub use __sayln as sayln;
