//! The code's text form from arbitrary input (what a scanner or a person types): parsing
//! never panics, and a code that parses writes back to text that parses to the same code.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(code) = stile_protocol::CodeBytes::parse(text) {
        let again = stile_protocol::CodeBytes::parse(code.to_text().as_str()).expect("own text");
        assert_eq!(code, again);
    }
});
