//! Small pieces of the SSE wire format (WHATWG HTML, "server-sent events") shared by
//! the legacy endpoint rewriter and the legacy bridge. Written here rather than taken
//! from a crate because the rewriter must pass the bytes through exactly as received,
//! and both need only block splitting and the `event`/`data` fields.

use bytes::{Bytes, BytesMut};
use url::Url;

/// One parsed event block.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Event<'a> {
    pub event: Option<&'a str>,
    pub data: Option<String>,
    pub id: Option<&'a str>,
    /// The reconnection time the server asks for, in milliseconds.
    pub retry: Option<u64>,
}

/// The fields of one event block (SSE spec: `data` lines join with a newline; a
/// missing or empty `event` means "message").
pub fn parse_event(block: &str) -> Event<'_> {
    let mut parsed = Event::default();
    // Lines end in LF, CRLF or a lone CR; splitting at either byte leaves an empty
    // line inside a CRLF, and an empty line sets no field.
    for line in block.split(['\r', '\n']) {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => parsed.event = Some(value),
            "data" => match &mut parsed.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => parsed.data = Some(value.to_owned()),
            },
            // An id with NUL is ignored (SSE spec).
            "id" if !value.contains('\0') => parsed.id = Some(value),
            "retry" => parsed.retry = value.parse().ok().or(parsed.retry),
            _ => {}
        }
    }
    if parsed.event.is_none_or(str::is_empty) && parsed.data.is_some() {
        parsed.event = Some("message");
    }
    parsed
}

/// The `event` and `data` fields of one event block.
pub(crate) fn parse_block(block: &str) -> (Option<&str>, Option<String>) {
    let event = parse_event(block);
    (event.event, event.data)
}

/// Resolves a legacy `endpoint` event against the stream's URL. Only the configured
/// server's own origin is accepted: anything else would send its credentials elsewhere.
pub(crate) fn resolve_endpoint(base: &Url, announced: &str) -> Result<Url, String> {
    let target = base
        .join(announced)
        .map_err(|e| format!("upstream sent an endpoint event that is not a URL: {e}"))?;
    if target.origin() != base.origin() {
        return Err(format!(
            "upstream announced a message endpoint on another origin ({}); latchkey only forwards to the configured server's origin",
            target.origin().ascii_serialization()
        ));
    }
    Ok(target)
}

/// 128 random bits as hex, for names that other local processes must not guess.
pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 16];
    // Without the OS random number generator nothing here is safe to hand out.
    getrandom::fill(&mut bytes).expect("the OS random number generator is available");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Splits complete SSE event blocks off the front of a growing buffer. It remembers
/// how far it has looked, so a multi-megabyte event arriving in many chunks is
/// scanned once, not once per chunk.
#[derive(Debug, Default)]
pub struct Blocks {
    buffer: BytesMut,
    scanned: usize,
}

impl Blocks {
    /// How many bytes wait for the end of their event.
    pub fn len(&self) -> usize {
        self.buffer.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.is_empty()
    }

    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete block's text (without its blank line).
    pub fn next_block(&mut self) -> Option<Bytes> {
        self.next_raw().map(|(raw, text_len)| raw.slice(..text_len))
    }

    /// The next complete block as received, blank line included, and the length of
    /// its text.
    pub fn next_raw(&mut self) -> Option<(Bytes, usize)> {
        // A blank line right at the start ends an empty block.
        let lead = match (self.buffer.first(), self.buffer.get(1)) {
            (Some(b'\n'), _) => Some(1),
            (Some(b'\r'), Some(b'\n')) => Some(2),
            (Some(b'\r'), Some(_)) => Some(1),
            // A lone CR may be the first half of a CRLF: wait for more.
            (Some(b'\r'), None) => return None,
            _ => None,
        };
        if let Some(n) = lead {
            self.scanned = 0;
            return Some((self.buffer.split_to(n).freeze(), 0));
        }
        let from = self.scanned.saturating_sub(3);
        match find_blank_line(&self.buffer, from) {
            Some((len, next)) => {
                self.scanned = 0;
                Some((self.buffer.split_to(next).freeze(), len))
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }

    /// Everything not yet split off.
    pub fn into_rest(self) -> BytesMut {
        self.buffer
    }
}

/// The first blank line at or after `from`: (length of the text before it, offset
/// just past it). Line endings are LF, CRLF or CR (SSE spec).
fn find_blank_line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut i = from;
    while i < buf.len() {
        match buf[i] {
            b'\n' => {
                // "\n\n" or "\r\n\n"…: a line ending followed by another. The text
                // ends before a CRLF's CR.
                let text = if i > 0 && buf[i - 1] == b'\r' {
                    i - 1
                } else {
                    i
                };
                match buf.get(i + 1) {
                    Some(b'\n') => return Some((text, i + 2)),
                    Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some((text, i + 3)),
                    Some(b'\r') if buf.get(i + 2).is_some() => return Some((text, i + 2)),
                    _ => {}
                }
            }
            b'\r' => match (buf.get(i + 1), buf.get(i + 2), buf.get(i + 3)) {
                (Some(b'\n'), Some(b'\r'), Some(b'\n')) => return Some((i, i + 4)),
                (Some(b'\r'), _, _) => return Some((i, i + 2)),
                _ => {}
            },
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_split_on_every_line_ending_and_across_chunks() {
        let mut blocks = Blocks::default();
        let mut seen = Vec::new();
        let stream = b"data: a\n\ndata: b\r\n\r\n\ndata: c\r\rid: 4\ndata: d\n\n";
        // One byte at a time: every boundary falls inside some terminator.
        for byte in stream {
            blocks.push(&[*byte]);
            while let Some(block) = blocks.next_block() {
                seen.push(String::from_utf8_lossy(&block).into_owned());
            }
        }
        assert_eq!(
            seen,
            ["data: a", "data: b", "", "data: c", "id: 4\ndata: d"]
        );
    }

    #[test]
    fn a_lone_cr_ends_a_line_inside_a_block() {
        // Found by the sse_blocks fuzz target: an event of a CR-only stream read as
        // one `event` line, so its endpoint went to the client unrewritten.
        let event = parse_event("event: endpoint\rdata: /messages?id=1\r\nid: 7");
        assert_eq!(event.event, Some("endpoint"));
        assert_eq!(event.data.as_deref(), Some("/messages?id=1"));
        assert_eq!(event.id, Some("7"));
    }

    #[test]
    fn an_empty_event_field_means_message() {
        // Found by the sse_blocks fuzz target: `event:` with no value made the
        // type "", so the bridges dropped the message (SSE spec: "message").
        for block in ["event:\ndata: {}", "event: x\nevent\ndata: {}"] {
            assert_eq!(parse_event(block).event, Some("message"), "{block:?}");
        }
    }

    #[test]
    fn a_crlf_ending_stays_out_of_the_text_whatever_blank_line_follows() {
        // Found by the sse_blocks fuzz target: a CRLF followed by an LF or a lone CR
        // left the CR in the block's text, and so at the end of its data.
        for stream in [&b"data: a\r\n\n"[..], b"data: a\r\n\rx"] {
            let mut blocks = Blocks::default();
            blocks.push(stream);
            let block = blocks.next_block().expect("a complete block");
            assert_eq!(&block[..], b"data: a", "{:?}", Bytes::from_static(stream));
        }
    }
}
