//! The SSE block splitter (`Blocks`) and event parser (`parse_event`) of
//! `crates/latchkey/src/proxy/sse.rs`, on any stream cut into chunks anywhere.
//! Checks: the blocks and the rest put back together are the stream; chunked and
//! one-shot reading give the same blocks; both agree with a reading of the spec
//! (`latchkey_fuzz::reference_blocks`), and so does every block's parse.
#![no_main]

use bytes::Bytes;
use latchkey::fuzzing::{Blocks, parse_event};
use latchkey_fuzz::{Input, reference_blocks, reference_event};
use libfuzzer_sys::fuzz_target;

fn drain(blocks: &mut Blocks, into: &mut Vec<(Bytes, usize)>) {
    while let Some((raw, text_len)) = blocks.next_raw() {
        assert!(text_len < raw.len(), "a block ends with its blank line");
        assert!(
            raw[text_len..].iter().all(|b| matches!(b, b'\r' | b'\n')),
            "only line endings follow the text: {raw:?} at {text_len}"
        );
        into.push((raw, text_len));
    }
}

fuzz_target!(|data: &[u8]| {
    let input = Input::new(data);
    let stream = input.stream;

    let mut blocks = Blocks::default();
    let mut chunked = Vec::new();
    let mut waiting = 0;
    for chunk in input.chunks_of(stream, 1) {
        blocks.push(chunk);
        waiting += chunk.len();
        let before = chunked.len();
        drain(&mut blocks, &mut chunked);
        waiting -= chunked[before..]
            .iter()
            .map(|(raw, _)| raw.len())
            .sum::<usize>();
        assert_eq!(blocks.len(), waiting);
    }
    let rest = blocks.into_rest();
    let mut joined: Vec<u8> = chunked.iter().flat_map(|(raw, _)| raw.to_vec()).collect();
    joined.extend_from_slice(&rest);
    assert_eq!(joined, stream, "blocks and rest are the stream");

    let mut whole = Blocks::default();
    whole.push(stream);
    let mut one_shot = Vec::new();
    drain(&mut whole, &mut one_shot);
    assert_eq!(one_shot, chunked, "one-shot and chunked blocks differ");
    assert_eq!(whole.into_rest(), rest);

    let (expected, rest_at) = reference_blocks(stream);
    let got: Vec<_> = chunked
        .iter()
        .scan(0, |at, (raw, text_len)| {
            let start = *at;
            *at += raw.len();
            Some((start..*at, *text_len))
        })
        .collect();
    let expected: Vec<_> = expected.into_iter().map(|b| (b.raw, b.text_len)).collect();
    assert_eq!(got, expected, "blocks differ from the spec's");
    assert_eq!(rest.len(), stream.len() - rest_at);

    for (raw, text_len) in &chunked {
        let text = &raw[..*text_len];
        match std::str::from_utf8(text) {
            Ok(text) => {
                let event = parse_event(text);
                let spec = reference_event(text);
                if spec.data.is_some() {
                    assert_eq!(event.event, spec.event.as_deref(), "event type of {text:?}");
                }
                assert_eq!(event.data, spec.data, "data of {text:?}");
                assert_eq!(event.id, spec.id.as_deref(), "id of {text:?}");
                assert_eq!(event.retry, spec.retry, "retry of {text:?}");
            }
            Err(_) => drop(parse_event(&String::from_utf8_lossy(text))),
        }
    }
});
