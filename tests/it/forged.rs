//! Any single bit flip or character change of a valid code is `forged`, and changes nothing.

use std::sync::OnceLock;

use proptest::prelude::*;
use stile_engine::{
    CheckinRequest, CodeFormat, Engine, Gate, OutcomeKind, Policy, Presented, TicketState,
};
use stile_protocol::{base32::ALPHABET, CodeBytes};

use crate::support::{engine, mint};

struct Fixture {
    engine: Engine,
    codes: Vec<CodeBytes>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // The engine keeps its own handle on the clock, which stays at the fixed test time.
        let (engine, _clock) = engine();
        let (_, mut codes) = mint(&engine, Policy::simple(1), 8);
        codes.extend(
            mint(
                &engine,
                Policy {
                    format: CodeFormat::Rotating,
                    ..Policy::simple(1)
                },
                8,
            )
            .1,
        );
        Fixture { engine, codes }
    })
}

const GATE: Gate = Gate::new(1, 1);

fn still_valid(f: &Fixture, code: &CodeBytes) -> bool {
    f.engine.status(&Presented::Code(*code)).unwrap().word.state == TicketState::Valid
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn any_bit_flip_is_forged(which in 0usize..16, bit in 0usize..168) {
        let f = fixture();
        let code = f.codes[which];
        let mut raw = code.as_bytes().to_vec();
        let bit = bit % (raw.len() * 8);
        raw[bit / 8] ^= 1 << (bit % 8);
        let outcome = match CodeBytes::from_slice(&raw) {
            Ok(flipped) => f.engine.checkin(&CheckinRequest { gate: GATE, scan_id: 1, code: flipped }),
            Err(_) => stile_protocol::Outcome::FORGED, // format byte flips do not even parse
        };
        prop_assert_eq!(outcome.kind, OutcomeKind::Forged);
        prop_assert!(still_valid(f, &code));
    }

    #[test]
    fn any_character_change_is_forged(which in 0usize..16, pos in 0usize..34, sym in 0usize..32) {
        let f = fixture();
        let code = f.codes[which];
        let mut text = code.to_text().as_str().as_bytes().to_vec();
        let pos = pos % text.len();
        prop_assume!(ALPHABET[sym] != text[pos]);
        text[pos] = ALPHABET[sym];
        let outcome = f.engine.checkin_text(&GATE, 1, std::str::from_utf8(&text).unwrap());
        prop_assert_eq!(outcome.kind, OutcomeKind::Forged);
        prop_assert!(still_valid(f, &code));
    }
}
