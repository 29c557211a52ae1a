//! The feature code: 20 bytes (static, format 1) or 21 bytes (rotating, format 2).
//!
//! | bytes | field |
//! |---|---|
//! | 0 | format version (1 = static, 2 = rotating) |
//! | 1 | key id (which key of the ring signed it) |
//! | 2–3 | provider id, big endian |
//! | 4–5 | partition, big endian |
//! | 6–9 | serial inside the partition, big endian |
//! | 10 | rotating only: low byte of the time step |
//! | 10–19 / 11–20 | tag: first 80 bits of HMAC-SHA256 over all bytes before it |
//!
//! This module only lays out and parses bytes; signing and verifying live in the engine.

use std::fmt;

use crate::base32;

/// Length of a static (format 1) code in bytes.
pub const STATIC_LEN: usize = 20;
/// Length of a rotating (format 2) code in bytes.
pub const ROTATING_LEN: usize = 21;
/// The longest code in bytes.
pub const MAX_LEN: usize = ROTATING_LEN;
/// Length of the tag (80 bits of HMAC-SHA256) in bytes.
pub const TAG_LEN: usize = 10;
/// Symbols in the text of a static code.
pub const STATIC_TEXT_LEN: usize = base32::encoded_len(STATIC_LEN);
/// Symbols in the text of a rotating code.
pub const ROTATING_TEXT_LEN: usize = base32::encoded_len(ROTATING_LEN);
/// Longest accepted text input, separators included; longer input is refused unread.
pub const TEXT_INPUT_MAX_LEN: usize = 128;

/// Which kind of code: the first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CodeFormat {
    /// Format 1: the code never changes.
    Static = 1,
    /// Format 2: the code changes every time step; the tag covers the step.
    Rotating = 2,
}

impl CodeFormat {
    /// Length in bytes of a code of this format.
    pub const fn byte_len(self) -> usize {
        match self {
            CodeFormat::Static => STATIC_LEN,
            CodeFormat::Rotating => ROTATING_LEN,
        }
    }

    /// Number of bytes the tag covers (everything before the tag).
    pub const fn signed_len(self) -> usize {
        self.byte_len() - TAG_LEN
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(CodeFormat::Static),
            2 => Some(CodeFormat::Rotating),
            _ => None,
        }
    }
}

/// The fields a code names, without its tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeHeader {
    /// Static or rotating.
    pub format: CodeFormat,
    /// Key of the ring that signs it.
    pub key_id: u8,
    /// Operator that sold the ticket; a gate may check in only its provider's tickets.
    pub provider: u16,
    /// Partition (node) that owns the ticket.
    pub partition: u16,
    /// Dense index of the ticket inside its partition.
    pub serial: u32,
}

/// Why bytes or text are not a well-formed code. A well-formed code may still be forged: only
/// the engine can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Neither 20 bytes (static) nor 21 (rotating).
    #[error("a code is 20 or 21 bytes, got {0}")]
    BadLength(usize),
    /// First byte is not a known format, or does not match the length.
    #[error("unknown code format {0} (expected 1 = static or 2 = rotating)")]
    BadFormat(u8),
    /// The text holds a character outside Crockford base32.
    #[error(
        "character {position} is not a code symbol (Crockford base32: 0-9, A-Z without I L O U)"
    )]
    BadSymbol {
        /// Byte offset of the bad character in the input.
        position: usize,
    },
    /// The text has the wrong number of symbols.
    #[error("a code is 32 or 34 symbols long, got {0}")]
    BadTextLength(usize),
    /// The last symbol carries bits beyond the data.
    #[error("the last symbol is not one any code ends with (mistyped?)")]
    NonCanonical,
}

/// A code's bytes, on the stack: parsed, not verified.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CodeBytes {
    /// Number of bytes used: 20 or 21.
    len: u8,
    /// The bytes; those past `len` are zero.
    bytes: [u8; MAX_LEN],
}

impl CodeBytes {
    /// Checks length and format byte; does not look at the tag.
    pub fn from_slice(raw: &[u8]) -> Result<Self, CodeError> {
        let format = match raw.len() {
            STATIC_LEN | ROTATING_LEN => {
                CodeFormat::from_byte(raw[0]).ok_or(CodeError::BadFormat(raw[0]))?
            }
            n => return Err(CodeError::BadLength(n)),
        };
        if format.byte_len() != raw.len() {
            return Err(CodeError::BadFormat(raw[0]));
        }
        let mut bytes = [0u8; MAX_LEN];
        bytes[..raw.len()].copy_from_slice(raw);
        Ok(CodeBytes {
            len: raw.len() as u8,
            bytes,
        })
    }

