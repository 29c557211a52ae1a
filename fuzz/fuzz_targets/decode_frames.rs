//! The frame decoder on an arbitrary byte stream: split frame after frame, decode each body
//! as a request and as a response, and check that whatever decodes re-encodes to exactly the
//! frame's bytes (the codec is canonical). Nothing may panic but that check's asserts, which
//! `stile_protocol::frame::assert_canonical_stream` holds (the protocol's tests run it on
//! mutated seeds too).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    stile_protocol::frame::assert_canonical_stream(data);
});
