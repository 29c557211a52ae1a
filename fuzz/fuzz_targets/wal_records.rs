//! Log records from arbitrary bytes (a damaged or forged segment): decoding frame after
//! frame never panics, and a record that decodes encodes back to exactly its frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stile_engine::wal::record::Record;

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while at < data.len() {
        match Record::decode(&data[at..]) {
            Ok((record, seq, len)) => {
                let mut again = Vec::new();
                record.encode(seq, &mut again);
                assert_eq!(again, &data[at..at + len], "canonical");
                at += len;
            }
            Err(_) => at += 1,
        }
    }
});