    /// A code with these fields and an all-zero tag, for the engine to sign. `step_low` is the
    /// time step's low byte for rotating codes and ignored for static ones.
    pub fn unsigned(header: &CodeHeader, step_low: u8) -> Self {
        let mut bytes = [0u8; MAX_LEN];
        bytes[0] = header.format as u8;
        bytes[1] = header.key_id;
        bytes[2..4].copy_from_slice(&header.provider.to_be_bytes());
        bytes[4..6].copy_from_slice(&header.partition.to_be_bytes());
        bytes[6..10].copy_from_slice(&header.serial.to_be_bytes());
        if header.format == CodeFormat::Rotating {
            bytes[10] = step_low;
        }
        CodeBytes {
            len: header.format.byte_len() as u8,
            bytes,
        }
    }

    /// Parses the text form (see [`crate::base32`] for what input is accepted).
    pub fn parse(text: &str) -> Result<Self, CodeError> {
        let text = text.as_bytes();
        if text.len() > TEXT_INPUT_MAX_LEN {
            return Err(CodeError::BadTextLength(text.len()));
        }
        let mut raw = [0u8; MAX_LEN];
        let n = base32::decode_into(text, &mut raw, |n| n == STATIC_LEN || n == ROTATING_LEN)
            .map_err(|e| match e {
                base32::DecodeError::BadSymbol { position } => CodeError::BadSymbol { position },
                base32::DecodeError::BadLength { symbols } => CodeError::BadTextLength(symbols),
                base32::DecodeError::NonCanonical => CodeError::NonCanonical,
            })?;
        Self::from_slice(&raw[..n])
    }

    /// The code's bytes: 20 or 21.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// Static or rotating.
    pub fn format(&self) -> CodeFormat {
        if self.len as usize == ROTATING_LEN {
            CodeFormat::Rotating
        } else {
            CodeFormat::Static
        }
    }

    /// Every field but the tag.
    pub fn header(&self) -> CodeHeader {
        let b = &self.bytes;
        CodeHeader {
            format: self.format(),
            key_id: b[1],
            provider: u16::from_be_bytes([b[2], b[3]]),
            partition: u16::from_be_bytes([b[4], b[5]]),
            serial: u32::from_be_bytes([b[6], b[7], b[8], b[9]]),
        }
    }

    /// Key id (byte 1).
    pub fn key_id(&self) -> u8 {
        self.bytes[1]
    }

    /// Provider id (bytes 2–3).
    pub fn provider(&self) -> u16 {
        u16::from_be_bytes([self.bytes[2], self.bytes[3]])
    }

    /// Low byte of the time step, for rotating codes.
    pub fn step_low(&self) -> Option<u8> {
        (self.format() == CodeFormat::Rotating).then_some(self.bytes[10])
    }

    /// The bytes the tag covers.
    pub fn signed_part(&self) -> &[u8] {
        &self.bytes[..self.format().signed_len()]
    }

    /// The 80-bit tag.
    pub fn tag(&self) -> &[u8; TAG_LEN] {
        let start = self.format().signed_len();
        self.bytes[start..start + TAG_LEN]
            .try_into()
            .expect("tag is TAG_LEN bytes")
    }

    /// Sets the tag (the engine signs with this).
    pub fn set_tag(&mut self, tag: &[u8; TAG_LEN]) {
        let start = self.format().signed_len();
        self.bytes[start..start + TAG_LEN].copy_from_slice(tag);
    }

    /// The text form: 32 or 34 upper-case symbols, no separators (what a QR code holds).
    pub fn to_text(&self) -> CodeText {
        let n = base32::encoded_len(self.len as usize);
        let mut buf = [0u8; ROTATING_TEXT_LEN];
        base32::encode_into(self.as_bytes(), &mut buf[..n]);
        CodeText { len: n as u8, buf }
    }
}

impl fmt::Debug for CodeBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CodeBytes({})", self.to_text().as_str())
    }
}

/// `{}` prints the text form; `{:#}` groups it in fours with hyphens, for people.
impl fmt::Display for CodeBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_text();
        if !f.alternate() {
            return f.write_str(text.as_str());
        }
        for (i, chunk) in text.as_str().as_bytes().chunks(4).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            f.write_str(std::str::from_utf8(chunk).expect("base32 is ASCII"))?;
        }
        Ok(())
    }
}

/// A code's text on the stack.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CodeText {
    /// Symbols used: 32 or 34.
    len: u8,
    /// The symbols.
    buf: [u8; ROTATING_TEXT_LEN],
}

