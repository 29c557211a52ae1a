//! The e-ticket page in headless Chromium, driven over WebDriver (chromedriver): it shows
//! valid, turns used after a check-in without a reload, and, with the gateway gone (the
//! network cut) and the page reopened, the service worker's copy still shows it voided. In a
//! phone-sized window it shows times in the holder's time zone, gate names, "Transferred",
//! the page for a link that leads nowhere, and staff check-in with a gate's PIN.
//!
//! Needs Chromium (`chromium` or `chromium-browser`) and `chromedriver` on `PATH`: `cargo
//! xtask test` installs them; without them a test fails, or with `STILE_SKIP_MISSING_TOOLS=1`
//! says it skipped (see [`crate::support::tool`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{json_of, Fixture};

/// Chromium and chromedriver, found on `PATH`; `None`: the test skips (see
/// [`crate::support::tool`]).
fn browser_tools() -> Option<(PathBuf, PathBuf)> {
    let chromium = crate::support::tool(&["chromium", "chromium-browser"], "chromium")?;
    let driver = crate::support::tool(&["chromedriver"], "chromium-driver")?;
    Some((chromium, driver))
}

/// A chromedriver process and one browser session.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let (chromium, chromedriver) = browser_tools().expect("the test checked its tools");
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let (s, v) = json_of(
            http.post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(s, 200, "new session: {v}");
        let session = v["value"]["sessionId"].as_str().unwrap().to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn cmd(&self, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}/{path}", self.base, self.session);
        let (s, v) = json_of(self.http.post(url).json(&body).send().await.unwrap()).await;
        assert_eq!(s, 200, "{path}: {v}");
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd("url", json!({"url": url})).await;
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.cmd("execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// Runs an async script that calls `arguments[0]` with its result.
    async fn eval_async(&self, script: &str) -> Value {
        self.cmd("execute/async", json!({"script": script, "args": []}))
            .await
    }

    /// Waits until `script` returns `want`.
    async fn wait_for(&self, script: &str, want: Value, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.eval(script).await;
            if got == want {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: still {got} after 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The WebDriver reference of the element `css` selects.
    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd("element", json!({"using": "css selector", "value": css}))
            .await;
        v["element-6066-11e4-a52e-4f735466cecf"]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}"))
            .to_string()
    }

    /// Clicks the element `css` selects, as a person would.
    async fn click(&self, css: &str) {
        let e = self.element(css).await;
        self.cmd(&format!("element/{e}/click"), json!({})).await;
    }

    /// Empties the field `css` selects and types `text` into it.
    async fn type_into(&self, css: &str, text: &str) {
        let e = self.element(css).await;
        self.cmd(&format!("element/{e}/clear"), json!({})).await;
        self.cmd(&format!("element/{e}/value"), json!({"text": text}))
            .await;
    }

    /// Makes the page a phone's: a 390 × 844 window and viewport, a phone's screen, and a
    /// time zone `tz` (an IANA name) for the page's clock.
    async fn phone(&self, tz: &str) {
        self.cmd("window/rect", json!({"width": 390, "height": 844}))
            .await;
        let metrics = json!({"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": true});
        self.cdp("Emulation.setDeviceMetricsOverride", metrics)
            .await;
        self.cdp("Emulation.setTimezoneOverride", json!({"timezoneId": tz}))
            .await;
    }

    /// Runs a Chrome DevTools Protocol command on the page.
    async fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.cmd("goog/cdp/execute", json!({"cmd": cmd, "params": params}))
            .await
    }

    async fn text(&self, id: &str) -> String {
        let script =
            format!("var e = document.getElementById('{id}'); return e ? e.textContent : null;");
        match self.eval(&script).await {
            Value::String(s) => s,
            other => panic!("no element #{id}: {other}"),
        }
    }

    async fn quit(mut self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.http.delete(url).send().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

const STATE: &str =
    "var e = document.getElementById('state'); return e ? e.getAttribute('data-state') : null;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_page_goes_used_live_and_stays_voided_offline() {
    if browser_tools().is_none() {
        return;
    }
    let mut f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let gate = f.gate_token(5).await;
    let code = f.book_one("k", event, "Ada Lovelace").await;
    let page = format!("{}/t/{code}", f.base);

    let browser = Browser::start().await;
    browser.goto(&page).await;
    browser
        .wait_for(STATE, json!("valid"), "the page shows valid")
        .await;
    let text = browser
        .eval("return document.getElementById('state').textContent;")
        .await;
    assert_eq!(text, "Valid");
    // The service worker controls the page and holds a copy of it.
    let cached = format!(
        "var done = arguments[0];
         navigator.serviceWorker.ready
           .then(function () {{ return caches.open('stile-v1'); }})
           .then(function (c) {{ return c.match('/t/{code}'); }})
           .then(function (r) {{ done(!!r && !!navigator.serviceWorker.controller); }})
           .catch(function (e) {{ done(String(e)); }});"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.eval_async(&cached).await != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the service worker never cached the page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A check-in elsewhere: the open page turns used without a reload.
    browser.eval("window.__marker = 42; return null;").await;
    let (_, o) = f.checkin(&gate, json!({"code": code})).await;
    assert_eq!(o["outcome"], "admitted");
    browser
        .wait_for(
            STATE,
            json!("used"),
            "the page shows used after the check-in",
        )
        .await;
    assert_eq!(
        browser.eval("return window.__marker;").await,
        json!(42),
        "the page reloaded"
    );
    let detail = browser
        .eval("return document.getElementById('state-detail').textContent;")
        .await;
    assert!(detail.as_str().unwrap().contains("gate 5"), "{detail}");

    // Cut the network: the gateway is gone. Reopen the page: the cached copy shows voided.
    f.gateway
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    browser.goto("about:blank").await;
    browser.goto(&page).await;
    browser
        .wait_for(STATE, json!("used"), "the offline page shows used")
        .await;
    let source = browser
        .eval("return document.getElementById('ticket').getAttribute('data-source');")
        .await;
    assert_eq!(
        source, "cache",
        "the reopened page came from the service worker's cache"
    );
    let text = browser
        .eval("return document.getElementById('state').textContent;")
        .await;
    assert!(text.as_str().unwrap().contains("voided"), "{text}");
    browser.quit().await;
    f.shutdown().await;
}

/// A rotating ticket's page, opened by the page link its booking gave, works under the
/// content security policy: its script runs (the service worker keeps the page), the QR
/// image loads, and the minted code is nowhere on the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_ticket_page_by_its_link_works_under_the_security_policy() {
    if browser_tools().is_none() {
        return;
    }
    let f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10, "rotating": true})).await;
    let res = f
        .book(
            "k",
            json!({"event": event, "payment_ref": "p", "tickets": [{"holder": {"name": "Ada"}}]}),
        )
        .await;
    let (_, b) = json_of(res).await;
    let minted = b["tickets"][0]["code"].as_str().unwrap().to_string();
    let link = b["tickets"][0]["page"].as_str().unwrap().to_string();
    let browser = Browser::start().await;
    browser.goto(&format!("{}{link}", f.base)).await;
    browser
        .wait_for(STATE, json!("valid"), "the page shows valid")
        .await;
    let image =
        "var i = document.getElementById('qr-img'); return i.complete && i.naturalWidth > 0;";
    browser
        .wait_for(image, json!(true), "the QR image loads")
        .await;
    let html = browser
        .eval("return document.documentElement.outerHTML;")
        .await;
    assert!(
        !html.as_str().unwrap().contains(&minted),
        "the minted code is on the page"
    );
    let cached = format!(
        "var done = arguments[0];
         navigator.serviceWorker.ready
           .then(function () {{ return caches.open('stile-v1'); }})
           .then(function (c) {{ return c.match('{link}'); }})
           .then(function (r) {{ done(!!r); }})
           .catch(function (e) {{ done(String(e)); }});"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.eval_async(&cached).await != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the script never ran: the service worker did not keep the page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.quit().await;
    f.shutdown().await;
}

