//! The ticket image: a ticket's feature code as a QR code, with its details in plain text
//! under it (event, seat, holder, validity), rendered as SVG (the e-ticket page) and as PNG
//! (mail, wallets, print).
//!
//! The QR holds exactly the code's symbols, with the hyphens and spaces people group it with
//! removed, so a gate reads the same text whatever grouping was printed. It is encoded:
//!
//! - in **alphanumeric mode**, on purpose: upper-case Crockford base32 is a subset of QR's
//!   45-character alphanumeric set, which costs 5.5 bits a symbol against 8 in byte mode, so a
//!   34-symbol rotating code fits version 2 (25 × 25 modules). Fewer, larger modules scan
//!   faster off a scratched phone screen held at arm's length;
//! - at error-correction level **M** (about 15 % of the codewords can be restored), the usual
//!   trade between a small symbol and surviving glare, cracks and smudges;
//! - with a **4-module quiet zone**, the minimum ISO/IEC 18004 asks for; text never enters it,
//!   so scanners find the finder patterns.
//!
//! Both images share one pixel layout: 8-pixel modules, then the text in 7 × 16-pixel
//! character cells (36 characters a line for a version-2 code). Each detail wraps at spaces
//! (a word longer than a line is broken) onto as many lines as it needs, and the image grows
//! to hold them: nothing the gateway accepts is cut (a field of [`crate::TEXT_MAX_CHARS`]
//! takes at most 13 lines; past [`TEXT_LINES_MAX`] in all the last line ends with '…'). The
//! PNG draws the text with the `font8x8` glyphs, each row doubled; the SVG uses a monospace
//! font sized to fit the same cells, so both wrap at the same character.

use std::fmt::Write as _;
use std::sync::OnceLock;

use font8x8::legacy::{BASIC_LEGACY, LATIN_LEGACY};
use qrcode::bits::Bits;
use qrcode::canvas::{Canvas, MaskPattern, Module};
use qrcode::{Color, EcLevel, Version};
use stile_protocol::base32::ALPHABET;

/// Longest code accepted, in symbols once separators are removed (a rotating code has 34).
const CODE_MAX_SYMBOLS: usize = 64;
/// Longest code text accepted, in bytes, separators included.
const CODE_INPUT_MAX_BYTES: usize = 2 * CODE_MAX_SYMBOLS;
/// Largest QR version tried. Version 4-M holds 90 alphanumeric symbols, more than
/// [`CODE_MAX_SYMBOLS`], so every accepted code fits.
const QR_VERSION_MAX: i16 = 4;
/// The error-correction level of every ticket QR.
const QR_EC_LEVEL: EcLevel = EcLevel::M;
/// Light modules around the symbol on each side.
const QUIET_ZONE_MODULES: usize = 4;
/// Side of one module, in pixels.
const MODULE_PX: usize = 8;
/// Blank space left and right of a text line, and under the last one, in pixels.
const TEXT_MARGIN_PX: usize = 6;
/// Horizontal advance of one character, in pixels. A `font8x8` glyph is 8 columns, but the
/// 8th is blank in every printable ASCII glyph except `*` and `_`, so 7 fits 36 characters on
/// a version-2 line (enough for "Valid: 2026-12-01 18:00 to 23:00 UTC").
const GLYPH_W_PX: usize = 7;
/// Pixels drawn for each of a glyph's 8 rows. Doubling evens the stroke weight: `font8x8`
/// draws vertical strokes 2 columns wide and horizontal strokes 1 row tall.
const GLYPH_ROW_PX: usize = 2;
/// Height of a drawn glyph, in pixels.
const GLYPH_H_PX: usize = 8 * GLYPH_ROW_PX;
/// Distance from the top of one text line to the top of the next, in pixels.
const LINE_PITCH_PX: usize = GLYPH_H_PX + 4;
/// Details under the QR code: event, seat, holder, validity (each on lines of its own).
const TEXT_FIELDS: usize = 4;
/// Most text lines under the QR code. Greedy wrapping fills two lines in a row with more
/// than a line's characters, so a field of n characters takes at most 2 × ⌈n / 36⌉ + 1
/// lines: 13 for the longest name, seat or holder the gateway accepts (200 characters and
/// its prefix), 42 for all four fields.
const TEXT_LINES_MAX: usize = 48;
/// SVG font size, in pixels. A monospace advance is about 0.6 em, so 11.5 px stays inside
/// [`GLYPH_W_PX`] and the SVG text fits wherever the PNG text does.
const SVG_FONT_PX: f32 = 11.5;
/// SVG text baseline below the top of its line, in pixels.
const SVG_BASELINE_PX: usize = 13;
/// Output buffer reserved for one PNG, in bytes (a version-2 ticket compresses to about 2 KiB).
const PNG_RESERVE_BYTES: usize = 4 * 1024;
/// Output buffer reserved for one SVG, in bytes, before the path (a few KiB for version 2).
const SVG_RESERVE_BYTES: usize = 1024;
/// SVG path bytes reserved per module row (about 8 runs of ~16 bytes in version 2).
const SVG_PATH_ROW_RESERVE_BYTES: usize = 128;

/// What is printed under the QR code, in plain text. Each field starts a line and wraps onto
/// more when it is longer than the image is wide; control characters print as `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TicketLabel<'a> {
    /// The event's name, e.g. "Cup Final" (printed as is).
    pub event: &'a str,
    /// Where the holder sits or stands, e.g. "Block C, Row 12, Seat 7" (printed after "Seat: ").
    pub seat: &'a str,
    /// The ticket holder's name (printed after "Holder: ").
    pub holder: &'a str,
    /// When the ticket admits, in words, e.g. "2026-12-01 18:00 to 23:00 UTC" (after "Valid: ").
    pub validity: &'a str,
}

