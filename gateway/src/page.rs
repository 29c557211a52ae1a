//! The live e-ticket page: `GET /t/{code}`, its assets, and the page for a link that leads
//! nowhere.
//!
//! The HTML is the askama template `templates/ticket.html`, compiled in and filled by
//! [`ticket_page`]; askama escapes every value for HTML (the JSON data block is escaped for
//! its `<script>` context instead, and marked safe). Times are rendered in UTC inside
//! `<time datetime title>` elements (the instant stays in both attributes) and the script
//! redraws them in the holder's own time zone, with the date. The script (`ticket.js`)
//! follows the ticket live over server-sent events, remembers every state it learns in
//! `localStorage`, swaps the QR image at the server's time steps for rotating codes, and runs
//! the staff check-in control. The service worker (`sw.js`) keeps the page, its assets and
//! the QR image for offline use. No script is inline: the content security policy allows
//! none.
//!
//! Element ids a browser can rely on: `ticket` (the `<main>`, with `data-voided="true|false"`
//! and `data-source="network"`, which the service worker turns into `"cache"`), `state`
//! (`role="status"`, `data-state`), `state-detail`, `qr-img`, `rotate`, `rotate-countdown`,
//! `live`, `details`, `detail-organiser`, `detail-starts`, `detail-validity`, `detail-code`,
//! `ticket-data` (the JSON block); the staff check-in control: `staff-open`, `staff-form`,
//! `staff-gate`, `staff-pin`, `staff-next`, `staff-confirm`, `staff-confirm-text`,
//! `staff-confirm-yes`, `staff-cancel`, `staff-result` (`data-outcome`), `staff-result-word`,
//! `staff-result-detail`. The page for a link that leads nowhere has `<main id="missing">`.

use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::OffsetDateTime;

/// The page's script, served at `/static/ticket.js`.
pub const TICKET_JS: &str = include_str!("../assets/ticket.js");
/// The page's style sheet, served at `/static/ticket.css`.
pub const TICKET_CSS: &str = include_str!("../assets/ticket.css");
/// The service worker, served at `/sw.js` with `Service-Worker-Allowed: /`.
pub const SW_JS: &str = include_str!("../assets/sw.js");
/// The icon of every page, served at `/favicon.svg` (and `/favicon.ico`, where browsers look
/// unasked).
pub const FAVICON_SVG: &str = include_str!("../assets/favicon.svg");

/// Symbols per group when the code is shown for reading (`ABCD-EFGH-…`).
const CODE_GROUP_LEN: usize = 4;

/// Everything the page shows at render time.
#[derive(Debug, Clone, Copy)]
pub struct PageData<'a> {
    /// What the page's URLs name: a static ticket's code, or a rotating ticket's page token.
    pub id: &'a str,
    /// The code shown (grouped by four) on the page; `None` for a rotating ticket, whose
    /// minted code must not be shown (it would lead a screenshot to this page).
    pub code: Option<&'a str>,
    /// Name of the event.
    pub event: &'a str,
    /// Name of the provider selling it: the organiser.
    pub organiser: &'a str,
    /// Name of the venue.
    pub venue: &'a str,
    /// When the event starts, RFC 3339.
    pub starts_at: &'a str,
    /// Seat, block or standing area.
    pub seat: &'a str,
    /// Name of the ticket holder.
    pub holder: &'a str,
    /// Not valid before, RFC 3339.
    pub valid_from: Option<&'a str>,
    /// Not valid after, RFC 3339.
    pub valid_until: Option<&'a str>,
    /// Valid this long from the first scan, seconds.
    pub valid_for_s: Option<u32>,
    /// The ticket's state: `valid`, `used`, `revoked`, `transferred`, `expired` or `void`.
    pub state: &'a str,
    /// When the ticket was used (RFC 3339, as in the JSON API), if it was.
    pub used_at: Option<&'a str>,
    /// The gate that admitted the ticket, if it was used.
    pub gate: Option<u16>,
    /// That gate's name, if it has one.
    pub gate_name: Option<&'a str>,
    /// The ticket was transferred (this code is void); the new code is never shown here.
    pub transferred: bool,
    /// Whether the code rotates (changes every `step_s` seconds).
    pub rotating: bool,
    /// Seconds per time step of a rotating code; must be above 0 when `rotating`.
    pub step_s: u32,
    /// The server's clock at render time, in milliseconds since the Unix epoch.
    pub server_unix_ms: u64,
}

