//! Rotating codes (format 2) from a ticket's key: the one function that draws them. The
//! engine checks a presented code against it, the gateway draws the code of the current
//! step with it, and tests draw with it too. The ticket's key is not a ring key: it is
//! derived from one by the engine (`docs/FORMAT.md` §1), names one ticket, and draws that
//! ticket's codes and nothing else.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::code::{CodeBytes, CodeFormat, CodeHeader, TAG_LEN};

/// Bytes of a ticket's key.
pub const TICKET_KEY_LEN: usize = 32;

/// The rotating code of the ticket `header` names, for time step `step`, drawn with the
/// ticket's key: `header`'s bytes 0–9 (as a rotating code), the step's low byte, and the
/// first [`TAG_LEN`] bytes of HMAC-SHA256(ticket key, those 11 bytes).
pub fn draw(header: &CodeHeader, ticket_key: &[u8; TICKET_KEY_LEN], step: u64) -> CodeBytes {
    let header = CodeHeader {
        format: CodeFormat::Rotating,
        ..*header
    };
    let mut code = CodeBytes::unsigned(&header, step as u8);
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(ticket_key).expect("HMAC takes any key length");
    mac.update(code.signed_part());
    let full = mac.finalize().into_bytes();
    let mut tag = [0u8; TAG_LEN];
    tag.copy_from_slice(&full[..TAG_LEN]);
    code.set_tag(&tag);
    code
}

/// The step that holds `unix_s`, with steps of `step_s` seconds.
pub fn step_at(unix_s: u64, step_s: u32) -> u64 {
    unix_s / u64::from(step_s.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The code names the step's low byte and changes with every step and every key.
    #[test]
    fn each_step_and_key_draws_its_own_code() {
        let header = CodeHeader {
            format: CodeFormat::Rotating,
            key_id: 1,
            provider: 7,
            partition: 0,
            serial: 42,
        };
        let key = [9u8; TICKET_KEY_LEN];
        let a = draw(&header, &key, 1000);
        assert_eq!(a.step_low(), Some(1000u64 as u8));
        assert_ne!(a, draw(&header, &key, 1001));
        assert_ne!(a, draw(&header, &[8u8; TICKET_KEY_LEN], 1000));
        assert_eq!(a, draw(&header, &key, 1000));
        assert_eq!(step_at(61, 30), 2);
    }
}
