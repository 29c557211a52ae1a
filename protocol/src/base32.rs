//! Crockford base32, the text form of feature codes.
//!
//! Upper case on output. On input: case-insensitive, `O` reads as `0`, `I` and `L` read as `1`,
//! hyphens and spaces are ignored (people group codes), and the unused low bits of the last
//! symbol must be zero, so that every byte string has exactly one text form and any other
//! symbol in any position changes the bytes.

/// The 32 symbols, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Marks a byte that is not a symbol in [`DECODE`].
const INVALID: u8 = 0xFF;
/// Marks a byte that is skipped on input (hyphen, space).
const SKIP: u8 = 0xFE;

/// Symbol value for every input byte, built at compile time.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 32 {
        let c = ALPHABET[i];
        table[c as usize] = i as u8;
        table[c.to_ascii_lowercase() as usize] = i as u8;
        i += 1;
    }
    table[b'O' as usize] = 0;
    table[b'o' as usize] = 0;
    table[b'I' as usize] = 1;
    table[b'i' as usize] = 1;
    table[b'L' as usize] = 1;
    table[b'l' as usize] = 1;
    table[b'-' as usize] = SKIP;
    table[b' ' as usize] = SKIP;
    table
};

/// Why a text did not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// A byte that is neither a symbol nor a separator, at this position of the input.
    BadSymbol { position: usize },
    /// The number of symbols does not give a whole number of the expected bytes.
    BadLength { symbols: usize },
    /// The last symbol carries bits beyond the data (a non-canonical form).
    NonCanonical,
}

/// Number of symbols needed for `bytes` bytes.
pub const fn encoded_len(bytes: usize) -> usize {
    (bytes * 8).div_ceil(5)
}

/// Writes the text of `input` into `out`, which must be exactly `encoded_len(input.len())` long.
pub fn encode_into(input: &[u8], out: &mut [u8]) {
    assert_eq!(
        out.len(),
        encoded_len(input.len()),
        "output sized for the input"
    );
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut o = 0;
    for &b in input {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out[o] = ALPHABET[((acc >> bits) & 31) as usize];
            o += 1;
        }
    }
    if bits > 0 {
        out[o] = ALPHABET[((acc << (5 - bits)) & 31) as usize];
        o += 1;
    }
    debug_assert_eq!(o, out.len());
}

/// Decodes `text` into `out` and returns the number of bytes written. `out.len()` bounds the
/// result; the decoded length must be one that `accept_len` allows.
pub fn decode_into(
    text: &[u8],
    out: &mut [u8],
    accept_len: impl Fn(usize) -> bool,
) -> Result<usize, DecodeError> {
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut symbols = 0usize;
    let mut o = 0usize;
    for (position, &c) in text.iter().enumerate() {
        let v = DECODE[c as usize];
        if v == SKIP {
            continue;
        }
        if v == INVALID {
            return Err(DecodeError::BadSymbol { position });
        }
        symbols += 1;
        acc = (acc << 5) | u32::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            // Past the end of `out` the text is too long: keep counting for the error.
            if o < out.len() {
                out[o] = (acc >> bits) as u8;
            }
            o += 1;
        }
        acc &= (1 << bits) - 1;
    }
    let bytes = symbols * 5 / 8;
    if o > out.len() || encoded_len(bytes) != symbols || !accept_len(bytes) {
        return Err(DecodeError::BadLength { symbols });
    }
    if acc != 0 {
        return Err(DecodeError::NonCanonical);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bytes: &[u8]) -> Vec<u8> {
        let mut text = vec![0u8; encoded_len(bytes.len())];
        encode_into(bytes, &mut text);
        let mut out = vec![0u8; bytes.len()];
        let n = decode_into(&text, &mut out, |n| n == bytes.len()).unwrap();
        assert_eq!(n, bytes.len());
        out
    }

    #[test]
    fn encodes_known_vector() {
        // 0x00 0x44 0x32 0x14 0xC7 = 00000 00001 00010 00011 00100 00101 00110 00111
        let mut text = [0u8; 8];
        encode_into(&[0x00, 0x44, 0x32, 0x14, 0xC7], &mut text);
        assert_eq!(&text, b"01234567");
        let mut text = [0u8; 8];
        encode_into(&[0xFF; 5], &mut text);
        assert_eq!(&text, b"ZZZZZZZZ");
    }

    #[test]
    fn roundtrips_lengths_used_by_codes() {
        let a: Vec<u8> = (0..20).map(|i| i * 13).collect();
        assert_eq!(roundtrip(&a), a);
        let b: Vec<u8> = (0..21).map(|i| 255 - i * 7).collect();
        assert_eq!(roundtrip(&b), b);
    }

    #[test]
    fn accepts_crockford_substitutions_case_and_separators() {
        let mut out = [0u8; 5];
        decode_into(b"o1-2 3i5l7", &mut out, |n| n == 5).unwrap();
        let mut expect = [0u8; 5];
        decode_into(b"01231517", &mut expect, |n| n == 5).unwrap();
        assert_eq!(out, expect);
    }

    #[test]
    fn rejects_u_and_punctuation_with_position() {
        let mut out = [0u8; 5];
        assert_eq!(
            decode_into(b"0123U567", &mut out, |n| n == 5),
            Err(DecodeError::BadSymbol { position: 4 })
        );
        assert_eq!(
            decode_into(b"01234*67", &mut out, |n| n == 5),
            Err(DecodeError::BadSymbol { position: 5 })
        );
    }

    #[test]
    fn rejects_wrong_lengths_without_overflowing() {
        let mut out = [0u8; 5];
        assert!(matches!(
            decode_into(b"0123456", &mut out, |n| n == 5),
            Err(DecodeError::BadLength { .. })
        ));
        assert!(matches!(
            decode_into(b"0123456789ABCDEFGH", &mut out, |n| n == 5),
            Err(DecodeError::BadLength { symbols: 18 })
        ));
    }

    #[test]
    fn rejects_nonzero_padding_bits() {
        // 1 byte = 2 symbols, 10 bits: the last 2 bits are padding.
        let mut out = [0u8; 1];
        assert_eq!(decode_into(b"Z0", &mut out, |n| n == 1), Ok(1));
        assert_eq!(out[0], 0xF8);
        assert_eq!(
            decode_into(b"Z1", &mut out, |n| n == 1),
            Err(DecodeError::NonCanonical)
        );
    }
}
