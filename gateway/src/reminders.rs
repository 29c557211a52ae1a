//! Expiry reminders from a durable outbox. A booking writes one outbox row per ticket and
//! lead time (unique, so each is sent once) in the same transaction as the ticket; this
//! task sends due rows to the holder's webhook as a JSON `POST`, retrying failures with
//! exponential backoff, and marks a row delivered only after a 2xx answer. A restart picks
//! up where it stopped. Delivery is at least once: a crash between the answer and the mark
//! sends again, so each request carries an `Idempotency-Key` the receiver can dedupe on.
//! Rows are leased in the database before they are sent (their retry time moved past the
//! webhook timeout in the transaction that reads them), so a second process reading the
//! outbox at the same time does not send them too.

use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;

use crate::live::Change;
use crate::problem::Problem;
use crate::App;

/// Reminders sent per pass at most.
const BATCH_MAX: i64 = 64;
/// Reminders in flight at once (a slow webhook holds up only its own).
const CONCURRENT_MAX: usize = 16;
/// Longest a webhook may take to answer.
const WEBHOOK_TIMEOUT_MS: u64 = 10_000;
/// How long a row read for sending is not read again (longer than a webhook may take).
const LEASE_S: i64 = (WEBHOOK_TIMEOUT_MS / 1000) as i64 * 3;
/// Longest error text kept per row.
const ERROR_MAX_CHARS: usize = 500;

/// A due reminder.
#[derive(Debug)]
struct Due {
    /// Outbox row.
    id: i64,
    /// The ticket's code.
    code: String,
    /// What the holder's page link names (a rotating ticket's page token, else the code).
    page_id: String,
    /// Lead time, seconds.
    lead_s: i64,
    /// The webhook.
    url: String,
    /// Attempts so far.
    attempts: u32,
    /// The ticket's last known state.
    state: String,
    /// The code that replaced it, if transferred.
    successor: Option<String>,
    /// Its account.
    account: Option<i64>,
    /// Holder's name.
    holder: String,
    /// Event name.
    event: String,
    /// Not valid after, Unix seconds.
    valid_until: Option<i64>,
}

/// Sends due reminders until the gateway stops.
pub async fn run(app: Arc<App>) {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_millis(WEBHOOK_TIMEOUT_MS))
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(webhook_tls());
    if !app.config.webhook_private {
        // Resolved here and checked; through a proxy the proxy would resolve the name.
        builder = builder
            .dns_resolver(Arc::new(crate::webhook::PublicOnly))
            .no_proxy();
    }
    let http = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the webhook client; reminders are not sent");
            return;
        }
    };
    let mut shutdown = app.shutdown.clone();
    let poll = Duration::from_millis(app.config.reminder_poll_ms.max(10));
    loop {
        match send_due(&app, &http).await {
            Ok(n) if n as i64 == BATCH_MAX => continue,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.detail, "reminder outbox"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = app.outbox_wake.notified() => {}
            _ = crate::stopped(&mut shutdown) => return,
        }
    }
}

fn webhook_tls() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn send_due(app: &Arc<App>, http: &reqwest::Client) -> Result<usize, Problem> {
    let now = crate::now_s() as i64;
    let due = app
        .db
        .call(move |c| -> Result<Vec<Due>, Problem> {
            let tx = crate::db::immediate(c)?;
            let mut stmt = tx.prepare(
                "SELECT o.id, o.code, o.lead_s, o.url, o.attempts, t.last_state, t.successor,
                     t.account, t.holder_name, e.name, e.valid_until,
                     CASE WHEN t.rotating THEN coalesce(t.page_token, t.code) ELSE t.code END
                 FROM outbox o JOIN tickets t ON t.code = o.code JOIN events e ON e.id = t.event
                 WHERE o.delivered_at IS NULL AND o.gave_up_at IS NULL AND o.next_at <= ?1
                 ORDER BY o.next_at LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, BATCH_MAX], |r| {
                Ok(Due {
                    id: r.get(0)?,
                    code: r.get(1)?,
                    lead_s: r.get(2)?,
                    url: r.get(3)?,
                    attempts: r.get(4)?,
                    state: r.get(5)?,
                    successor: r.get(6)?,
                    account: r.get(7)?,
                    holder: r.get(8)?,
                    event: r.get(9)?,
                    valid_until: r.get(10)?,
                    page_id: r.get(11)?,
                })
            })?;
            let due: Vec<Due> = rows.collect::<Result<_, _>>()?;
            drop(stmt);
            for d in &due {
                tx.execute(
                    "UPDATE outbox SET next_at = ?2 WHERE id = ?1",
                    params![d.id, now + LEASE_S],
                )?;
            }
            tx.commit()?;
            Ok(due)
        })
        .await?;
    let n = due.len();
    use futures_util::StreamExt;
    let results: Vec<Result<(), Problem>> = futures_util::stream::iter(due)
        .map(|d| handle(app, http, d))
        .buffer_unordered(CONCURRENT_MAX)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, Problem>>()?;
    Ok(n)
}