/// An instant as the page shows it before its script runs: in UTC, with the RFC 3339 text the
/// script redraws it from in the holder's time zone.
#[derive(Debug, Clone)]
struct Moment {
    /// RFC 3339, for `datetime` and `title`.
    iso: String,
    /// `Tue 1 Dec 2026, 18:00 UTC`.
    utc: String,
    /// `minutes` or `seconds`: what the script shows (`data-local`).
    precision: &'static str,
}

impl Moment {
    /// `iso` for people, to the minute (or the second); text that is no RFC 3339 time is
    /// shown as it is.
    fn new(iso: &str, seconds: bool) -> Moment {
        let utc = OffsetDateTime::parse(iso, &Rfc3339)
            .ok()
            .and_then(|t| {
                let t = t.to_offset(time::UtcOffset::UTC);
                match seconds {
                    true => t.format(format_description!(
                        "[weekday repr:short] [day padding:none] [month repr:short] [year], \
                         [hour]:[minute]:[second] UTC"
                    )),
                    false => t.format(format_description!(
                        "[weekday repr:short] [day padding:none] [month repr:short] [year], \
                         [hour]:[minute] UTC"
                    )),
                }
                .ok()
            })
            .unwrap_or_else(|| iso.to_owned());
        Moment {
            iso: iso.to_owned(),
            utc,
            precision: if seconds { "seconds" } else { "minutes" },
        }
    }
}

/// The page's template and the values it shows, each escaped by askama where it goes.
#[derive(askama::Template)]
#[template(path = "ticket.html")]
struct TicketHtml<'a> {
    /// Name of the event.
    event: &'a str,
    /// The organiser's name.
    organiser: &'a str,
    /// Name of the venue.
    venue: &'a str,
    /// When the event starts.
    starts: Moment,
    /// Seat, block or standing area.
    seat: &'a str,
    /// The holder's name.
    holder: &'a str,
    /// Not valid before.
    valid_from: Option<Moment>,
    /// Not valid after.
    valid_until: Option<Moment>,
    /// Validity from the first scan, in words (`24 h`).
    valid_for: Option<String>,
    /// The state's name (`data-state`).
    state: &'a str,
    /// The state's words.
    state_text: &'a str,
    /// The ticket was passed on: the detail says so.
    transferred: bool,
    /// When it was used (state `used`).
    used_at: Option<Moment>,
    /// The gate that admitted it, in words: `gate 3 (North)` (state `used`).
    gate_text: Option<String>,
    /// Whether the code can never open a gate again.
    voided: bool,
    /// The QR image's URL.
    qr_src: String,
    /// The code named in the image's alternative text.
    code_label: &'a str,
    /// The code in groups of four, or what a rotating ticket shows instead.
    code_grouped: String,
    /// Whether the rotation line is hidden (a static code, or a voided one).
    rotate_hidden: bool,
    /// Seconds left in the current step.
    rotate_left_s: u64,
    /// Seconds per step.
    step_s: u32,
    /// The JSON block, already escaped for its `<script>` element.
    data_json: String,
}