impl CodeText {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("base32 is ASCII")
    }
}

impl fmt::Debug for CodeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(format: CodeFormat) -> CodeHeader {
        CodeHeader {
            format,
            key_id: 3,
            provider: 0xBEEF,
            partition: 7,
            serial: 0x0102_0304,
        }
    }

    #[test]
    fn lays_out_fields_big_endian() {
        let mut code = CodeBytes::unsigned(&header(CodeFormat::Static), 0);
        code.set_tag(&[0xAA; TAG_LEN]);
        assert_eq!(
            code.as_bytes(),
            &[
                1, 3, 0xBE, 0xEF, 0, 7, 1, 2, 3, 4, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
                0xAA, 0xAA
            ]
        );
        assert_eq!(code.to_text().as_str().len(), STATIC_TEXT_LEN);
        let mut rot = CodeBytes::unsigned(&header(CodeFormat::Rotating), 0x5A);
        rot.set_tag(&[0x11; TAG_LEN]);
        assert_eq!(rot.as_bytes().len(), 21);
        assert_eq!(rot.step_low(), Some(0x5A));
        assert_eq!(rot.signed_part().len(), 11);
        assert_eq!(rot.to_text().as_str().len(), ROTATING_TEXT_LEN);
        assert_eq!(rot.header(), header(CodeFormat::Rotating));
    }

    #[test]
    fn rejects_bad_lengths_and_formats_with_reasons() {
        assert_eq!(
            CodeBytes::from_slice(&[1; 19]),
            Err(CodeError::BadLength(19))
        );
        assert_eq!(CodeBytes::from_slice(&[]), Err(CodeError::BadLength(0)));
        assert_eq!(
            CodeBytes::from_slice(&[2; 20]),
            Err(CodeError::BadFormat(2))
        );
        assert_eq!(
            CodeBytes::from_slice(&[1; 21]),
            Err(CodeError::BadFormat(1))
        );
        assert_eq!(
            CodeBytes::from_slice(&[9; 20]),
            Err(CodeError::BadFormat(9))
        );
        assert!(matches!(
            CodeBytes::parse("HELLO"),
            Err(CodeError::BadTextLength(5))
        ));
        assert!(matches!(
            CodeBytes::parse(&"0".repeat(500)),
            Err(CodeError::BadTextLength(500))
        ));
        let msg = CodeBytes::parse("0U").unwrap_err().to_string();
        assert!(msg.contains("character 1"), "{msg}");
    }

    #[test]
    fn grouped_display_parses_back() {
        let code = CodeBytes::unsigned(&header(CodeFormat::Static), 0);
        let grouped = format!("{code:#}");
        assert_eq!(grouped.len(), 32 + 7);
        assert_eq!(CodeBytes::parse(&grouped).unwrap(), code);
        assert_eq!(CodeBytes::parse(&grouped.to_lowercase()).unwrap(), code);
    }

    fn any_code() -> impl Strategy<Value = CodeBytes> {
        (any::<bool>(), any::<[u8; 20]>(), any::<u8>()).prop_map(|(rot, raw, step)| {
            let format = if rot {
                CodeFormat::Rotating
            } else {
                CodeFormat::Static
            };
            let h = CodeHeader {
                format,
                key_id: raw[1],
                provider: u16::from_be_bytes([raw[2], raw[3]]),
                partition: u16::from_be_bytes([raw[4], raw[5]]),
                serial: u32::from_be_bytes([raw[6], raw[7], raw[8], raw[9]]),
            };
            let mut code = CodeBytes::unsigned(&h, step);
            code.set_tag(raw[10..20].try_into().unwrap());
            code
        })
    }

    proptest! {
        #[test]
        fn text_and_bytes_roundtrip(code in any_code()) {
            let text = code.to_text();
            prop_assert_eq!(CodeBytes::parse(text.as_str()).unwrap(), code);
            prop_assert_eq!(CodeBytes::from_slice(code.as_bytes()).unwrap(), code);
            prop_assert_eq!(CodeBytes::parse(&format!("{code:#}")).unwrap(), code);
        }

        #[test]
        fn any_symbol_change_changes_bytes_or_fails(code in any_code(), pos in 0usize..34, sym in 0usize..32) {
            let text = code.to_text();
            let mut s = text.as_str().as_bytes().to_vec();
            let pos = pos % s.len();
            prop_assume!(base32::ALPHABET[sym] != s[pos]);
            s[pos] = base32::ALPHABET[sym];
            if let Ok(other) = CodeBytes::parse(std::str::from_utf8(&s).unwrap()) {
                prop_assert_ne!(other, code);
            }
        }
    }
}
