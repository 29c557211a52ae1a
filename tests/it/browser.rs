//! The e-ticket page in headless Chromium, driven over WebDriver (chromedriver): it shows
//! valid, turns used after a check-in without a reload, and, with the gateway gone (the
//! network cut) and the page reopened, the service worker's copy still shows it voided.
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