/// The page's time zone in the phone tests: UTC+05:45 all year, so a local time differs
/// from UTC in its hour, its minutes and, late in the day, its date.
const PHONE_TZ: &str = "Asia/Kathmandu";
/// That zone's offset, seconds.
const PHONE_TZ_OFFSET_S: i64 = 5 * 3600 + 45 * 60;

/// `Sat 16 Mar 2030, 04:15` (with `:SS` when `seconds`) for a Unix second in a zone
/// `offset_s` east of UTC: what the page writes for a local time.
fn local_text(unix_s: i64, offset_s: i64, seconds: bool) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = unix_s + offset_s;
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Days to a civil date (H. Hinnant's algorithm); 1970-01-01 was a Thursday.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut text = format!(
        "{} {day} {} {year}, {:02}:{:02}",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        secs / 3600,
        secs % 3600 / 60
    );
    if seconds {
        text.push_str(&format!(":{:02}", secs % 60));
    }
    text
}

/// A gate of provider 1 with a name; its HTTP token and staff PIN.
async fn named_gate(f: &Fixture, gate: u16, name: &str) -> (String, String) {
    let (s, g) = f
        .post("/v1/providers/1/gates", json!({"gate": gate, "name": name}))
        .await;
    assert_eq!(s, 201, "{g}");
    (
        g["token"].as_str().unwrap().to_string(),
        g["pin"].as_str().unwrap().to_string(),
    )
}

