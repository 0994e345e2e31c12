//! stdin and stdout on the runtime's own event loop when they are pipes or Unix
//! sockets, as they are when a client launches the bridge: a read or a write is then
//! one non-blocking syscall in the task that wants it. tokio's `stdin()` and
//! `stdout()` hand every read and write to a blocking thread instead, which costs
//! several thread wake-ups per message; they remain for anything else (a terminal, a
//! file, other platforms).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
#[cfg(unix)]
use tokio::net::{UnixStream, unix::pipe};

pub(super) enum Input {
    #[cfg(unix)]
    Pipe(pipe::Receiver),
    #[cfg(unix)]
    Socket(UnixStream),
    Blocking(tokio::io::Stdin),
}

pub(super) enum Output {
    #[cfg(unix)]
    Pipe(pipe::Sender),
    #[cfg(unix)]
    Socket(UnixStream),
    Blocking(tokio::io::Stdout),
}

impl Input {
    pub(super) fn stdin() -> Self {
        #[cfg(unix)]
        {
            use std::os::fd::AsFd as _;
            let fd = || std::io::stdin().as_fd().try_clone_to_owned().ok();
            if let Some(pipe) = fd().and_then(|fd| pipe::Receiver::from_owned_fd(fd).ok()) {
                return Self::Pipe(pipe);
            }
            if let Some(socket) = fd().and_then(unix::socket) {
                return Self::Socket(socket);
            }
        }
        Self::Blocking(tokio::io::stdin())
    }

    /// Puts stdin back in blocking mode: the process that launched this one may
    /// share it.
    pub(super) fn release(self) {
        match self {
            #[cfg(unix)]
            Self::Pipe(pipe) => drop(pipe.into_blocking_fd()),
            #[cfg(unix)]
            Self::Socket(socket) => unix::release(socket),
            Self::Blocking(_) => {}
        }
    }
}

impl Output {
    pub(super) fn stdout() -> Self {
        #[cfg(unix)]
        if let Some(output) = unix::stdout() {
            return output;
        }
        Self::Blocking(tokio::io::stdout())
    }

    /// Puts stdout back in blocking mode (see [`Input::release`]).
    pub(super) fn release(self) {
        match self {
            #[cfg(unix)]
            Self::Pipe(pipe) => drop(pipe.into_blocking_fd()),
            #[cfg(unix)]
            Self::Socket(socket) => unix::release(socket),
            Self::Blocking(_) => {}
        }
    }
}

#[cfg(unix)]
mod unix {
    use std::os::fd::{AsFd as _, OwnedFd};
    use std::os::unix::fs::MetadataExt as _;

    use tokio::net::{UnixStream, unix::pipe};

    use super::Output;

    /// A Unix socket (what libuv-based clients such as Node hand their children),
    /// made non-blocking. Anything else is left untouched.
    pub(super) fn socket(fd: OwnedFd) -> Option<UnixStream> {
        let socket = std::os::unix::net::UnixStream::from(fd);
        socket.local_addr().ok()?;
        socket.set_nonblocking(true).ok()?;
        UnixStream::from_std(socket).ok()
    }

    pub(super) fn release(socket: UnixStream) {
        if let Ok(socket) = socket.into_std() {
            drop(socket.set_nonblocking(false));
        }
    }

    pub(super) fn stdout() -> Option<Output> {
        let fd = || std::io::stdout().as_fd().try_clone_to_owned().ok();
        // Non-blocking mode belongs to the open file, so stderr would share it when
        // it is the same pipe (`2>&1`), and log lines could then be lost.
        if same_file(fd()?, std::io::stderr().as_fd().try_clone_to_owned().ok()?) {
            return None;
        }
        if let Some(pipe) = fd().and_then(|fd| pipe::Sender::from_owned_fd(fd).ok()) {
            return Some(Output::Pipe(pipe));
        }
        fd().and_then(socket).map(Output::Socket)
    }

    fn same_file(a: OwnedFd, b: OwnedFd) -> bool {
        let (Ok(a), Ok(b)) = (
            std::fs::File::from(a).metadata(),
            std::fs::File::from(b).metadata(),
        ) else {
            return true;
        };
        a.dev() == b.dev() && a.ino() == b.ino()
    }
}

impl AsyncRead for Input {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Self::Pipe(pipe) => Pin::new(pipe).poll_read(cx, buf),
            #[cfg(unix)]
            Self::Socket(socket) => Pin::new(socket).poll_read(cx, buf),
            Self::Blocking(stdin) => Pin::new(stdin).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Output {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            #[cfg(unix)]
            Self::Pipe(pipe) => Pin::new(pipe).poll_write(cx, buf),
            #[cfg(unix)]
            Self::Socket(socket) => Pin::new(socket).poll_write(cx, buf),
            Self::Blocking(stdout) => Pin::new(stdout).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Self::Pipe(pipe) => Pin::new(pipe).poll_flush(cx),
            #[cfg(unix)]
            Self::Socket(socket) => Pin::new(socket).poll_flush(cx),
            Self::Blocking(stdout) => Pin::new(stdout).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            #[cfg(unix)]
            Self::Pipe(pipe) => Pin::new(pipe).poll_shutdown(cx),
            #[cfg(unix)]
            Self::Socket(socket) => Pin::new(socket).poll_shutdown(cx),
            Self::Blocking(stdout) => Pin::new(stdout).poll_shutdown(cx),
        }
    }
}