/// Why a ticket image was not rendered.
#[derive(Debug, thiserror::Error)]
pub enum QrError {
    /// The code holds a character that is neither a code symbol nor a separator.
    #[error(
        "character {position} of the code is {found:?}, which a ticket QR cannot hold: a code is \
         upper-case Crockford base32 (0-9, A-Z without I L O U), grouped with hyphens or spaces \
         at most"
    )]
    BadSymbol {
        /// Byte offset of the character in the code as given.
        position: usize,
        /// The character.
        found: char,
    },
    /// The code holds no symbol at all.
    #[error("the code is empty: give the ticket's feature code (32 or 34 symbols)")]
    Empty,
    /// The code has more symbols than any feature code.
    #[error(
        "the code has {symbols} symbols, more than the {CODE_MAX_SYMBOLS} a ticket QR holds: \
         give the ticket's feature code (32 or 34 symbols), not another text"
    )]
    TooLong {
        /// Symbols in the code, separators not counted.
        symbols: usize,
    },
    /// The code's text, separators included, is longer than any grouped feature code.
    #[error(
        "the code is {bytes} bytes long, more than the {CODE_INPUT_MAX_BYTES} accepted: give \
         the ticket's feature code (32 or 34 symbols, hyphens or spaces between groups at most)"
    )]
    TextTooLong {
        /// Length of the code as given, in bytes.
        bytes: usize,
    },
    /// The QR encoder refused the data (not expected for a checked code).
    #[error("the QR encoder refused the code: {0}")]
    Encode(qrcode::types::QrError),
    /// The PNG encoder failed (not expected: it writes to memory).
    #[error("the PNG encoder failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// Renders the ticket image as one SVG document: white background, the QR modules as a single
/// `<path>`, the label's lines as `<text>`, labelled "Ticket QR code" and the code for screen
/// readers.
///
/// # Errors
/// [`QrError::BadSymbol`], [`QrError::Empty`], [`QrError::TooLong`] or
/// [`QrError::TextTooLong`] when `code` is not a code (see [`png()`]).
pub fn svg(code: &str, label: &TicketLabel<'_>) -> Result<String, QrError> {
    let qr = Encoded::new(code)?;
    let lines = caption(label, Layout::line_max_chars(qr.modules));
    let layout = Layout::new(qr.modules, lines.len());
    let (w, h) = (layout.width_px, layout.height_px);
    let mut out =
        String::with_capacity(SVG_RESERVE_BYTES + qr.modules * SVG_PATH_ROW_RESERVE_BYTES);
    let name = qr.symbols.as_str();
    // `write!` into a `String` cannot fail; the results are ignored on purpose.
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"Ticket QR code "
    );
    push_xml_escaped(&mut out, name);
    out.push_str("\"><title>Ticket QR code ");
    push_xml_escaped(&mut out, name);
    let _ = write!(
        out,
        "</title><rect width=\"{w}\" height=\"{h}\" fill=\"#fff\"/><path \
         transform=\"scale({MODULE_PX})\" shape-rendering=\"crispEdges\" fill=\"#000\" d=\""
    );
    for y in 0..qr.modules {
        for (x, run) in dark_runs(qr.rows[y]) {
            // "M{x} {y}h{run}v1h-{run}z", without the `fmt` machinery (hundreds of runs).
            out.push('M');
            push_decimal(&mut out, x + QUIET_ZONE_MODULES);
            out.push(' ');
            push_decimal(&mut out, y + QUIET_ZONE_MODULES);
            out.push('h');
            push_decimal(&mut out, run);
            out.push_str("v1h-");
            push_decimal(&mut out, run);
            out.push('z');
        }
    }
    let _ = write!(
        out,
        "\"/><g font-family=\"monospace\" font-size=\"{SVG_FONT_PX}\" fill=\"#000\">"
    );
    for (i, line) in lines.iter().enumerate() {
        let y = layout.line_top_px(i) + SVG_BASELINE_PX;
        let _ = write!(out, "<text x=\"{TEXT_MARGIN_PX}\" y=\"{y}\">");
        push_xml_escaped(&mut out, line);
        out.push_str("</text>");
    }
    out.push_str("</g></svg>");
    Ok(out)
}

/// Renders the ticket image as a 1-bit grayscale PNG: 8-pixel modules with a 4-module quiet
/// zone, then the label's lines in `font8x8` glyphs (a character without a glyph prints as
/// `?`). The image is taller than wide.
///
/// `code` may be grouped with hyphens and spaces; the QR holds the other characters only,
/// which must be upper-case Crockford base32 symbols.
///
/// # Errors
/// [`QrError::BadSymbol`] for any other character (lower case included), [`QrError::Empty`]
/// without a symbol, [`QrError::TooLong`] beyond 64 symbols, [`QrError::TextTooLong`] beyond
/// 128 bytes as given.
pub fn png(code: &str, label: &TicketLabel<'_>) -> Result<Vec<u8>, QrError> {
    let qr = Encoded::new(code)?;
    let lines = caption(label, Layout::line_max_chars(qr.modules));
    let layout = Layout::new(qr.modules, lines.len());
    let bitmap = draw_bitmap(&qr, &layout, &lines);
    let mut out = Vec::with_capacity(PNG_RESERVE_BYTES);
    let width = u32::try_from(layout.width_px).expect("image width is a few hundred pixels");
    let height = u32::try_from(layout.height_px).expect("image height is at most ~1200 pixels");
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::One);
    encoder.set_compression(png::Compression::Fast);
    // Rows repeat 8 times (a module) or twice (a glyph row): `Up` turns repeats into zeros,
    // which the fast deflater run-length encodes.
    encoder.set_filter(png::FilterType::Up);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(&bitmap.bits)?;
    writer.finish()?;
    Ok(out)
}

/// A code, checked and encoded: its symbols and the QR modules that hold them.
struct Encoded {
    /// The code's symbols, separators removed: exactly what the QR holds.
    symbols: Symbols,
    /// Module rows, quiet zone excluded: bit `x` of `rows[y]` is module (x, y), 1 = dark.
    rows: Lines,
    /// Modules per side, quiet zone excluded.
    modules: usize,
}

impl Encoded {
    /// Checks `code` and encodes it in alphanumeric mode at level M, in the smallest version.
    fn new(code: &str) -> Result<Self, QrError> {
        let symbols = Symbols::parse(code)?;
        let bits = alphanumeric_bits(symbols.as_bytes())?;
        let template = VersionTemplate::get(bits.version());
        let rows = template.place(bits)?;
        Ok(Encoded {
            symbols,
            rows,
            modules: template.modules,
        })
    }
}

/// Encodes `data` (QR alphanumeric characters only) in alphanumeric mode, terminator and
/// padding included, in the smallest version up to [`QR_VERSION_MAX`] that holds it at
/// [`QR_EC_LEVEL`].
fn alphanumeric_bits(data: &[u8]) -> Result<Bits, QrError> {
    for version in 1..=QR_VERSION_MAX {
        let mut bits = Bits::new(Version::Normal(version));
        let pushed = bits
            .push_alphanumeric_data(data)
            .and_then(|()| bits.push_terminator(QR_EC_LEVEL));
        match pushed {
            Ok(()) => return Ok(bits),
            Err(qrcode::types::QrError::DataTooLong) => continue,
            Err(e) => return Err(QrError::Encode(e)),
        }
    }
    Err(QrError::Encode(qrcode::types::QrError::DataTooLong))
}

