//! The key ring file from arbitrary text (an operator's edit, a damaged disk): parsing
//! refuses or accepts it, never panics, and a ring it accepts has exactly one active key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stile_engine::KeyStatus;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((ring, _)) = stile_engine::KeyRing::parse(text, std::path::Path::new("ring")) {
        let active = ring.list().iter().filter(|(_, s)| *s == KeyStatus::Active).count();
        assert_eq!(active, 1);
    }
});
