//! Feeds arbitrary bytes to the frame decoders of every channel, whole and in
//! pieces. Any panic, or an allocation libFuzzer flags as too large, is a bug.
#![no_main]

use flotilla_common::frame::{self, FrameDecoder, Limits};
use flotilla_common::message::Channel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    for channel in [Channel::Control, Channel::Bundle, Channel::Status] {
        let _ = frame::decode(data, channel, &limits);
        // The first byte picks a piece size, so reassembly across reads is fuzzed too.
        let piece = usize::from(data.first().copied().unwrap_or(1)).max(1);
        let mut decoder = FrameDecoder::new(channel, &limits);
        'stream: for chunk in data.chunks(piece) {
            let mut input = chunk;
            while !input.is_empty() {
                match decoder.decode_next(&mut input) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'stream,
                }
            }
        }
    }
});
