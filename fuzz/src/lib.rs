//! What the fuzz targets share: how an input's first bytes choose how its stream is
//! cut into chunks, and a reference reading of the SSE wire format (WHATWG HTML,
//! "server-sent events", §9.2.5-9.2.6) written straight from the spec, for the SSE
//! targets to compare latchkey's splitter and parser with.

use std::ops::Range;

/// A fuzz input as a flags byte, chunk lengths and a stream: byte 0's low three bits
/// say how many chunk lengths follow (one byte each), its high five bits are the
/// target's own; the rest is the stream, cut at those lengths, the remainder going
/// in a last chunk. A seed is `\0` followed by the stream.
#[derive(Debug)]
pub struct Input<'a> {
    pub flags: u8,
    pub stream: &'a [u8],
    lengths: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        let Some((&flags, rest)) = data.split_first() else {
            return Self {
                flags: 0,
                stream: &[],
                lengths: &[],
            };
        };
        let n = usize::from(flags & 7).min(rest.len());
        let (lengths, stream) = rest.split_at(n);
        Self {
            flags,
            stream,
            lengths,
        }
    }

    /// The target's own bits (byte 0 shifted right by three).
    pub fn bits(&self) -> u8 {
        self.flags >> 3
    }

    /// The stream cut into chunks, each chunk length multiplied by `unit`. Empty
    /// chunks are kept: a stream may yield them.
    pub fn chunks_of(&self, stream: &'a [u8], unit: usize) -> Vec<&'a [u8]> {
        let mut chunks = Vec::new();
        let mut rest = stream;
        for &len in self.lengths {
            let (chunk, tail) = rest.split_at((usize::from(len) * unit).min(rest.len()));
            chunks.push(chunk);
            rest = tail;
        }
        chunks.push(rest);
        chunks
    }
}

/// One event block as the spec reads a stream: its bytes, blank line included, and
/// the length of its text (everything before the last line's line ending).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefBlock {
    pub raw: Range<usize>,
    pub text_len: usize,
}

/// The complete blocks of `stream` and where the unfinished rest starts. Lines end
/// in CRLF, LF or CR; a CR that is the stream's last byte may be the first half of
/// a CRLF, so its line is not complete yet.
///
/// One liberty, which `Blocks` takes so as not to hold back an event of a CR-only
/// stream until the next byte comes: a blank line that is a CR right after a line
/// ended by a lone CR ends the block at once, and an LF after it starts a new line
/// (an empty block, which dispatches nothing; the spec would count CR LF as the
/// blank line). No event differs.
pub fn reference_blocks(stream: &[u8]) -> (Vec<RefBlock>, usize) {
    let mut blocks = Vec::new();
    let mut block_start = 0;
    // The end of the block's last non-empty line, before its line ending.
    let mut text_end = None;
    // Whether that line ended with a lone CR.
    let mut after_cr = false;
    let mut line_start = 0;
    while let Some(at) = stream[line_start..]
        .iter()
        .position(|&b| b == b'\n' || b == b'\r')
    {
        let end = line_start + at;
        let blank = end == line_start;
        let next = match (stream[end], stream.get(end + 1)) {
            (b'\r', _) if blank && after_cr => end + 1,
            (b'\r', None) => break,
            (b'\r', Some(b'\n')) => end + 2,
            _ => end + 1,
        };
        if blank {
            blocks.push(RefBlock {
                raw: block_start..next,
                text_len: text_end.map_or(0, |e| e - block_start),
            });
            block_start = next;
            text_end = None;
            after_cr = false;
        } else {
            text_end = Some(end);
            after_cr = next == end + 1 && stream[end] == b'\r';
        }
        line_start = next;
    }
    (blocks, block_start)
}

/// The fields of one block as the spec's event stream interpretation sets them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RefEvent {
    /// The event type dispatched: `None` when the block dispatches nothing (no data).
    pub event: Option<String>,
    pub data: Option<String>,
    /// The last event ID buffer's new value, if an `id` line set it.
    pub id: Option<String>,
    pub retry: Option<u64>,
}

pub fn reference_event(text: &str) -> RefEvent {
    let mut event_type = String::new();
    let mut data: Option<String> = None;
    let mut out = RefEvent::default();
    for line in sse_lines(text) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => event_type = value.to_owned(),
            "data" => {
                let buffer = data.get_or_insert_with(String::new);
                buffer.push_str(value);
                buffer.push('\n');
            }
            "id" if !value.contains('\0') => out.id = Some(value.to_owned()),
            // The spec takes ASCII digits only. latchkey's u64 parse also takes a
            // leading '+' and ignores a number too big for a u64; both are harmless
            // (a reconnection delay), so the reference reads it the same way.
            "retry" => {
                let digits = value.strip_prefix('+').unwrap_or(value);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    out.retry = value.parse().ok().or(out.retry);
                }
            }
            _ => {}
        }
    }
    if let Some(mut buffer) = data {
        buffer.pop();
        out.data = Some(buffer);
        out.event = Some(if event_type.is_empty() {
            "message".to_owned()
        } else {
            event_type
        });
    }
    out
}

/// The lines of a block's text: split at CRLF, LF or CR.
pub fn sse_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find(['\r', '\n']) {
        lines.push(&rest[..at]);
        let skip = if rest[at..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[at + skip..];
    }
    lines.push(rest);
    lines
}

/// Whether two URLs have the same tuple origin (scheme, host, port), worked out
/// without `Url::origin`, which the code under test uses.
pub fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    matches!(a.scheme(), "http" | "https")
        && a.scheme() == b.scheme()
        && a.host_str().is_some()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// "HTTPS, or HTTP to a loopback host", worked out without the code under test.
pub fn secure_by_hand(url: &url::Url) -> bool {
    match (url.scheme(), url.host_str()) {
        ("https", _) => true,
        ("http", Some(host)) => {
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::Ipv4Addr>()
                    .is_ok_and(|ip| ip.octets()[0] == 127)
                || host == "[::1]"
        }
        _ => false,
    }
}
