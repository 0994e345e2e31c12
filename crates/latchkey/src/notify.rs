//! The systemd notification protocol (`sd_notify(3)`): `Type=notify` services tell
//! the service manager when they are ready, reloading and stopping by sending a
//! datagram to `$NOTIFY_SOCKET`.
//!
//! Written here rather than taken from the `sd-notify` crate because that crate (0.5)
//! connects to `$NOTIFY_SOCKET` as a file path, so it cannot reach a socket in the
//! abstract namespace (`@name`), which systemd uses in containers and some setups;
//! the protocol itself is one `send_to`.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd, or `Type=` other than notify) every
//! call does nothing.

/// A handle that sends notifications when the process runs under a service manager.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<std::ffi::OsString>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`. The variable is left in place: latchkey starts no
    /// children that could misuse it.
    pub fn from_env() -> Self {
        Self {
            socket: std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()),
        }
    }

    /// A notifier that never sends (for daemons run inside tests or other programs).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// `READY=1`: the config is loaded, the listener bound and stored credentials
    /// restored. Also ends a reload.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}\n"));
    }

    /// `RELOADING=1` with the `MONOTONIC_USEC` that systemd 253+ needs for
    /// `Type=notify-reload` (older versions ignore it).
    pub fn reloading(&self) {
        let mut message = "RELOADING=1\n".to_owned();
        if let Some(usec) = monotonic_usec() {
            message.push_str(&format!("MONOTONIC_USEC={usec}\n"));
        }
        self.send(&message);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\n");
    }

    /// `STATUS=...`: a line shown by `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}\n"));
    }

    fn send(&self, message: &str) {
        let Some(socket) = &self.socket else { return };
        // A lost notification must not stop the daemon; systemd would time it out,
        // and the log says why.
        if let Err(e) = send_to(socket, message.as_bytes()) {
            tracing::warn!(socket = %socket.to_string_lossy(), error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
        }
    }
}

#[cfg(target_os = "linux")]
fn send_to(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::net::{SocketAddr, UnixDatagram};

    let bytes = socket.as_bytes();
    let addr = match bytes.split_first() {
        // `@name` is `\0name` in the abstract namespace.
        Some((b'@', name)) => SocketAddr::from_abstract_name(name)?,
        _ => SocketAddr::from_pathname(std::path::Path::new(socket))?,
    };
    let sent = UnixDatagram::unbound()?.send_to_addr(message, &addr)?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

#[cfg(all(unix, not(target_os = "linux")))]
fn send_to(socket: &std::ffi::OsStr, message: &[u8]) -> std::io::Result<()> {
    let sent = std::os::unix::net::UnixDatagram::unbound()?.send_to(message, socket)?;
    if sent != message.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "the notification was cut short",
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn send_to(_socket: &std::ffi::OsStr, _message: &[u8]) -> std::io::Result<()> {
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, the clock systemd compares `MONOTONIC_USEC`
/// with (`std::time::Instant` does not expose its value).
#[cfg(target_os = "linux")]
fn monotonic_usec() -> Option<u128> {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u128::try_from(now.tv_sec).ok()?;
    let nanos = u128::try_from(now.tv_nsec).ok()?;
    Some(secs * 1_000_000 + nanos / 1_000)
}

#[cfg(not(target_os = "linux"))]
fn monotonic_usec() -> Option<u128> {
    None
}