/// Sends one due reminder, or drops it if the ticket no longer needs it.
async fn handle(app: &Arc<App>, http: &reqwest::Client, d: Due) -> Result<(), Problem> {
    if d.state == "valid" && d.successor.is_none() {
        return deliver(app, http, d).await;
    }
    // Used, revoked or transferred: nothing to remind of.
    give_up(app, d.id, "ticket no longer valid".into()).await
}

/// Marks a reminder as never to be sent, saying why.
async fn give_up(app: &Arc<App>, id: i64, why: String) -> Result<(), Problem> {
    app.db
        .call(move |c| -> Result<(), Problem> {
            c.execute(
                "UPDATE outbox SET gave_up_at = ?2, last_error = ?3 WHERE id = ?1",
                params![id, crate::now_s() as i64, why],
            )?;
            Ok(())
        })
        .await
}

async fn deliver(app: &Arc<App>, http: &reqwest::Client, d: Due) -> Result<(), Problem> {
    let body = serde_json::json!({
        "type": "reminder",
        "code": d.code,
        "event": d.event,
        "holder": d.holder,
        "valid_until": d.valid_until.map(|t| crate::rfc3339(t as u64)),
        "lead_s": d.lead_s,
        "page": format!("/t/{}", d.page_id),
    });
    let refused = reqwest::Url::parse(&d.url)
        .ok()
        .and_then(|u| crate::webhook::literal_refusal(&u, app.config.webhook_private));
    if let Some(why) = refused {
        return give_up(app, d.id, why).await;
    }
    let result = http
        .post(&d.url)
        .header(
            "idempotency-key",
            format!("reminder-{}-{}", d.code, d.lead_s),
        )
        .json(&body)
        .send()
        .await;
    let failure = match result {
        Ok(res) if res.status().is_success() => None,
        Ok(res) => Some(format!("webhook answered {}", res.status())),
        // Without its URL: a webhook's query often carries the receiver's secret.
        Err(e) => Some(format!("webhook unreachable: {}", e.without_url())),
    };
    let now = crate::now_s() as i64;
    let cfg = &app.config;
    let attempts = d.attempts + 1;
    match failure {
        None => {
            let (id, account, code) = (d.id, d.account, d.code.clone());
            app.db
                .call(move |c| -> Result<(), Problem> {
                    let tx = crate::db::immediate(c)?;
                    tx.execute(
                        "UPDATE outbox SET delivered_at = ?2, attempts = ?3 WHERE id = ?1",
                        params![id, now, attempts],
                    )?;
                    if let Some(a) = account {
                        crate::store::accounts::add_event(&tx, a, &code, "reminder", &body)?;
                    }
                    tx.commit()?;
                    Ok(())
                })
                .await?;
            app.metrics.reminders_delivered.inc();
            if let Some(a) = d.account {
                app.live.publish(Change::Account(a));
            }
            // The outbox row, never the code: a static code is the ticket itself.
            tracing::info!(
                reminder = d.id,
                lead_s = d.lead_s,
                attempts,
                "reminder delivered"
            );
        }
        Some(error) => {
            app.metrics.reminder_failures.inc();
            let give_up = attempts >= cfg.reminder_attempts_max;
            let shift = attempts.saturating_sub(1).min(20);
            let delay_ms = cfg
                .reminder_backoff_base_ms
                .saturating_mul(1 << shift)
                .min(cfg.reminder_backoff_max_ms);
            let next_at = now + (delay_ms.div_ceil(1000)) as i64;
            let id = d.id;
            let err: String = error.chars().take(ERROR_MAX_CHARS).collect();
            tracing::warn!(reminder = d.id, attempts, give_up, error = %err, "reminder not delivered");
            app.db
                .call(move |c| -> Result<(), Problem> {
                    c.execute(
                        "UPDATE outbox SET attempts = ?2, next_at = ?3, last_error = ?4,
                             gave_up_at = CASE WHEN ?5 THEN ?6 ELSE NULL END
                         WHERE id = ?1",
                        params![id, attempts, next_at, err, give_up, now],
                    )?;
                    Ok(())
                })
                .await?;
            if give_up {
                app.metrics.reminders_given_up.inc();
            }
        }
    }
    Ok(())
}