/// Modules per side of the largest symbol tried, version [`QR_VERSION_MAX`].
const QR_MODULES_MAX: usize = 17 + 4 * QR_VERSION_MAX as usize;
const _: () = assert!(
    QR_MODULES_MAX + 8 <= 64,
    "a line and the finder rule's margins fit a u64"
);

/// A symbol's modules, one `u64` per row (or column): bit `i` is module `i`, 1 = dark.
type Lines = [u64; QR_MODULES_MAX];

/// The eight mask patterns, in qrcode's order (which breaks ties between equal penalties).
const MASK_PATTERNS: [MaskPattern; 8] = [
    MaskPattern::Checkerboard,
    MaskPattern::HorizontalLines,
    MaskPattern::VerticalLines,
    MaskPattern::DiagonalLines,
    MaskPattern::LargeCheckerboard,
    MaskPattern::Fields,
    MaskPattern::Diamonds,
    MaskPattern::Meadow,
];

/// What every ticket QR of one version shares, computed once with qrcode's own canvas.
///
/// qrcode's `apply_best_mask` clones the canvas eight times and scores each one module at a
/// time through boxed closures: several hundred µs for version 2, over the whole image budget.
/// Masking is an XOR, so here the masked symbol without data is kept per mask, a code's dark
/// data modules are XORed in, and the same penalty is scored on bit lines. Same symbol (a test
/// compares them), over ten times faster.
struct VersionTemplate {
    /// The QR version.
    version: Version,
    /// Modules per side.
    modules: usize,
    /// Function patterns drawn, data modules empty: the canvas each code's data is drawn into.
    functional: Canvas,
    /// Per mask pattern: the symbol with no data (function patterns, format information for
    /// that mask at level M, the mask's own bits on data modules), as rows.
    masked_rows: [Lines; MASK_PATTERNS.len()],
    /// The same, as columns.
    masked_cols: [Lines; MASK_PATTERNS.len()],
}

impl VersionTemplate {
    /// The template of `version` (1 to [`QR_VERSION_MAX`]), built on first use.
    fn get(version: Version) -> &'static VersionTemplate {
        static TEMPLATES: OnceLock<Vec<VersionTemplate>> = OnceLock::new();
        let all =
            TEMPLATES.get_or_init(|| (1..=QR_VERSION_MAX).map(VersionTemplate::new).collect());
        let Version::Normal(n) = version else {
            unreachable!("ticket codes use normal QR versions")
        };
        &all[usize::try_from(n - 1).expect("versions start at 1")]
    }

    /// Builds the template of version `n`.
    fn new(n: i16) -> Self {
        let version = Version::Normal(n);
        let modules = usize::try_from(version.width()).expect("a width is positive");
        assert!(modules <= QR_MODULES_MAX);
        let mut functional = Canvas::new(version, QR_EC_LEVEL);
        functional.draw_all_functional_patterns();
        let mut masked_rows = [[0; QR_MODULES_MAX]; MASK_PATTERNS.len()];
        let mut masked_cols = [[0; QR_MODULES_MAX]; MASK_PATTERNS.len()];
        for (i, pattern) in MASK_PATTERNS.into_iter().enumerate() {
            let mut canvas = functional.clone();
            canvas.apply_mask(pattern);
            (masked_rows[i], masked_cols[i]) = lines(&canvas, modules, Module::is_dark);
        }
        VersionTemplate {
            version,
            modules,
            functional,
            masked_rows,
            masked_cols,
        }
    }

    /// Draws the codewords of `bits` (error correction added) and applies the mask with the
    /// lowest penalty, first one on a tie: the symbol qrcode's `QrCode::with_bits` makes.
    fn place(&self, bits: Bits) -> Result<Lines, QrError> {
        debug_assert_eq!(bits.version(), self.version);
        let data = bits.into_bytes();
        let (data_codewords, ec_codewords) =
            qrcode::ec::construct_codewords(&data, self.version, QR_EC_LEVEL)
                .map_err(QrError::Encode)?;
        let mut canvas = self.functional.clone();
        canvas.draw_data(&data_codewords, &ec_codewords);
        let (data_rows, data_cols) = lines(&canvas, self.modules, |m| {
            m == Module::Unmasked(Color::Dark)
        });
        let mut best: Option<(u32, Lines)> = None;
        for i in 0..MASK_PATTERNS.len() {
            let rows = xor_lines(&self.masked_rows[i], &data_rows);
            let cols = xor_lines(&self.masked_cols[i], &data_cols);
            let score = penalty(&rows[..self.modules], &cols[..self.modules]);
            if best.is_none_or(|(best_score, _)| score < best_score) {
                best = Some((score, rows));
            }
        }
        Ok(best.expect("eight masks were scored").1)
    }
}

/// The modules of `canvas` for which `dark` holds, as rows and as columns.
fn lines(canvas: &Canvas, modules: usize, dark: impl Fn(Module) -> bool) -> (Lines, Lines) {
    let mut rows = [0; QR_MODULES_MAX];
    for (y, row) in rows.iter_mut().enumerate().take(modules) {
        for x in 0..modules {
            // Both below QR_MODULES_MAX, so the casts are exact.
            if dark(canvas.get(x as i16, y as i16)) {
                *row |= 1 << x;
            }
        }
    }
    let cols = std::array::from_fn(|x| {
        rows[..modules]
            .iter()
            .enumerate()
            .fold(0, |col, (y, row)| col | (((row >> x) & 1) << y))
    });
    (rows, cols)
}

/// `a` XOR `b`, line by line.
fn xor_lines(a: &Lines, b: &Lines) -> Lines {
    std::array::from_fn(|i| a[i] ^ b[i])
}

/// Penalty of a masked symbol, given as its rows and its columns; lower is better. The rules
/// of ISO/IEC 18004 §7.8.3 as qrcode scores them (its dark/light balance rule is linear, not
/// in 5 % steps), so the same mask wins. The finder-like rule also counts the real finder
/// patterns, the same number for every mask.
fn penalty(rows: &[u64], cols: &[u64]) -> u32 {
    let modules = rows.len();
    debug_assert_eq!(cols.len(), modules);
    let lines: u32 = rows
        .iter()
        .chain(cols)
        .map(|&line| run_penalty(line, modules) + finder_penalty(line, modules))
        .sum();
    lines + block_penalty(rows) + balance_penalty(rows)
}

