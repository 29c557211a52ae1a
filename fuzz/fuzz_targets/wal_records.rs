//! Log frames from arbitrary bytes (a damaged or forged segment): decoding frame after
//! frame never panics, and a record or durability mark that decodes encodes back to
//! exactly its frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stile_engine::wal::record::{decode_frame, encode_mark, Frame};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match decode_frame(&data[at..]) {
            Ok((frame, seq, len)) => {
                let mut again = Vec::new();
                match frame {
                    Frame::Record(record) => record.encode(seq, &mut again),
                    Frame::Mark { synced_to } => encode_mark(seq, synced_to, &mut again),
                }
                assert_eq!(again, &data[at..at + len], "canonical");
                at += len;
            }
            Err(_) => at += 1,
        }
    }
});