/// Renders the e-ticket page for `d`.
pub fn ticket_page(d: &PageData<'_>) -> String {
    use askama::Template;
    debug_assert!(
        state_label(d.state).is_some(),
        "unknown ticket state {:?}",
        d.state
    );
    debug_assert!(
        !d.rotating || d.step_s > 0,
        "a rotating code needs a time step"
    );
    let rotating = rotation(d);
    let mut qr_src = String::from("/v1/tickets/");
    encode_path_segment(&mut qr_src, d.id);
    qr_src.push_str("/qr.svg");
    if let Some((step, _)) = rotating {
        let _ = write!(qr_src, "?step={step}");
    }
    let mut data_json_escaped = String::new();
    escape_script_json(&mut data_json_escaped, &data_json(d));
    let used = d.state == "used" && !d.transferred;
    TicketHtml {
        event: d.event,
        organiser: d.organiser,
        venue: d.venue,
        starts: Moment::new(d.starts_at, false),
        seat: d.seat,
        holder: d.holder,
        valid_from: d.valid_from.map(|t| Moment::new(t, false)),
        valid_until: d.valid_until.map(|t| Moment::new(t, false)),
        valid_for: d.valid_for_s.map(duration_words),
        state: d.state,
        state_text: state_label(d.state).unwrap_or("Unknown"),
        transferred: d.transferred,
        used_at: d.used_at.filter(|_| used).map(|t| Moment::new(t, true)),
        gate_text: d.gate.filter(|_| used).map(|g| gate_words(g, d.gate_name)),
        voided: is_voided(d.state),
        qr_src,
        code_label: d.code.unwrap_or("(rotating)"),
        code_grouped: match d.code {
            Some(code) => group_code(code),
            None => "changes with the QR".to_owned(),
        },
        rotate_hidden: rotating.is_none() || is_voided(d.state),
        rotate_left_s: rotating.map_or(0, |(_, left_s)| left_s),
        step_s: d.step_s,
        data_json: data_json_escaped,
    }
    .render()
    .expect("the ticket page renders: every value is a string or a number")
}

/// Why a ticket link leads nowhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The link holds no whole code or page token: cut short or mistyped (400).
    Malformed,
    /// The link is well formed, but no ticket has it (404).
    Unknown,
}

/// The page for a link that leads nowhere, with the ticket page's look.
#[derive(askama::Template)]
#[template(path = "missing.html")]
struct MissingHtml {
    /// The heading and title.
    title: &'static str,
    /// What happened.
    text: &'static str,
    /// The HTTP status it is served with.
    status: u16,
}

/// Renders the page that says a ticket link (of a page or an image) leads nowhere.
pub fn missing_page(why: Missing) -> String {
    use askama::Template;
    let (title, text, status) = match why {
        Missing::Malformed => (
            "This ticket link is incomplete",
            "The link does not hold a whole ticket code or page link: it was probably cut \
             short or mistyped when it was copied.",
            400,
        ),
        Missing::Unknown => (
            "Ticket not found",
            "No ticket has this link. It may have been mistyped, or it is a code read from \
             a screen, which opens no page.",
            404,
        ),
    };
    MissingHtml {
        title,
        text,
        status,
    }
    .render()
    .expect("the missing page renders: every value is a string or a number")
}

/// For a rotating code: the server's current time step and the whole seconds left in it.
fn rotation(d: &PageData<'_>) -> Option<(u64, u64)> {
    if !d.rotating || d.step_s == 0 {
        return None;
    }
    let step_ms = u64::from(d.step_s) * 1000;
    let left_ms = step_ms - d.server_unix_ms % step_ms;
    Some((d.server_unix_ms / step_ms, left_ms.div_ceil(1000)))
}

/// The words shown for a state, or `None` for a state the page does not know.
fn state_label(state: &str) -> Option<&'static str> {
    match state {
        "valid" => Some("Valid"),
        "used" => Some("Used \u{2014} voided"),
        "revoked" => Some("Revoked \u{2014} voided"),
        "transferred" => Some("Transferred"),
        "expired" => Some("Expired"),
        "void" => Some("Void \u{2014} no longer held"),
        _ => None,
    }
}

/// Whether a code in this state can never open a gate again (until an undo).
fn is_voided(state: &str) -> bool {
    matches!(state, "used" | "revoked" | "transferred" | "void")
}

/// `gate 3 (North)`, or `gate 3` for a gate without a name; the same words as ticket.js.
pub fn gate_words(gate: u16, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("gate {gate} ({name})"),
        None => format!("gate {gate}"),
    }
}