/// Whether the page fits the window's width (no sideways scrolling).
const FITS: &str = "return document.documentElement.scrollWidth <= window.innerWidth;";

/// On a phone (390 × 844, in UTC+05:45): the event's start and the admit time in the
/// holder's time zone with the date (the UTC instant in `title`), the organiser, the gate by
/// its name, "Transferred" for a transferred ticket, and an HTML page for a link that leads
/// nowhere, each fitting the screen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phone_page_shows_local_times_gate_names_and_transferred() {
    if browser_tools().is_none() {
        return;
    }
    assert_eq!(
        local_text(
            stile_gateway::parse_rfc3339("2030-03-15T22:30:00Z").unwrap() as i64,
            PHONE_TZ_OFFSET_S,
            false
        ),
        "Sat 16 Mar 2030, 04:15"
    );
    let f = Fixture::start().await;
    let starts = "2030-03-15T22:30:00Z";
    let event = f.event(json!({"capacity": 10, "starts_at": starts})).await;
    let (token, _) = named_gate(&f, 5, "North").await;
    let used = f.book_one("a", event, "Ada Lovelace").await;
    let moved = f.book_one("b", event, "Bob").await;
    let (_, o) = f.checkin(&token, json!({"code": used})).await;
    assert_eq!(o["outcome"], "admitted", "{o}");
    let (_, v) = json_of(f.public(&format!("/v1/tickets/{used}")).await).await;
    let used_at = v["used_at"].as_str().unwrap().to_string();
    let (s, t) = f
        .post(
            &format!("/v1/tickets/{moved}/transfer"),
            json!({"holder": {"name": "Grace"}}),
        )
        .await;
    assert_eq!(s, 201, "{t}");

    let browser = Browser::start().await;
    browser.phone(PHONE_TZ).await;
    browser.goto(&format!("{}/t/{used}", f.base)).await;
    browser
        .wait_for(STATE, json!("used"), "the page shows used")
        .await;
    assert_eq!(browser.eval("return window.innerWidth;").await, json!(390));
    assert_eq!(
        browser.eval(FITS).await,
        json!(true),
        "the page is wider than the phone"
    );
    assert_eq!(
        browser.text("detail-starts").await,
        "Sat 16 Mar 2030, 04:15"
    );
    let title = "return document.querySelector('#detail-starts time').getAttribute('title');";
    assert_eq!(
        browser.eval(title).await,
        json!(starts),
        "the UTC instant stays in the title"
    );
    let used_s = stile_gateway::parse_rfc3339(&used_at).unwrap() as i64;
    assert_eq!(
        browser.text("state-detail").await,
        format!(
            "Used {} at gate 5 (North)",
            local_text(used_s, PHONE_TZ_OFFSET_S, true)
        )
    );
    assert_eq!(browser.text("detail-organiser").await, "Arena");
    let icon = "var done = arguments[0];
         var href = document.querySelector('link[rel=icon]').getAttribute('href');
         fetch(href).then(function (r) { done(href + ' ' + r.status + ' ' + r.headers.get('content-type')); },
                          function (e) { done(String(e)); });";
    assert_eq!(
        browser.eval_async(icon).await,
        json!("/favicon.svg 200 image/svg+xml")
    );

    browser.goto(&format!("{}/t/{moved}", f.base)).await;
    browser
        .wait_for(
            STATE,
            json!("transferred"),
            "the old code's page shows transferred",
        )
        .await;
    assert_eq!(browser.text("state").await, "Transferred");
    let html = browser.eval("return document.body.innerText;").await;
    assert!(!html.as_str().unwrap().contains("Revoked"), "{html}");

    for (path, heading) in [
        (
            format!("/t/{}", &used[..20]),
            "This ticket link is incomplete",
        ),
        (
            format!("/t/{}", crate::gateway::flip_last(&used)),
            "Ticket not found",
        ),
        (
            format!("/v1/tickets/{}/qr.png", &used[..20]),
            "This ticket link is incomplete",
        ),
    ] {
        browser.goto(&format!("{}{path}", f.base)).await;
        let h1 = "var m = document.getElementById('missing');
                  return m ? m.querySelector('h1').textContent : null;";
        assert_eq!(browser.eval(h1).await, json!(heading), "{path}");
        assert_eq!(browser.eval(FITS).await, json!(true), "{path}");
    }
    browser.quit().await;
    f.shutdown().await;
}

