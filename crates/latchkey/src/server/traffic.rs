//! What the status page shows of a server's requests since start: how many, how
//! many failed, and the last one's time and status. It sits on the hot path, so a
//! request costs one clock read and three relaxed atomic writes, and the last
//! request's time and status share one word so that they are always read together.
//! Also the answer to the page's own first look at a server no client has used yet
//! (`status::look_first`), which is not a client's request and is not counted.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;

/// Bits of [`Traffic::last`] that hold the status code (below 1024); the rest hold
/// milliseconds since the Unix epoch.
const STATUS_BITS: u32 = 10;

#[derive(Debug, Default)]
pub(crate) struct Traffic {
    requests: AtomicU64,
    errors: AtomicU64,
    /// `(unix_millis << STATUS_BITS) | status`, 0 before the first request.
    last: AtomicU64,
    /// The status the page's first look got: [`NOT_LOOKED`], [`LOOKING`] (also when
    /// no answer came), or an HTTP status.
    looked: AtomicU16,
}

const NOT_LOOKED: u16 = 0;
const LOOKING: u16 = 1;

/// A snapshot of [`Traffic`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) last: Option<(SystemTime, u16)>,
    /// The status of the answer to the page's first look, if it had one.
    pub(crate) looked: Option<u16>,
}

impl Seen {
    /// The status of the latest answer known: the last request's, else the look's.
    pub(crate) fn status(&self) -> Option<u16> {
        self.last.map(|(_, status)| status).or(self.looked)
    }
}

impl Traffic {
    /// Counts one answer to a client. A failure is any 4xx or 5xx but 405, which a
    /// server that offers no GET stream (or no DELETE) gives as the spec allows.
    pub(crate) fn count(&self, status: StatusCode) {
        let code = status.as_u16();
        self.requests.fetch_add(1, Ordering::Relaxed);
        if code >= 400 && status != StatusCode::METHOD_NOT_ALLOWED {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.last
            .store((millis << STATUS_BITS) | u64::from(code), Ordering::Relaxed);
    }

    /// Whether the page should look at the server now: true once, and only while no
    /// client has used it.
    pub(crate) fn start_look(&self) -> bool {
        self.last.load(Ordering::Relaxed) == 0
            && self
                .looked
                .compare_exchange(NOT_LOOKED, LOOKING, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    pub(crate) fn looked(&self, status: StatusCode) {
        self.looked.store(status.as_u16(), Ordering::Relaxed);
    }

    pub(crate) fn seen(&self) -> Seen {
        let last = self.last.load(Ordering::Relaxed);
        Seen {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last: (last != 0).then(|| {
                (
                    UNIX_EPOCH + Duration::from_millis(last >> STATUS_BITS),
                    (last & ((1 << STATUS_BITS) - 1)) as u16,
                )
            }),
            looked: Some(self.looked.load(Ordering::Relaxed)).filter(|&s| s > LOOKING),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_failures_and_keeps_the_last_status_with_its_time() {
        let traffic = Traffic::default();
        assert_eq!(traffic.seen().last, None);
        assert!(traffic.start_look() && !traffic.start_look(), "one look");
        assert_eq!(traffic.seen().looked, None);
        traffic.looked(StatusCode::UNAUTHORIZED);
        assert_eq!(traffic.seen().looked, Some(401));
        let before = SystemTime::now() - Duration::from_millis(1);
        for status in [200, 405, 502, 202] {
            traffic.count(StatusCode::from_u16(status).expect("a status"));
        }
        let seen = traffic.seen();
        assert_eq!((seen.requests, seen.errors), (4, 1));
        let (at, status) = seen.last.expect("a last request");
        assert_eq!(status, 202);
        assert!(at >= before && at <= SystemTime::now(), "{at:?}");
    }
}
