//! Small pieces of the SSE wire format (WHATWG HTML, "server-sent events") shared by
//! the legacy endpoint rewriter and the legacy bridge. Written here rather than taken
//! from a crate because the rewriter must pass the bytes through exactly as received,
//! and both need only block splitting and the `event`/`data` fields.

use url::Url;

/// The first complete event block: (length of its text, offset just past its blank line).
pub(crate) fn first_block(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < buf.len() {
        let line_end = match buf[i..].iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(p) => i + p,
            None => return None,
        };
        let mut next = line_end + 1;
        if buf[line_end] == b'\r' {
            match buf.get(next) {
                Some(b'\n') => next += 1,
                None => return None,
                _ => {}
            }
        }
        if line_end == i {
            return Some((i, next));
        }
        i = next;
    }
    None
}

/// One parsed event block.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    pub(crate) event: Option<&'a str>,
    pub(crate) data: Option<String>,
    pub(crate) id: Option<&'a str>,
    /// The reconnection time the server asks for, in milliseconds.
    pub(crate) retry: Option<u64>,
}

/// The fields of one event block (SSE spec: `data` lines join with a newline; a
/// missing `event` means "message").
pub(crate) fn parse_event(block: &str) -> Event<'_> {
    let mut parsed = Event::default();
    for line in block.lines() {
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
    if parsed.event.is_none() && parsed.data.is_some() {
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