/// Rule 1: each run of 5 + k modules of one colour in a line costs 3 + k.
fn run_penalty(line: u64, modules: usize) -> u32 {
    let inside = (1_u64 << modules) - 1;
    [line, !line & inside]
        .into_iter()
        .map(|same| {
            // Bit x: modules x..x+5 all of this colour (bits past the line are 0).
            let five = same & (same >> 1) & (same >> 2) & (same >> 3) & (same >> 4);
            // A run of 5 + k has k + 1 such bits and one first bit: (k + 1) + 2 = 3 + k.
            let runs = five & !(five << 1);
            five.count_ones() + 2 * runs.count_ones()
        })
        .sum()
}

/// Rule 3: each dark-light-dark×3-light-dark (1:1:3:1:1) with 4 light modules (or the edge)
/// before or after it costs 40.
fn finder_penalty(line: u64, modules: usize) -> u32 {
    /// The 7 modules of a finder pattern's middle row, bit 0 first.
    const FINDER: u64 = 0b101_1101;
    /// Length of [`FINDER`], in modules.
    const FINDER_LEN: usize = 7;
    /// Light modules wanted on one side, in modules.
    const LIGHT_LEN: usize = 4;
    // Shifted, the modules before the line's start exist and are light, as those past its end.
    let padded = line << LIGHT_LEN;
    let light = !padded;
    // Bit p: padded modules p..p+4 all light.
    let light_run = light & (light >> 1) & (light >> 2) & (light >> 3);
    // Bit p: the pattern starts at padded module p.
    let mut found = (1_u64 << (modules - FINDER_LEN + 1)) - 1;
    found <<= LIGHT_LEN;
    for k in 0..FINDER_LEN {
        let wanted = if (FINDER >> k) & 1 == 1 {
            padded
        } else {
            light
        };
        found &= wanted >> k;
    }
    let light_before = light_run << LIGHT_LEN;
    let light_after = light_run >> FINDER_LEN;
    40 * (found & (light_before | light_after)).count_ones()
}

/// Rule 2: each 2 × 2 block of one colour (overlaps counted) costs 3.
fn block_penalty(rows: &[u64]) -> u32 {
    let modules = rows.len();
    let inner = (1_u64 << (modules - 1)) - 1;
    rows.windows(2)
        .map(|pair| {
            let same_below = !(pair[0] ^ pair[1]);
            let same_right = !(pair[0] ^ (pair[0] >> 1));
            3 * (same_below & (same_below >> 1) & same_right & inner).count_ones()
        })
        .sum()
}

/// Rule 4, as qrcode has it: one point per 0.5 % of dark modules away from 50 %.
fn balance_penalty(rows: &[u64]) -> u32 {
    let modules = rows.len();
    let dark: usize = rows.iter().map(|r| r.count_ones() as usize).sum();
    let ratio = dark * 200 / (modules * modules);
    u32::try_from(ratio.abs_diff(100)).expect("at most 100")
}

/// A code's symbols, on the stack.
struct Symbols {
    /// The symbols; those past `len` are unused.
    buf: [u8; CODE_MAX_SYMBOLS],
    /// Number of symbols in `buf`.
    len: usize,
}

impl Symbols {
    /// Keeps the symbols of `code`, drops hyphens and spaces, refuses anything else.
    fn parse(code: &str) -> Result<Self, QrError> {
        if code.len() > CODE_INPUT_MAX_BYTES {
            return Err(QrError::TextTooLong { bytes: code.len() });
        }
        let mut symbols = Symbols {
            buf: [0; CODE_MAX_SYMBOLS],
            len: 0,
        };
        for (position, found) in code.char_indices() {
            match found {
                '-' | ' ' => continue,
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => {
                    if symbols.len == CODE_MAX_SYMBOLS {
                        let symbols = code.chars().filter(|c| !matches!(c, '-' | ' ')).count();
                        return Err(QrError::TooLong { symbols });
                    }
                    symbols.buf[symbols.len] = c as u8;
                    symbols.len += 1;
                }
                _ => return Err(QrError::BadSymbol { position, found }),
            }
        }
        if symbols.len == 0 {
            return Err(QrError::Empty);
        }
        Ok(symbols)
    }

    /// The symbols as bytes.
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The symbols as text.
    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("symbols are ASCII")
    }
}

/// Pixel geometry of one ticket image, shared by the SVG and the PNG.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Image width in pixels: the symbol with its quiet zone.
    width_px: usize,
    /// Image height in pixels: the symbol, then the text lines.
    height_px: usize,
    /// Text lines under the symbol.
    lines: usize,
}

impl Layout {
    /// The layout for a symbol of `modules` modules per side and `lines` lines of text.
    fn new(modules: usize, lines: usize) -> Self {
        assert!(lines <= TEXT_LINES_MAX, "the caption is capped");
        let width_px = (modules + 2 * QUIET_ZONE_MODULES) * MODULE_PX;
        let height_px = width_px + lines * LINE_PITCH_PX + TEXT_MARGIN_PX;
        Layout {
            width_px,
            height_px,
            lines,
        }
    }

    /// Characters that fit on one text line under a symbol of `modules` modules per side.
    fn line_max_chars(modules: usize) -> usize {
        let width_px = (modules + 2 * QUIET_ZONE_MODULES) * MODULE_PX;
        let chars = (width_px - 2 * TEXT_MARGIN_PX) / GLYPH_W_PX;
        assert!(chars >= 1, "a text line holds at least one character");
        chars
    }

    /// Top of text line `i`, in pixels. The text starts under the bottom quiet zone.
    fn line_top_px(&self, i: usize) -> usize {
        debug_assert!(i < self.lines);
        self.width_px + i * LINE_PITCH_PX
    }
}

/// The label's fields, each as (prefix, value).
fn label_fields<'a>(label: &TicketLabel<'a>) -> [(&'static str, &'a str); TEXT_FIELDS] {
    [
        ("", label.event),
        ("Seat: ", label.seat),
        ("Holder: ", label.holder),
        ("Valid: ", label.validity),
    ]
}

/// The text under the QR code: each field wrapped to lines of at most `max_chars`
/// characters, at most [`TEXT_LINES_MAX`] lines (the last one then ends with '…').
fn caption(label: &TicketLabel<'_>, max_chars: usize) -> Vec<String> {
    let mut lines = Vec::with_capacity(2 * TEXT_FIELDS);
    for (prefix, value) in label_fields(label) {
        wrap(prefix, value, max_chars, &mut lines);
    }
    if lines.len() > TEXT_LINES_MAX {
        lines.truncate(TEXT_LINES_MAX);
        let last = lines.last_mut().expect("TEXT_LINES_MAX > 0");
        if last.chars().count() >= max_chars {
            last.pop();
        }
        last.push('…');
    }
    lines
}

