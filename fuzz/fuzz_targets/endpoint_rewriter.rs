//! The legacy HTTP+SSE `endpoint` rewriter (`EndpointRewriter` in
//! `crates/latchkey/src/proxy/sse_endpoint.rs`), fed any stream in any chunks.
//! Checks: the output is the input byte for byte unless the first event that
//! carries data is `endpoint`; that one is replaced by a local path whose
//! registration points at the announced URL on the stream's own origin, and an
//! endpoint on any other origin ends the stream with an error, registering nothing.
#![no_main]

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::{Stream, stream};
use latchkey::fuzzing::{Blocks, LegacyEndpoints, endpoint_rewriter, parse_event};
use latchkey_fuzz::{Input, same_origin};
use libfuzzer_sys::fuzz_target;
use url::Url;

/// Where the stream came from: the announced endpoint is relative to it.
const BASES: [&str; 4] = [
    "https://mcp.example.com/sse",
    "http://127.0.0.1:8931/legacy/sse?key=1",
    "https://mcp.example.com:8443/a/b/",
    "http://[::1]/sse",
];

/// Bigger than the rewriter's 64 KiB scan limit.
const PAD: usize = 64 * 1024 + 1;

/// The rewriter's output items, up to and including the first error.
fn run(
    rewriter: &mut (impl Stream<Item = Result<Bytes, impl ToString>> + Unpin),
) -> Vec<Result<Bytes, String>> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut items = Vec::new();
    loop {
        match Pin::new(&mut *rewriter).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(bytes))) => items.push(Ok(bytes)),
            Poll::Ready(Some(Err(e))) => {
                items.push(Err(e.to_string()));
                return items;
            }
            Poll::Ready(None) => return items,
            Poll::Pending => panic!("an in-memory stream is never pending"),
        }
    }
}

/// The first block that carries data: its span and its (event, data).
fn first_event(stream: &[u8]) -> Option<(usize, usize, Option<String>, String)> {
    let mut blocks = Blocks::default();
    blocks.push(stream);
    let mut at = 0;
    while let Some((raw, text_len)) = blocks.next_raw() {
        let event = parse_event(std::str::from_utf8(&raw[..text_len]).unwrap_or(""));
        if let Some(data) = event.data {
            return Some((at, at + raw.len(), event.event.map(str::to_owned), data));
        }
        at += raw.len();
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let input = Input::new(data);
    let base = Url::parse(BASES[usize::from(input.bits() & 3)]).expect("a base URL");
    // One input in eight is padded past the scan limit, with the chunk lengths in
    // KiB, so that giving up on a huge first event is reached too.
    let padded = input.bits() >> 2 == 7;
    let owned;
    let (stream, unit) = if padded {
        owned = [&vec![b'x'; PAD][..], input.stream].concat();
        (&owned[..], 1024)
    } else {
        (input.stream, 1)
    };
    let chunks: Vec<_> = input
        .chunks_of(stream, unit)
        .into_iter()
        .map(|c| Ok::<_, std::io::Error>(Bytes::copy_from_slice(c)))
        .collect();

    let endpoints = LegacyEndpoints::default();
    let mut rewriter =
        endpoint_rewriter(stream::iter(chunks), base.clone(), "srv", endpoints.clone());
    let items = run(&mut rewriter);
    let failed = items.last().is_some_and(Result::is_err);
    let output: Vec<u8> = items
        .iter()
        .filter_map(|item| item.as_ref().ok())
        .flat_map(|b| b.to_vec())
        .collect();
    let open = |n: usize| format!("{endpoints:?}") == format!("LegacyEndpoints({n} open)");
    let passed_through = !failed && output == stream && open(0);

    match first_event(stream) {
        Some((start, end, Some(event), announced)) if event == "endpoint" => {
            let target = base
                .join(announced.trim())
                .ok()
                .filter(|t| same_origin(t, &base));
            match target {
                Some(target) => {
                    let prefix =
                        [&stream[..start], b"event: endpoint\ndata: /srv/messages/"].concat();
                    let rewritten = !failed
                        && output.len() == prefix.len() + 32 + 2 + (stream.len() - end)
                        && output.starts_with(&prefix)
                        && output.ends_with(&[&b"\n\n"[..], &stream[end..]].concat());
                    if rewritten {
                        let token = std::str::from_utf8(&output[prefix.len()..prefix.len() + 32])
                            .expect("the token is text");
                        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");
                        assert_eq!(endpoints.get("srv", token), Some(target));
                        assert_eq!(
                            endpoints.get("other", token),
                            None,
                            "another server's token"
                        );
                        assert!(open(1));
                    } else {
                        assert!(
                            padded && passed_through,
                            "the endpoint event was not rewritten"
                        );
                    }
                }
                None => {
                    // Not a URL, or another origin: refused, nothing registered, and
                    // nothing of the event went out.
                    if failed {
                        assert!(
                            stream[..start].starts_with(&output),
                            "output before the error"
                        );
                        assert!(open(0), "a refused endpoint was registered");
                    } else {
                        assert!(padded && passed_through, "a bad endpoint was not refused");
                    }
                }
            }
        }
        _ => assert!(
            passed_through,
            "a stream without an endpoint event was changed"
        ),
    }
    drop(rewriter);
    assert!(open(0), "the registration outlived its stream");
});