/// Staff check-in on the holder's phone: a wrong PIN is refused, the right one admits and
/// the page turns voided at once (and stays so reopened offline), a second confirmation is
/// refused with the first one's time and gate, and without a network the page says it
/// cannot confirm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_check_in_on_the_phone_voids_the_page_live_and_offline() {
    if browser_tools().is_none() {
        return;
    }
    let mut f = Fixture::start().await;
    let event = f.event(json!({"capacity": 10})).await;
    let (_, pin) = named_gate(&f, 3, "Side door").await;
    let wrong = format!("{:06}", (pin.parse::<u32>().unwrap() + 1) % 1_000_000);
    let code = f.book_one("k", event, "Ada Lovelace").await;
    let page = format!("{}/t/{code}", f.base);

    let browser = Browser::start().await;
    browser.phone(PHONE_TZ).await;
    browser.goto(&page).await;
    browser
        .wait_for(STATE, json!("valid"), "the page shows valid")
        .await;
    let cached = format!(
        "var done = arguments[0];
         navigator.serviceWorker.ready
           .then(function () {{ return caches.open('stile-v1'); }})
           .then(function (c) {{ return c.match('/t/{code}'); }})
           .then(function (r) {{ done(!!r && !!navigator.serviceWorker.controller); }})
           .catch(function (e) {{ done(String(e)); }});"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while browser.eval_async(&cached).await != json!(true) {
        assert!(
            Instant::now() < deadline,
            "the service worker never cached the page"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.eval("window.__marker = 42; return null;").await;
    const OUTCOME: &str = "var e = document.getElementById('staff-result');
        return e.hidden ? null : e.getAttribute('data-outcome');";
    let confirm = |pin: String| {
        let browser = &browser;
        async move {
            browser.type_into("#staff-gate", "3").await;
            browser.type_into("#staff-pin", &pin).await;
            browser.click("#staff-next").await;
            assert_eq!(
                browser.text("staff-confirm-text").await,
                "Check this ticket in at gate 3? It is voided at once."
            );
            browser.click("#staff-confirm-yes").await;
        }
    };

    // A wrong PIN: refused, the ticket stays valid.
    browser.click("#staff-open").await;
    confirm(wrong).await;
    browser
        .wait_for(OUTCOME, json!("wrong_pin"), "a wrong PIN is refused")
        .await;
    assert_eq!(browser.text("staff-result-word").await, "Wrong PIN");
    assert_eq!(browser.eval(STATE).await, json!("valid"));

    // The right PIN: admitted in large type, the page voided at once.
    confirm(pin.clone()).await;
    browser
        .wait_for(OUTCOME, json!("admitted"), "the right PIN admits")
        .await;
    assert_eq!(browser.text("staff-result-word").await, "Admitted");
    let size = "return parseFloat(getComputedStyle(document.getElementById('staff-result-word')).fontSize);";
    assert!(
        browser.eval(size).await.as_f64().unwrap() >= 40.0,
        "large type"
    );
    browser
        .wait_for(STATE, json!("used"), "the page is voided")
        .await;
    let voided = "return document.getElementById('ticket').getAttribute('data-voided');";
    assert_eq!(browser.eval(voided).await, json!("true"));
    assert_eq!(
        browser.eval("return window.__marker;").await,
        json!(42),
        "the page reloaded"
    );
    let (_, v) = json_of(f.public(&format!("/v1/tickets/{code}")).await).await;
    assert_eq!(
        (v["state"].as_str(), v["gate"].as_u64()),
        (Some("used"), Some(3)),
        "{v}"
    );
    let first_at = v["used_at"].as_str().unwrap().to_string();
    let first_local = local_text(
        stile_gateway::parse_rfc3339(&first_at).unwrap() as i64,
        PHONE_TZ_OFFSET_S,
        true,
    );
    assert_eq!(
        browser.text("staff-result-detail").await,
        format!("Checked in at gate 3 (Side door), {first_local}")
    );
    assert_eq!(browser.eval(FITS).await, json!(true));

    // A second confirmation: refused, naming the first one's time and gate.
    confirm(pin.clone()).await;
    browser
        .wait_for(
            OUTCOME,
            json!("refused"),
            "a second confirmation is refused",
        )
        .await;
    assert_eq!(browser.text("staff-result-word").await, "Refused");
    assert_eq!(
        browser.text("staff-result-detail").await,
        format!("Already used {first_local} at gate 3 (Side door)")
    );
    let when = "return document.querySelector('#staff-result-detail time').getAttribute('title');";
    assert_eq!(browser.eval(when).await, json!(first_at));

    // The network cut: the page reopened from the cache shows voided, and staff check-in
    // says that it cannot confirm.
    f.gateway
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;
    browser.goto("about:blank").await;
    browser.goto(&page).await;
    browser
        .wait_for(STATE, json!("used"), "the offline page shows used")
        .await;
    let source = "return document.getElementById('ticket').getAttribute('data-source');";
    assert_eq!(browser.eval(source).await, json!("cache"));
    assert_eq!(browser.eval(voided).await, json!("true"));
    browser.click("#staff-open").await;
    confirm(pin).await;
    browser
        .wait_for(
            OUTCOME,
            json!("offline"),
            "offline, the page cannot confirm",
        )
        .await;
    assert_eq!(browser.text("staff-result-word").await, "Cannot confirm");
    assert!(
        browser
            .text("staff-result-detail")
            .await
            .contains("nobody can check the gate"),
        "{}",
        browser.text("staff-result-detail").await
    );
    browser.quit().await;
    f.shutdown().await;
}