/// A validity from the first scan in words: `1 d`, `24 h` is `1 d`, `90 min`, `45 s`.
fn duration_words(s: u32) -> String {
    match s {
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3_600 == 0 => format!("{} h", s / 3_600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

/// The code in groups of four for reading: `ABCDEFGHJK` → `ABCD-EFGH-JK`.
fn group_code(code: &str) -> String {
    let mut out = String::with_capacity(code.len() + code.len() / CODE_GROUP_LEN);
    let symbols = code.chars().filter(|c| *c != '-' && !c.is_whitespace());
    for (i, c) in symbols.enumerate() {
        if i > 0 && i % CODE_GROUP_LEN == 0 {
            out.push('-');
        }
        out.push(c);
    }
    out
}

/// The JSON block the script starts from.
fn data_json(d: &PageData<'_>) -> String {
    serde_json::json!({
        "code": d.id,
        "state": d.state,
        "used_at": d.used_at,
        "gate": d.gate,
        "gate_name": d.gate_name,
        "transferred": d.transferred,
        "rotating": d.rotating,
        "step_s": d.step_s,
        "server_unix_ms": d.server_unix_ms,
    })
    .to_string()
}

/// Appends JSON for a `<script>` element: `<`, `>` and `&` (only ever inside strings) become
/// `\u` escapes, so no `</script>` or `<!--` can end or change the element.
fn escape_script_json(out: &mut String, json: &str) {
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            _ => out.push(c),
        }
    }
}

/// Appends `s` percent-encoded as one URL path segment (unreserved characters stay).
fn encode_path_segment(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

    fn data() -> PageData<'static> {
        PageData {
            id: CODE,
            code: Some(CODE),
            event: "Night & Day",
            organiser: "Arena Events",
            venue: "Hall 1",
            starts_at: "2025-06-01T19:30:00Z",
            seat: "Block C, row 4, seat 12",
            holder: "Ada Lovelace",
            valid_from: Some("2025-06-01T17:00:00Z"),
            valid_until: Some("2025-06-01T23:59:00Z"),
            valid_for_s: None,
            state: "valid",
            used_at: None,
            gate: None,
            gate_name: None,
            transferred: false,
            rotating: false,
            step_s: 30,
            server_unix_ms: 1_748_799_730_250,
        }
    }

    /// The text of the first element with `id`, from its opening tag to its closing tag.
    fn element<'a>(html: &'a str, id: &str) -> &'a str {
        let at = html.find(&format!("id=\"{id}\"")).expect("element present");
        let start = html[..at].rfind('<').unwrap();
        let end = at + html[at..].find("</").unwrap();
        &html[start..end]
    }

    /// The text inside the first element with `id` (a `tag`), its child elements' tags
    /// removed.
    fn text_of(html: &str, id: &str, tag: &str) -> String {
        let at = html.find(&format!("id=\"{id}\"")).expect("element present");
        let open_end = at + html[at..].find('>').unwrap() + 1;
        let close = open_end + html[open_end..].find(&format!("</{tag}>")).unwrap();
        let mut text = String::new();
        let mut in_tag = false;
        for c in html[open_end..close].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        text
    }

    /// Whether some tag has an `on…=` attribute.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let name: String = html[i + 3..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            !name.is_empty() && html[i + 3 + name.len()..].starts_with('=')
        })
    }

    fn data_block(html: &str) -> serde_json::Value {
        let open = r#"<script type="application/json" id="ticket-data">"#;
        let start = html.find(open).expect("data block present") + open.len();
        let end = start + html[start..].find("</script>").unwrap();
        let text = &html[start..end];
        assert!(
            !text.contains(['<', '>', '&']),
            "nothing the HTML parser reads: {text}"
        );
        serde_json::from_str(text).expect("data block is JSON")
    }

    #[test]
    fn holder_is_html_escaped() {
        let d = PageData {
            holder: "<script>alert(1)</script>",
            ..data()
        };
        let html = ticket_page(&d);
        assert!(!html.contains("<script>alert(1)</script>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("Night &amp; Day"));
    }

    #[test]
    fn used_state_shows_voided_with_time_and_gate() {
        let d = PageData {
            state: "used",
            used_at: Some("2025-06-01T18:42:10Z"),
            gate: Some(3),
            ..data()
        };
        let html = ticket_page(&d);
        let state = element(&html, "state");
        assert!(state.contains(r#"role="status""#), "{state}");
        assert!(state.contains(r#"aria-live="polite""#), "{state}");
        assert!(state.contains(r#"data-state="used""#), "{state}");
        assert!(state.ends_with(">Used \u{2014} voided"), "{state}");
        assert_eq!(
            text_of(&html, "state-detail", "p"),
            "Used Sun 1 Jun 2025, 18:42:10 UTC at gate 3"
        );
        // The instant stays in the element the script redraws in the holder's time zone.
        assert!(html.contains(
            r#"Used <time datetime="2025-06-01T18:42:10Z" title="2025-06-01T18:42:10Z" data-local="seconds">"#
        ));
        assert!(element(&html, "ticket").contains(r#"data-voided="true""#));
        let named = ticket_page(&PageData {
            gate_name: Some("North <Stand>"),
            ..d
        });
        assert!(
            text_of(&named, "state-detail", "p").ends_with(" at gate 3 (North &lt;Stand&gt;)"),
            "{named}"
        );
    }

    #[test]
    fn times_are_utc_until_the_script_draws_them_in_local_time() {
        let html = ticket_page(&data());
        assert_eq!(
            text_of(&html, "detail-starts", "dd"),
            "Sun 1 Jun 2025, 19:30 UTC"
        );
        assert!(element(&html, "detail-starts").contains(
            r#"<time datetime="2025-06-01T19:30:00Z" title="2025-06-01T19:30:00Z" data-local="minutes">"#
        ));
        assert_eq!(
            text_of(&html, "detail-validity", "dd"),
            "from Sun 1 Jun 2025, 17:00 UTC until Sun 1 Jun 2025, 23:59 UTC"
        );
        let open = ticket_page(&PageData {
            valid_from: None,
            valid_until: None,
            valid_for_s: Some(86_400),
            ..data()
        });
        assert_eq!(
            text_of(&open, "detail-validity", "dd"),
            "any time, 1 d from first entry"
        );
        let until = ticket_page(&PageData {
            valid_from: None,
            ..data()
        });
        assert_eq!(
            text_of(&until, "detail-validity", "dd"),
            "until Sun 1 Jun 2025, 23:59 UTC"
        );
        assert_eq!(text_of(&html, "detail-organiser", "dd"), "Arena Events");
        assert!(TICKET_JS.contains("querySelectorAll('time[data-local]')"));
    }

    #[test]
    fn a_link_that_leads_nowhere_gets_a_page_that_says_so() {
        for (why, heading) in [
            (Missing::Malformed, "This ticket link is incomplete"),
            (Missing::Unknown, "Ticket not found"),
        ] {
            let html = missing_page(why);
            assert!(html.starts_with("<!doctype html>"), "{html}");
            assert!(
                html.contains(&format!("<h1 class=\"event\">{heading}</h1>")),
                "{html}"
            );
            assert!(html.contains(r#"<link rel="icon" href="/favicon.svg""#));
            assert!(html.contains(r#"<meta name="viewport""#));
            assert!(!html.contains("<script"), "no script at all");
        }
        assert!(FAVICON_SVG.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn valid_state_is_not_voided_and_has_no_detail() {
        let html = ticket_page(&data());
        assert!(element(&html, "state").contains(r#"data-state="valid""#));
        assert!(element(&html, "state").ends_with(">Valid"));
        assert!(element(&html, "state-detail").ends_with("\">"));
        assert!(element(&html, "ticket").contains(r#"data-voided="false""#));
    }

    #[test]
    fn transferred_ticket_says_it_was_replaced() {
        let d = PageData {
            state: "transferred",
            transferred: true,
            ..data()
        };
        let html = ticket_page(&d);
        assert!(!html.contains("successor"), "no new code to show");
        assert!(!html.contains("Revoked"), "a transfer is not a revocation");
        assert!(element(&html, "state").contains(r#"data-state="transferred""#));
        assert!(element(&html, "state").ends_with(">Transferred"));
        assert_eq!(
            text_of(&html, "state-detail", "p"),
            "Passed on to a new holder: this code opens no gate"
        );
        assert!(element(&html, "ticket").contains(r#"data-voided="true""#));
        assert!(element(&html, "state-detail")
            .ends_with(">Passed on to a new holder: this code opens no gate"));
    }

    #[test]
    fn script_registers_the_service_worker_at_root_scope() {
        assert!(TICKET_JS.contains("register('/sw.js', { scope: '/' })"));
        assert!(TICKET_JS.contains("new EventSource('/t/' + codeUrl + '/events')"));
        assert!(SW_JS.contains("var CACHE = 'stile-v1';"));
    }

    #[test]
    fn data_block_parses_and_carries_code_and_server_time() {
        let d = PageData {
            state: "used",
            used_at: Some("</script><!--"),
            gate: Some(7),
            transferred: true,
            ..data()
        };
        let html = ticket_page(&d);
        let v = data_block(&html);
        assert_eq!(v["code"], CODE);
        assert_eq!(v["server_unix_ms"], 1_748_799_730_250u64);
        assert_eq!(v["state"], "used");
        assert_eq!(v["used_at"], "</script><!--", "escaped, not cut short");
        assert_eq!(v["gate"], 7);
        assert_eq!(v["transferred"], true);
        assert_eq!(v["rotating"], false);
        assert!(!html.contains("</script><!--"));
    }

    #[test]
    fn page_is_accessible_and_links_its_assets() {
        let html = ticket_page(&data());
        assert!(html.starts_with("<!doctype html>\n<html lang=\"en\">"));
        assert!(html.contains("<title>Ticket: Night &amp; Day (Block C, row 4, seat 12)</title>"));
        assert!(html.contains("<main id=\"ticket\""));
        assert!(html.contains(r#"<script src="/static/ticket.js" defer></script>"#));
        assert!(html.contains(r#"<link rel="stylesheet" href="/static/ticket.css">"#));
        let img = format!(
            r#"<img id="qr-img" src="/v1/tickets/{CODE}/qr.svg" alt="QR code of ticket {CODE}">"#
        );
        assert!(html.contains(&img), "{html}");
        assert!(!html.contains("{{"), "every placeholder filled");
        assert!(!has_inline_handler(&html), "no inline event handlers");
    }

    #[test]
    fn rotating_ticket_page_shows_no_code_and_links_by_its_page_token() {
        let d = PageData {
            id: "tk_0123abcd",
            code: None,
            rotating: true,
            ..data()
        };
        let html = ticket_page(&d);
        assert!(!html.contains(CODE), "the minted code is not on the page");
        assert!(html.contains("/v1/tickets/tk_0123abcd/qr.svg?step="));
        assert_eq!(data_block(&html)["code"], "tk_0123abcd");
    }

    #[test]
    fn code_is_grouped_by_four_for_reading() {
        let html = ticket_page(&data());
        let grouped = "0123-4567-89AB-CDEF-GHJK-MNPQ-RSTV-WXYZ";
        assert!(element(&html, "detail-code").ends_with(&format!("><code>{grouped}")));
        assert_eq!(group_code("ABCD-EFGHJK"), "ABCD-EFGH-JK");
        assert_eq!(group_code("ABCD"), "ABCD");
    }

    #[test]
    fn static_code_hides_rotation_and_rotating_code_shows_step_and_countdown() {
        let html = ticket_page(&data());
        assert!(element(&html, "rotate").contains(" hidden>"));
        assert!(!html.contains("?step="));

        // 1_748_799_730_250 ms is 10.25 s into a 30 s step: 19.75 s left, shown as 20.
        let d = PageData {
            rotating: true,
            ..data()
        };
        let html = ticket_page(&d);
        let step = 1_748_799_730_250u64 / 30_000;
        assert!(html.contains(&format!("/qr.svg?step={step}\"")));
        assert!(!element(&html, "rotate").contains(" hidden"));
        assert!(element(&html, "rotate-countdown").ends_with(">new code in 20 s"));
    }

    #[test]
    fn code_in_urls_is_percent_encoded() {
        let d = PageData {
            id: "AB/\"<x>",
            code: Some("AB/\"<x>"),
            ..data()
        };
        let html = ticket_page(&d);
        assert!(html.contains(r#"src="/v1/tickets/AB%2F%22%3Cx%3E/qr.svg""#));
        assert!(html.contains(r#"alt="QR code of ticket AB/&quot;&lt;x&gt;""#));
    }
}