/// Appends the lines of `prefix` + `value` (trimmed, control characters as '?'), wrapped at
/// spaces to at most `max_chars` characters each; a word longer than a line is broken. Every
/// character but the spaces where lines break is kept (runs of spaces print as one).
fn wrap(prefix: &str, value: &str, max_chars: usize, out: &mut Vec<String>) {
    debug_assert!(max_chars >= 1);
    let text: String = prefix
        .chars()
        .chain(value.trim().chars())
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    let mut line = String::new();
    let mut line_chars = 0;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let word_chars = word.chars().count();
        if line_chars > 0 && line_chars + 1 + word_chars <= max_chars {
            line.push(' ');
            line.push_str(word);
            line_chars += 1 + word_chars;
            continue;
        }
        if line_chars > 0 {
            out.push(std::mem::take(&mut line));
        }
        // The word starts a line; one longer than a line fills whole lines first.
        let mut chars = word.chars().peekable();
        line_chars = 0;
        while let Some(c) = chars.next() {
            line.push(c);
            line_chars += 1;
            if line_chars == max_chars && chars.peek().is_some() {
                out.push(std::mem::take(&mut line));
                line_chars = 0;
            }
        }
    }
    if line_chars > 0 {
        out.push(line);
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(out, n / 10);
    }
    out.push(char::from(b'0' + (n % 10) as u8));
}

/// Appends `text` to `out` with the five XML special characters escaped.
fn push_xml_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// The runs of dark modules in a row, as (first column, length).
fn dark_runs(mut row: u64) -> impl Iterator<Item = (usize, usize)> {
    std::iter::from_fn(move || {
        if row == 0 {
            return None;
        }
        let start = row.trailing_zeros();
        let len = (!(row >> start)).trailing_zeros();
        row = row
            .checked_shr(start + len)
            .map_or(0, |rest| rest << (start + len));
        Some((start as usize, len as usize))
    })
}

/// A 1-bit image, rows packed most significant bit first, 1 = white (PNG grayscale order).
struct Bitmap {
    /// The packed rows, `row_bytes` each.
    bits: Vec<u8>,
    /// Bytes per row.
    row_bytes: usize,
}

impl Bitmap {
    /// An all-white bitmap.
    fn white(width_px: usize, height_px: usize) -> Self {
        let row_bytes = width_px.div_ceil(8);
        Bitmap {
            bits: vec![0xFF; row_bytes * height_px],
            row_bytes,
        }
    }

    /// Pixel row `y`, for writing.
    fn row_mut(&mut self, y: usize) -> &mut [u8] {
        &mut self.bits[y * self.row_bytes..(y + 1) * self.row_bytes]
    }

    /// Copies pixel row `y` over the `n` rows after it.
    fn repeat_row(&mut self, y: usize, n: usize) {
        let src = y * self.row_bytes..(y + 1) * self.row_bytes;
        for k in 1..=n {
            self.bits.copy_within(src.clone(), (y + k) * self.row_bytes);
        }
    }
}

/// Draws the QR symbol and the caption's lines into a fresh bitmap.
fn draw_bitmap(qr: &Encoded, layout: &Layout, lines: &[String]) -> Bitmap {
    let mut bitmap = Bitmap::white(layout.width_px, layout.height_px);
    for y in 0..qr.modules {
        let top_px = (y + QUIET_ZONE_MODULES) * MODULE_PX;
        let row = bitmap.row_mut(top_px);
        for (x, run) in dark_runs(qr.rows[y]) {
            let left_px = (x + QUIET_ZONE_MODULES) * MODULE_PX;
            darken_span(row, left_px, left_px + run * MODULE_PX);
        }
        bitmap.repeat_row(top_px, MODULE_PX - 1);
    }
    for (i, line) in lines.iter().enumerate() {
        draw_text_line(&mut bitmap, layout.line_top_px(i), line);
    }
    bitmap
}

/// Draws `line` with its top at pixel row `top_px`, one glyph cell per character.
fn draw_text_line(bitmap: &mut Bitmap, top_px: usize, line: &str) {
    for glyph_row in 0..8 {
        let y = top_px + glyph_row * GLYPH_ROW_PX;
        let row = bitmap.row_mut(y);
        for (i, c) in line.chars().enumerate() {
            let left_px = TEXT_MARGIN_PX + i * GLYPH_W_PX;
            darken_glyph_row(row, left_px, glyph(c)[glyph_row]);
        }
        bitmap.repeat_row(y, GLYPH_ROW_PX - 1);
    }
}

/// Turns pixels `x0..x1` of a packed row black.
fn darken_span(row: &mut [u8], x0: usize, x1: usize) {
    debug_assert!(x0 < x1 && x1 <= row.len() * 8);
    let (first, last) = (x0 / 8, (x1 - 1) / 8);
    let head = 0xFF_u8 >> (x0 % 8);
    let tail = 0xFF_u8 << (7 - (x1 - 1) % 8);
    if first == last {
        row[first] &= !(head & tail);
    } else {
        row[first] &= !head;
        row[first + 1..last].fill(0);
        row[last] &= !tail;
    }
}

/// Turns black the pixels of one glyph row (`font8x8` order: bit 0 is the leftmost pixel)
/// placed at `left_px` in a packed row.
fn darken_glyph_row(row: &mut [u8], left_px: usize, glyph_bits: u8) {
    let shifted = u16::from(glyph_bits.reverse_bits()) << (8 - left_px % 8);
    let [hi, lo] = shifted.to_be_bytes();
    row[left_px / 8] &= !hi;
    if let Some(byte) = row.get_mut(left_px / 8 + 1) {
        *byte &= !lo;
    }
}

/// Three dots for the '…' that ends a truncated line (`font8x8` has no glyph for it).
const ELLIPSIS_GLYPH: [u8; 8] = [0, 0, 0, 0, 0, 0, 0b0100_1001, 0];

/// The `font8x8` glyph for `c`: printable ASCII and Latin-1, '…', else the glyph for '?'.
fn glyph(c: char) -> [u8; 8] {
    match c {
        ' '..='~' => BASIC_LEGACY[c as usize],
        '\u{A0}'..='\u{FF}' => LATIN_LEGACY[c as usize - 0xA0],
        '…' => ELLIPSIS_GLYPH,
        _ => BASIC_LEGACY[usize::from(b'?')],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A static code: 32 symbols, the whole alphabet.
    const STATIC_CODE: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    /// A rotating code: 34 symbols.
    const ROTATING_CODE: &str = "ZYXWVTSRQPNMKJHGFEDCBA9876543210AB";
    /// rqrr's `ecc_level` is the format field's 2 bits, where M is `00`.
    const RQRR_ECC_LEVEL_M: u16 = 0;

    fn label() -> TicketLabel<'static> {
        TicketLabel {
            event: "Cup Final",
            seat: "Block C, Row 12, Seat 7",
            holder: "Ada Lovelace",
            validity: "2026-12-01 18:00 to 23:00 UTC",
        }
    }

    /// Decodes a PNG into (width, height, one 0..=255 gray byte per pixel).
    fn decode_png(bytes: &[u8]) -> (usize, usize, Vec<u8>) {
        let mut decoder = ::png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(::png::Transformations::EXPAND);
        let mut reader = decoder.read_info().expect("PNG header");
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).expect("PNG data");
        assert_eq!(info.color_type, ::png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, ::png::BitDepth::Eight);
        let (w, h) = (info.width as usize, info.height as usize);
        assert_eq!(info.line_size, w);
        buf.truncate(w * h);
        (w, h, buf)
    }

    /// Finds exactly one QR code in a grayscale image and decodes it.
    fn scan(w: usize, h: usize, gray: &[u8]) -> (rqrr::MetaData, String) {
        let mut image = rqrr::PreparedImage::prepare_from_greyscale(w, h, |x, y| gray[y * w + x]);
        let grids = image.detect_grids();
        assert_eq!(grids.len(), 1, "exactly one QR code in the image");
        grids[0].decode().expect("the QR code decodes")
    }

    fn scan_png(code: &str) -> (rqrr::MetaData, String) {
        let bytes = png(code, &label()).expect("renders");
        let (w, h, gray) = decode_png(&bytes);
        scan(w, h, &gray)
    }

    #[test]
    fn png_of_static_code_scans_back_to_the_code_at_most_version_2_level_m() {
        let (meta, content) = scan_png(STATIC_CODE);
        assert_eq!(content, STATIC_CODE);
        assert!(meta.version.0 <= 2, "version {}", meta.version.0);
        assert_eq!(meta.ecc_level, RQRR_ECC_LEVEL_M);
    }

    #[test]
    fn png_of_rotating_code_scans_back_to_the_code_at_version_2_level_m() {
        let (meta, content) = scan_png(ROTATING_CODE);
        assert_eq!(content, ROTATING_CODE);
        assert_eq!(meta.version.0, 2);
        assert_eq!(meta.ecc_level, RQRR_ECC_LEVEL_M);
    }

    #[test]
    fn hyphens_and_spaces_are_not_in_the_qr() {
        let grouped = "ZYXW-VTSR QPNM-KJHG FEDC-BA98-7654-3210-AB";
        let (_, content) = scan_png(grouped);
        assert_eq!(content, ROTATING_CODE);
        let svg = svg(grouped, &label()).expect("renders");
        assert!(svg.contains(&format!("aria-label=\"Ticket QR code {ROTATING_CODE}\"")));
    }

    #[test]
    fn qr_is_in_alphanumeric_mode() {
        // Mode indicator 0010 (alphanumeric), then the 9-bit count 34 = 0_0010_0010.
        let bits = alphanumeric_bits(ROTATING_CODE.as_bytes()).expect("encodes");
        assert_eq!(bits.version(), Version::Normal(2));
        let bytes = bits.into_bytes();
        assert_eq!(bytes[0], 0b0010_0001, "mode 0010, then count bits 0001");
        assert_eq!(bytes[1] >> 3, 0b00010, "count bits 00010");
    }

    /// Codes of many lengths (versions 1 to 4) and contents, from a fixed xorshift.
    fn sample_codes() -> Vec<String> {
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut codes = vec![STATIC_CODE.to_string(), ROTATING_CODE.to_string()];
        for len in [
            1,
            5,
            20,
            21,
            32,
            32,
            32,
            34,
            34,
            34,
            38,
            39,
            61,
            62,
            CODE_MAX_SYMBOLS,
        ] {
            for _ in 0..3 {
                let code = (0..len)
                    .map(|_| char::from(ALPHABET[(next() % 32) as usize]))
                    .collect();
                codes.push(code);
            }
        }
        codes
    }

    #[test]
    fn symbol_is_the_one_qrcode_with_bits_makes() {
        for code in sample_codes() {
            let ours = Encoded::new(&code).expect("encodes");
            let bits = alphanumeric_bits(code.as_bytes()).expect("encodes");
            let theirs = qrcode::QrCode::with_bits(bits, QR_EC_LEVEL).expect("encodes");
            let modules = theirs.width();
            assert_eq!(ours.modules, modules, "{code}");
            let colors = theirs.into_colors();
            for y in 0..modules {
                for x in 0..modules {
                    let dark = (ours.rows[y] >> x) & 1 == 1;
                    let expected = colors[y * modules + x] == Color::Dark;
                    assert_eq!(dark, expected, "{code}: module ({x}, {y})");
                }
            }
        }
    }

    #[test]
    fn penalty_rules_count_runs_finders_at_edges_blocks_and_balance() {
        assert_eq!(run_penalty(0, 25), 23, "one light run of 25");
        assert_eq!(run_penalty((1 << 25) - 1, 25), 23, "one dark run of 25");
        assert_eq!(
            run_penalty(0b1_1111_0000, 9),
            3,
            "4 light (free), then 5 dark"
        );
        assert_eq!(run_penalty(0b0101_0101, 8), 0);
        assert_eq!(
            finder_penalty(0b101_1101, 21),
            40,
            "at the left edge, light after"
        );
        assert_eq!(
            finder_penalty(0b101_1101 << 14, 21),
            40,
            "at the right edge"
        );
        assert_eq!(
            finder_penalty(0b1_0000_1011_1010_0001, 21),
            40,
            "4 light before"
        );
        assert_eq!(
            finder_penalty(0b1_1011_1011_0000, 21),
            0,
            "dark within 4 on both sides"
        );
        assert_eq!(block_penalty(&[0b11, 0b11]), 3);
        assert_eq!(
            block_penalty(&[0b111, 0b111, 0b000]),
            2 * 3,
            "two blocks on top"
        );
        assert_eq!(balance_penalty(&[0b11, 0b00]), 0, "half dark");
        assert_eq!(balance_penalty(&[0b11, 0b11]), 100, "all dark");
    }

    #[test]
    fn decimals() {
        let mut out = String::new();
        for n in [0, 7, 10, 33, 4096, usize::MAX] {
            out.clear();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string());
        }
    }

    #[test]
    fn dark_runs_of_a_row() {
        let runs: Vec<_> = dark_runs(0b1_1000_1110).collect();
        assert_eq!(runs, [(1, 3), (7, 2)]);
        assert_eq!(dark_runs(0).count(), 0);
        let full = (1_u64 << QR_MODULES_MAX) - 1;
        assert_eq!(dark_runs(full).collect::<Vec<_>>(), [(0, QR_MODULES_MAX)]);
    }

    #[test]
    fn png_is_taller_than_wide_and_one_bit_grayscale() {
        let bytes = png(STATIC_CODE, &label()).expect("renders");
        let decoder = ::png::Decoder::new(std::io::Cursor::new(&bytes[..]));
        let reader = decoder.read_info().expect("PNG header");
        let info = reader.info();
        assert!(info.height > info.width, "{}x{}", info.width, info.height);
        assert_eq!(info.color_type, ::png::ColorType::Grayscale);
        assert_eq!(info.bit_depth, ::png::BitDepth::One);
    }

    #[test]
    fn png_text_area_has_ink_on_every_line_and_none_in_the_quiet_zone() {
        let (w, _, gray) = decode_png(&png(STATIC_CODE, &label()).expect("renders"));
        let layout = Layout::new(25, TEXT_FIELDS);
        assert_eq!(layout.width_px, w);
        let black_in_rows = |rows: std::ops::Range<usize>| {
            rows.flat_map(|y| gray[y * w..(y + 1) * w].iter())
                .filter(|&&p| p == 0)
                .count()
        };
        let quiet_px = QUIET_ZONE_MODULES * MODULE_PX;
        assert_eq!(black_in_rows(0..quiet_px), 0, "top quiet zone");
        assert_eq!(black_in_rows(w - quiet_px..w), 0, "bottom quiet zone");
        for i in 0..TEXT_FIELDS {
            let top = layout.line_top_px(i);
            assert!(
                black_in_rows(top..top + GLYPH_H_PX) > 0,
                "line {i} is drawn"
            );
        }
    }

    #[test]
    fn svg_escapes_the_holder_and_is_labelled() {
        let label = TicketLabel {
            holder: "Zoë <O'Neil> & co",
            ..label()
        };
        let svg = svg(STATIC_CODE, &label).expect("renders");
        assert!(svg.contains(">Holder: Zoë &lt;O&apos;Neil&gt; &amp; co</text>"));
        assert!(!svg.contains("<O'Neil>"));
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains("role=\"img\""));
        assert!(svg.contains(&format!("aria-label=\"Ticket QR code {STATIC_CODE}\"")));
        assert!(svg.contains(&format!("<title>Ticket QR code {STATIC_CODE}</title>")));
        assert!(svg.contains("shape-rendering=\"crispEdges\""));
        assert_eq!(svg.matches("<path").count(), 1);
        assert_eq!(svg.matches("<text").count(), TEXT_FIELDS);
        assert!(svg.contains(">Cup Final</text>"));
        assert!(svg.contains(">Seat: Block C, Row 12, Seat 7</text>"));
    }

    /// Rebuilds the module grid from the SVG path ("M{x} {y}h{n}v1h-{n}z" runs).
    fn modules_from_svg_path(svg: &str, side: usize) -> Vec<bool> {
        let d_start = svg.find(" d=\"").expect("a path") + 4;
        let d = &svg[d_start..d_start + svg[d_start..].find('"').expect("path ends")];
        let mut dark = vec![false; side * side];
        for run in d.split('z').filter(|r| !r.is_empty()) {
            let run = run.strip_prefix('M').expect("run starts with M");
            let (x, rest) = run.split_once(' ').expect("x y");
            let (y, rest) = rest.split_once('h').expect("y h");
            let (n, _) = rest.split_once('v').expect("h v");
            let (x, y, n): (usize, usize, usize) = (
                x.parse().expect("x"),
                y.parse().expect("y"),
                n.parse().expect("n"),
            );
            for xi in x..x + n {
                dark[y * side + xi] = true;
            }
        }
        dark
    }

    #[test]
    fn svg_path_scans_back_to_the_code() {
        let svg = svg(ROTATING_CODE, &label()).expect("renders");
        let side = 25 + 2 * QUIET_ZONE_MODULES;
        let dark = modules_from_svg_path(&svg, side);
        let px_per_module = 4;
        let w = side * px_per_module;
        let gray: Vec<u8> = (0..w * w)
            .map(|i| {
                let (x, y) = (i % w / px_per_module, i / w / px_per_module);
                if dark[y * side + x] {
                    0
                } else {
                    255
                }
            })
            .collect();
        let (_, content) = scan(w, w, &gray);
        assert_eq!(content, ROTATING_CODE);
    }

    #[test]
    fn lower_case_is_refused_with_its_position() {
        let code = "0123456789abcdefGHJKMNPQRSTVWXYZ";
        for err in [svg(code, &label()).err(), png(code, &label()).err()] {
            match err {
                Some(QrError::BadSymbol { position, found }) => {
                    assert_eq!((position, found), (10, 'a'));
                }
                other => panic!("expected BadSymbol, got {other:?}"),
            }
        }
        let message = png(code, &label()).expect_err("refused").to_string();
        assert!(
            message.contains("character 10 of the code is 'a'"),
            "{message}"
        );
        assert!(message.contains("upper-case"), "{message}");
    }

    #[test]
    fn punctuation_and_excluded_letters_are_refused() {
        for (code, position, found) in [
            ("0123456789ABCDEF!HJKMNPQRSTVWXYZ", 16, '!'),
            ("0123-4567 89AB-CDEF-GHIJ", 22, 'I'),
            ("01234567.89", 8, '.'),
            ("0123456789Ü", 10, 'Ü'),
        ] {
            match png(code, &label()) {
                Err(QrError::BadSymbol {
                    position: p,
                    found: f,
                }) => {
                    assert_eq!((p, f), (position, found), "{code}")
                }
                other => panic!("{code}: expected BadSymbol, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_and_overlong_codes_are_refused() {
        assert!(matches!(png("", &label()), Err(QrError::Empty)));
        assert!(matches!(svg(" - -", &label()), Err(QrError::Empty)));
        let long = "A".repeat(CODE_MAX_SYMBOLS + 1);
        assert!(matches!(
            png(&long, &label()),
            Err(QrError::TooLong { symbols: 65 })
        ));
        let padded = "-".repeat(CODE_INPUT_MAX_BYTES) + "A";
        assert!(matches!(
            svg(&padded, &label()),
            Err(QrError::TextTooLong { bytes: 129 })
        ));
        let longest = "Z".repeat(CODE_MAX_SYMBOLS);
        assert!(
            png(&longest, &label()).is_ok(),
            "the longest code still fits"
        );
    }

    fn wrapped(prefix: &str, value: &str, max_chars: usize) -> Vec<String> {
        let mut out = Vec::new();
        wrap(prefix, value, max_chars, &mut out);
        out
    }

    #[test]
    fn long_details_wrap_at_spaces_and_lose_no_character() {
        assert_eq!(
            wrapped("Valid: ", "2026-12-01 18:00 to 23:00 UTC", 12),
            ["Valid:", "2026-12-01", "18:00 to", "23:00 UTC"]
        );
        assert_eq!(wrapped("Seat: ", "  A1\n", 12), ["Seat: A1"], "trimmed");
        assert_eq!(
            wrapped("", "tab\there", 12),
            ["tab?here"],
            "control characters as '?'"
        );
        assert_eq!(
            wrapped("", "12345", 5),
            ["12345"],
            "exactly full is one line"
        );
        assert_eq!(
            wrapped("", "abcdefghijkl mn", 5),
            ["abcde", "fghij", "kl mn"],
            "a word longer than a line is broken"
        );
        // Whatever the text, every line fits and the characters are all there, in order.
        let text = "Nachtkonzert der Wiener Philharmoniker: Bruckner, Symphonie Nr. 8 \
                    c-Moll (Fassung 1890), Dirigent Christian Thielemann, Großer Saal";
        for max in [1, 7, 36] {
            let lines = wrapped("Event: ", text, max);
            assert!(lines.iter().all(|l| l.chars().count() <= max), "{lines:?}");
            let kept: String = lines.concat().chars().filter(|c| *c != ' ').collect();
            let given: String = format!("Event: {text}")
                .chars()
                .filter(|c| *c != ' ')
                .collect();
            assert_eq!(kept, given);
        }

        assert_eq!(Layout::line_max_chars(25), 36, "version 2");
        let svg = svg(ROTATING_CODE, &label()).expect("renders");
        assert!(
            svg.contains(">Valid: 2026-12-01 18:00 to 23:00 UTC</text>"),
            "fits exactly"
        );
        let long = TicketLabel {
            validity: "2026-12-01 18:00 to 2026-12-02 02:00 UTC",
            ..label()
        };
        let two = super::svg(ROTATING_CODE, &long).expect("renders");
        assert!(two.contains(">Valid: 2026-12-01 18:00 to</text>"), "{two}");
        assert!(two.contains(">2026-12-02 02:00 UTC</text>"), "{two}");
        assert!(!two.contains('…'), "nothing is cut: {two}");
        assert_eq!(two.matches("<text").count(), TEXT_FIELDS + 1);
    }

    #[test]
    fn the_longest_details_the_gateway_accepts_are_printed_whole() {
        let long = "W".repeat(crate::TEXT_MAX_CHARS);
        let worst = "a ".to_string() + &"b".repeat(35) + " ";
        let worst = worst.repeat(crate::TEXT_MAX_CHARS / worst.len());
        let label = TicketLabel {
            event: &long,
            seat: &worst,
            holder: &worst,
            validity: "2026-12-01 18:00 to 2026-12-02 02:00 UTC, 1 d from first entry",
        };
        let lines = caption(&label, Layout::line_max_chars(25));
        assert!(lines.len() <= TEXT_LINES_MAX, "{}", lines.len());
        assert!(!lines.concat().contains('…'), "{lines:?}");
        // Past the cap (text the gateway never accepts), the last line says it goes on.
        let endless = "x ".repeat(2_000);
        let capped = caption(
            &TicketLabel {
                event: &endless,
                ..label
            },
            36,
        );
        assert_eq!(capped.len(), TEXT_LINES_MAX);
        assert!(capped[TEXT_LINES_MAX - 1].ends_with('…'));
        assert!(capped.iter().all(|l| l.chars().count() <= 36));
    }

    #[test]
    fn wrapped_lines_stay_inside_the_png_and_the_code_still_scans() {
        let long = TicketLabel {
            event: &"W".repeat(200),
            ..label()
        };
        let bytes = png(ROTATING_CODE, &long).expect("renders");
        let (w, h, gray) = decode_png(&bytes);
        let lines = caption(&long, Layout::line_max_chars(25));
        assert_eq!(
            lines.len(),
            6 + 3,
            "200 W on 6 lines, then seat, holder, validity"
        );
        let layout = Layout::new(25, lines.len());
        assert_eq!(h, layout.height_px);
        for i in 0..lines.len() {
            let top = layout.line_top_px(i);
            let ink = (top..top + GLYPH_H_PX)
                .flat_map(|y| gray[y * w..(y + 1) * w].iter())
                .filter(|&&p| p == 0)
                .count();
            assert!(ink > 0, "line {i} is drawn");
            for y in top..top + GLYPH_H_PX {
                let row = &gray[y * w..(y + 1) * w];
                assert!(
                    row[..TEXT_MARGIN_PX].iter().all(|&p| p == 255),
                    "left margin, row {y}"
                );
                assert!(
                    row[w - TEXT_MARGIN_PX..].iter().all(|&p| p == 255),
                    "right margin, row {y}"
                );
            }
        }
        assert_eq!(scan(w, h, &gray).1, ROTATING_CODE);
    }

    #[test]
    fn characters_without_a_glyph_print_as_question_mark() {
        let question = BASIC_LEGACY[usize::from(b'?')];
        assert_eq!(glyph('€'), question);
        assert_eq!(glyph('\u{1F600}'), question);
        assert_ne!(glyph('ë'), question);
        assert_ne!(glyph('ë'), [0; 8], "Latin-1 letters have glyphs");
        assert_ne!(glyph('A'), glyph('B'));
    }

    #[test]
    fn darken_span_touches_exactly_the_span() {
        for (x0, x1) in [(0, 1), (0, 8), (3, 5), (7, 9), (5, 21), (8, 24)] {
            let mut row = [0xFF_u8; 3];
            darken_span(&mut row, x0, x1);
            for x in 0..24 {
                let black = row[x / 8] & (0x80 >> (x % 8)) == 0;
                assert_eq!(black, (x0..x1).contains(&x), "span {x0}..{x1}, pixel {x}");
            }
        }
    }

    #[test]
    fn glyph_rows_land_at_their_pixel_offset() {
        for left in [0, 3, 8, 13] {
            let mut row = [0xFF_u8; 3];
            darken_glyph_row(&mut row, left, 0b1000_0001);
            for x in 0..24 {
                let black = row[x / 8] & (0x80 >> (x % 8)) == 0;
                assert_eq!(black, x == left || x == left + 7, "left {left}, pixel {x}");
            }
        }
    }
}
