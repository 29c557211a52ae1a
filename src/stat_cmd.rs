//! `stile stat`: a live view of one node: check-ins per second, their p50/p99/p999 latency,
//! outcomes, sync mode, fsync latency and connections, refreshed every interval.
//!
//! Each reading is the node's `stats` and `metrics` answers. Rates and recent percentiles
//! are the difference between two readings, divided by the node's own clock; totals and the
//! "since start" line are the readings themselves.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use stile_protocol::client::{Client, ClientError};
use stile_protocol::frame::{op, sync_mode, NodeMetrics, NodeStats};
use stile_protocol::histogram::Histogram;
use stile_protocol::OutcomeKind;

use crate::client_cmd::{connect, runtime, Want};
use crate::Conn;

/// How long one reading may take before the node counts as gone.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long connecting may take, its first request included.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest interval between readings.
const INTERVAL_MIN: Duration = Duration::from_millis(100);

/// Arguments of `stile stat`.
#[derive(Debug, clap::Args)]
pub struct StatArgs {
    #[command(flatten)]
    conn: Conn,
    /// Print one reading (rates over one interval) as plain text and exit.
    #[arg(long, conflicts_with = "count")]
    once: bool,
    /// Print this many readings, then exit (default: until Ctrl-C).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// Time between readings.
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
    /// Whose rate and latency to show: checkin, exit, undo, status, mint, revoke, transfer,
    /// ping, stats, checkin_as, ticket_key or metrics.
    #[arg(long, default_value = "checkin", value_parser = parse_op)]
    op: u8,
    /// One JSON object a reading, a line each, instead of the text view (for scripts).
    #[arg(long)]
    json: bool,
    /// Keep going when the node cannot be reached or stops answering: say so each interval
    /// and resume once it answers again (the live view in a terminal always does).
    #[arg(long, conflicts_with = "once")]
    retry: bool,
}

/// A request op by name (not `subscribe`: a stream has no latency).
fn parse_op(s: &str) -> Result<u8, String> {
    op::by_name(s)
        .filter(|&o| o != op::SUBSCRIBE)
        .ok_or_else(|| {
            let names: Vec<&str> = op::REQUESTS
                .iter()
                .filter(|(o, _)| *o != op::SUBSCRIBE)
                .map(|(_, name)| *name)
                .collect();
            format!("{s:?} is not a request op; one of {}", names.join(", "))
        })
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < INTERVAL_MIN {
        return Err(format!("{s:?}: at least {INTERVAL_MIN:?}"));
    }
    Ok(d)
}

/// One reading of a node.
#[derive(Debug, Clone)]
pub struct Reading {
    /// Counters, log figures and sync mode.
    pub stats: NodeStats,
    /// Outcome counts and latency histograms.
    pub metrics: NodeMetrics,
}

/// Runs `stile stat`.
pub fn run(args: StatArgs) -> anyhow::Result<ExitCode> {
    crate::init_logging("warn");
    let node = args.conn.node.clone();
    let frames = if args.once { Some(1) } else { args.count };
    // Redraw in place only for a person watching a terminal.
    let redraw = !args.once && !args.json && std::io::stdout().is_terminal();
    let retry = args.retry || redraw;
    runtime()?.block_on(async {
        let mut view = Screen {
            out: std::io::stdout().lock(),
            json: args.json,
            redraw,
            shown: 0,
            node: node.clone(),
        };
        if redraw {
            write!(view.out, "\x1b[2J")?;
        }
        let mut client: Option<Client> = None;
        // The reading rates are measured from; none at first and after the node was away.
        let mut last: Option<Reading> = None;
        let mut down_since: Option<std::time::SystemTime> = None;
        loop {
            match next_reading(&mut client, &args, &node).await {
                Ok(now) => {
                    down_since = None;
                    let Some(before) = last.replace(now) else {
                        tokio::time::sleep(args.interval).await;
                        continue;
                    };
                    view.reading(&before, last.as_ref().expect("just set"))?;
                }
                Err(e) if !retry || !passing(&e) => return Err(e),
                Err(e) => {
                    // Connect afresh next time; rates start over from the next reading.
                    client = None;
                    last = None;
                    let since = *down_since.get_or_insert_with(std::time::SystemTime::now);
                    view.down(since, &format!("{e:#}"))?;
                }
            }
            view.out.flush()?;
            view.shown += 1;
            if frames.is_some_and(|n| view.shown >= n) {
                break;
            }
            tokio::time::sleep(args.interval).await;
        }
        if let Some(c) = client {
            c.close().await;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One reading of the node, connecting first if `client` is not connected. Bounded: a node
/// that accepts and then says nothing must not hold the view (the connect's own, shorter,
/// bound names an unreachable node).
async fn next_reading(
    client: &mut Option<Client>,
    args: &StatArgs,
    node: &str,
) -> anyhow::Result<Reading> {
    if client.is_none() {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(&args.conn, Want::Admin))
            .await
            .map_err(|_| StoppedAnswering(node.to_owned()))??;
        *client = Some(connected);
    }
    let c = client.as_ref().expect("connected above");
    read(c, node, args.op).await
}

/// Where readings go: JSON lines, a screen redrawn in place, or text blocks one after
/// another.
struct Screen<W: Write> {
    /// Standard output.
    out: W,
    /// One JSON object a reading.
    json: bool,
    /// Redraw in place (a person at a terminal).
    redraw: bool,
    /// Readings and outages shown so far.
    shown: u64,
    /// The node's address, as given.
    node: String,
}

impl<W: Write> Screen<W> {
    /// Shows the rates between `before` and `now`.
    fn reading(&mut self, before: &Reading, now: &Reading) -> anyhow::Result<()> {
        if self.json {
            let mut v = render_json(&self.node, Some(before), now);
            v["up"] = true.into();
            writeln!(self.out, "{v}")?;
            return Ok(());
        }
        let text = render(&self.node, Some(before), now);
        self.block(&text)
    }

    /// Shows that the node has not answered since `since`, and why.
    fn down(&mut self, since: std::time::SystemTime, why: &str) -> anyhow::Result<()> {
        let since = humantime::format_rfc3339_seconds(since);
        if self.json {
            let v = serde_json::json!({
                "node": self.node, "up": false, "down_since": since.to_string(),
                "error": why,
            });
            writeln!(self.out, "{v}")?;
            return Ok(());
        }
        let text = format!(
            "node         {}   not answering since {since}: retrying\n\
             error        {why}\n",
            self.node
        );
        self.block(&text)
    }

    /// A block of text: over the previous one, or after it with a blank line between.
    fn block(&mut self, text: &str) -> anyhow::Result<()> {
        if self.redraw {
            redraw_with(&mut self.out, text)?;
        } else {
            if self.shown > 0 {
                writeln!(self.out)?;
            }
            write!(self.out, "{text}")?;
        }
        Ok(())
    }
}

/// Draws `text` over the previous view: home, each line cleared to its end, then the rest
/// of the screen.
fn redraw_with(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    write!(out, "\x1b[H")?;
    for line in text.lines() {
        writeln!(out, "{line}\x1b[K")?;
    }
    write!(out, "\x1b[J")
}

/// Reads the node's stats and metrics, with errors a person can act on.
async fn read(client: &Client, node: &str, latency_op: u8) -> anyhow::Result<Reading> {
    // Metrics first, alone: its in-flight count then leaves out this reading's own requests.
    let both = async {
        let metrics = client.metrics(latency_op).await?;
        Ok::<_, ClientError>((client.stats().await?, metrics))
    };
    match tokio::time::timeout(READ_TIMEOUT, both).await {
        Ok(Ok((stats, metrics))) => Ok(Reading { stats, metrics }),
        Ok(Err(ClientError::Refused(why))) if why.contains("unknown op") => anyhow::bail!(
            "node {node} does not answer the metrics request: it runs an older stile than this \
             one"
        ),
        Ok(Err(e)) => Err(e).with_context(|| format!("reading node {node}")),
        Err(_) => Err(StoppedAnswering(node.to_string()).into()),
    }
}

/// No reading within [`READ_TIMEOUT`].
#[derive(Debug)]
struct StoppedAnswering(String);

impl std::fmt::Display for StoppedAnswering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} stopped answering (no reading within {} s)",
            self.0,
            READ_TIMEOUT.as_secs()
        )
    }
}

impl std::error::Error for StoppedAnswering {}

/// Whether `e` may pass once the node is back (it cannot be reached, stopped answering, or
/// the connection went), rather than needing a person (no certificate, a refused one, an
/// older node): only those are retried.
fn passing(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StoppedAnswering>()
            || matches!(
                c.downcast_ref::<ClientError>(),
                Some(
                    ClientError::Connect { .. }
                        | ClientError::ConnectionLost
                        | ClientError::Closed
                        | ClientError::Timeout(_)
                )
            )
    })
}

/// A latency in microseconds for people: `312 µs`, `1.10 ms`, `2.31 s`.
pub fn format_us(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

fn format_uptime(us: u64) -> String {
    let s = us / 1_000_000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        _ => format!("{}h {}m", s / 3600, s % 3600 / 60),
    }
}

/// `p50 X   p99 Y   p999 Z` of a histogram (`-` where nothing was counted).
fn percentiles(h: &Histogram, qs: &[(&str, f64)]) -> String {
    qs.iter()
        .map(|(name, q)| {
            let v = h.quantile(*q).map_or_else(|| "-".to_string(), format_us);
            format!("{name} {v}")
        })
        .collect::<Vec<_>>()
        .join("   ")
}

const P3: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99), ("p999", 0.999)];
const P2: &[(&str, f64)] = &[("p50", 0.5), ("p99", 0.99)];

/// What two readings say together: the figures both views show.
struct View<'a> {
    /// The later reading.
    now: &'a Reading,
    /// The earlier reading, unless there is none or the node restarted in between.
    base: Option<&'a Reading>,
    /// Microseconds between the readings, on the node's clock.
    window_us: u64,
    /// Latency of the requests answered in the window.
    latency: Histogram,
    /// `fdatasync` latency in the window, or since start when there was none in it.
    fsync: Histogram,
    /// Whether `fsync` counts since start rather than in the window.
    fsync_since_start: bool,
    /// Syncs logged in the window.
    syncs: u64,
    /// Records logged in the window.
    records: u64,
}

impl<'a> View<'a> {
    fn new(last: Option<&'a Reading>, now: &'a Reading) -> Self {
        let (m, s) = (&now.metrics, &now.stats);
        let base = last.filter(|l| l.metrics.uptime_us <= m.uptime_us);
        let empty = Histogram::default();
        let latency = m
            .latency_us
            .since(base.map_or(&empty, |l| &l.metrics.latency_us));
        let recent = m
            .fsync_us
            .since(base.map_or(&empty, |l| &l.metrics.fsync_us));
        let fsync_since_start = recent.count() == 0;
        let (syncs, records) = match base {
            Some(l) => (
                s.wal_syncs.saturating_sub(l.stats.wal_syncs),
                s.wal_records.saturating_sub(l.stats.wal_records),
            ),
            None => (s.wal_syncs, s.wal_records),
        };
        View {
            now,
            base,
            window_us: m.uptime_us - base.map_or(0, |l| l.metrics.uptime_us),
            latency,
            fsync: if fsync_since_start {
                m.fsync_us.clone()
            } else {
                recent
            },
            fsync_since_start,
            syncs,
            records,
        }
    }

    /// `n` over the window, per second.
    fn per_s(&self, n: u64) -> f64 {
        n as f64 * 1e6 / self.window_us.max(1) as f64
    }

    /// Outcomes answered since start: name, total, rate over the window (those seen only).
    fn outcomes(&self) -> Vec<(&'static str, u64, f64)> {
        let before = |i: usize| {
            self.base
                .and_then(|l| l.metrics.outcomes.get(i).copied())
                .unwrap_or(0)
        };
        self.now
            .metrics
            .outcomes
            .iter()
            .enumerate()
            .filter(|&(_, &n)| n > 0)
            .map(|(i, &n)| {
                let name = OutcomeKind::from_u8(i as u8).map_or("outcome", |k| k.name());
                (name, n, self.per_s(n.saturating_sub(before(i))))
            })
            .collect()
    }

    /// Records a sync covered in the window, if any sync happened.
    fn records_per_sync(&self) -> Option<f64> {
        (self.syncs > 0).then(|| self.records as f64 / self.syncs as f64)
    }

    /// Share of the window the log spent in `fdatasync`, percent, if it synced in the window.
    fn fsync_busy_percent(&self) -> Option<f64> {
        (!self.fsync_since_start && self.window_us > 0)
            .then(|| self.fsync.sum as f64 * 100.0 / self.window_us as f64)
    }
}

/// The op whose latency a reading holds (`checkin` when the node named none).
fn latency_op_name(m: &NodeMetrics) -> &'static str {
    match m.latency_op {
        0 => op::name(op::CHECKIN),
        o => op::name(o),
    }
}

/// Reading `now` as one JSON object, with rates over the time since `last` (as [`render`]).
/// Latencies are microseconds; a percentile of nothing is `null`.
pub fn render_json(node: &str, last: Option<&Reading>, now: &Reading) -> serde_json::Value {
    let v = View::new(last, now);
    let (m, s) = (&now.metrics, &now.stats);
    let q = |h: &Histogram, p: f64| h.quantile(p);
    let outcomes: serde_json::Map<String, serde_json::Value> = v
        .outcomes()
        .into_iter()
        .map(|(name, total, rate)| {
            (
                name.to_string(),
                serde_json::json!({"total": total, "per_s": rate}),
            )
        })
        .collect();
    serde_json::json!({
        "node": node,
        "uptime_s": m.uptime_us as f64 / 1e6,
        "sync": sync_mode::name(s.sync_mode),
        "window_s": v.window_us as f64 / 1e6,
        "op": latency_op_name(m),
        "per_s": v.per_s(v.latency.count()),
        "latency_us": {
            "p50": q(&v.latency, 0.5), "p99": q(&v.latency, 0.99), "p999": q(&v.latency, 0.999),
        },
        "total": m.latency_us.count(),
        "latency_since_start_us": {
            "p50": q(&m.latency_us, 0.5),
            "p99": q(&m.latency_us, 0.99),
            "p999": q(&m.latency_us, 0.999),
        },
        "outcomes": outcomes,
        "fsync_us": {"p50": q(&v.fsync, 0.5), "p99": q(&v.fsync, 0.99)},
        "fsync_since_start": v.fsync_since_start,
        "syncs_per_s": v.per_s(v.syncs),
        "records_per_sync": v.records_per_sync(),
        "fsync_busy_percent": v.fsync_busy_percent(),
        "connections": s.connections,
        "in_flight": m.inflight,
        "tickets": s.tickets,
        "disk_full": m.disk_full,
    })
}

/// The view of reading `now`, with rates over the time since `last` (a reading of the same
/// node; `None` or a restarted node: rates since start). Plain lines, each starting with a
/// fixed label.
pub fn render(node: &str, last: Option<&Reading>, now: &Reading) -> String {
    let v = View::new(last, now);
    let (m, s) = (&now.metrics, &now.stats);
    let window = format!("over {:.2} s", v.window_us as f64 / 1e6);
    let (label, noun) = match latency_op_name(m) {
        "checkin" => ("check-ins".to_string(), "check-ins".to_string()),
        name => (name.to_string(), format!("{name} requests")),
    };
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(l.trim_end());
        out.push('\n');
    };

    line(format!(
        "node         {node}   up {}   sync {}",
        format_uptime(m.uptime_us),
        sync_mode::name(s.sync_mode)
    ));
    if m.disk_full == Some(true) {
        line(
            "DISK FULL    the node refuses changes (disk_full): its log's disk is full; free \
             space in its data dir"
                .into(),
        );
    }
    line(format!(
        "{label:<13}{:.1}/s {window}   {}",
        v.per_s(v.latency.count()),
        percentiles(&v.latency, P3)
    ));
    line(format!(
        "since start  {} {noun}   {}",
        m.latency_us.count(),
        percentiles(&m.latency_us, P3)
    ));

    let outcomes: Vec<String> = v
        .outcomes()
        .into_iter()
        .map(|(name, n, rate)| format!("{name} {n} ({rate:.1}/s)"))
        .collect();
    line(if outcomes.is_empty() {
        "outcomes     none yet".to_string()
    } else {
        format!("outcomes     {}", outcomes.join("   "))
    });

    line(fsync_line(&v));
    line(format!(
        "connections  {}   in flight {}   tickets {}",
        s.connections, m.inflight, s.tickets
    ));
    out
}

fn fsync_line(v: &View<'_>) -> String {
    let s = &v.now.stats;
    match s.sync_mode {
        sync_mode::NO_LOG => return "fsync        no log".into(),
        sync_mode::NONE if s.wal_syncs == 0 => return "fsync        none (sync none)".into(),
        _ => {}
    }
    let when = if v.fsync_since_start {
        " (since start)"
    } else {
        ""
    };
    let per_sync = v
        .records_per_sync()
        .map_or_else(|| "-".into(), |r| format!("{r:.1}"));
    let busy = v.fsync_busy_percent().map_or_else(String::new, |b| {
        format!("   in fdatasync {b:.1} % of the time")
    });
    format!(
        "fsync        {}{when}   {:.1} syncs/s   {per_sync} records/sync{busy}",
        percentiles(&v.fsync, P2),
        v.per_s(v.syncs)
    )
}

#[cfg(test)]
mod tests {
    use stile_protocol::histogram::bucket_of;

    use super::*;

    fn reading(uptime_s: u64, checkins: &[(u64, u64)], outcomes: &[u64], syncs: u64) -> Reading {
        let mut latency = Histogram::default();
        for &(us, n) in checkins {
            latency.buckets.push((bucket_of(us) as u16, n));
            latency.sum += us * n;
        }
        Reading {
            stats: NodeStats {
                tickets: 100,
                wal_syncs: syncs,
                wal_records: syncs * 4,
                connections: 3,
                sync_mode: sync_mode::ALWAYS,
                ..NodeStats::default()
            },
            metrics: NodeMetrics {
                uptime_us: uptime_s * 1_000_000,
                inflight: 2,
                outcomes: outcomes.to_vec(),
                latency_op: op::CHECKIN,
                latency_us: latency,
                fsync_us: Histogram {
                    sum: 500 * syncs,
                    buckets: vec![(bucket_of(500) as u16, syncs)],
                },
                disk_full: Some(false),
                cpu_us: None,
                rss_bytes: None,
            },
        }
    }

    #[test]
    fn a_node_refusing_changes_for_a_full_disk_says_so_on_its_own_line() {
        let a = reading(10, &[(100, 1000)], &[1000], 100);
        let mut b = reading(12, &[(100, 1000)], &[1000], 100);
        b.metrics.disk_full = Some(true);
        let text = render("n:1", Some(&a), &b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        assert!(
            lines[1].starts_with("DISK FULL    the node refuses changes"),
            "{text}"
        );
        assert_eq!(render_json("n:1", Some(&a), &b)["disk_full"], true);
        assert!(!render("n:1", Some(&a), &a).contains("DISK FULL"));
    }

    #[test]
    fn rates_and_percentiles_come_from_the_difference_of_two_readings() {
        let a = reading(10, &[(100, 1000)], &[1000], 100);
        let b = reading(12, &[(100, 1000), (300, 2000)], &[2900, 100], 300);
        let text = render("n:1", Some(&a), &b);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].starts_with("node         n:1   up 12s   sync always"));
        // 2000 check-ins in 2 s, all near 300 µs.
        assert!(
            lines[1].starts_with("check-ins    1000.0/s over 2.00 s   p50 30"),
            "{text}"
        );
        assert!(
            lines[2].starts_with("since start  3000 check-ins   p50 30"),
            "{text}"
        );
        assert!(lines[3].contains("admitted 2900 (950.0/s)"), "{text}");
        assert!(lines[3].contains("already_used 100 (50.0/s)"), "{text}");
        // 200 syncs of 0.5 ms in 2 s: the log synced 5 % of the time.
        assert!(
            lines[4].contains("100.0 syncs/s   4.0 records/sync   in fdatasync 5.0 % of the time"),
            "{text}"
        );
        assert_eq!(lines[5], "connections  3   in flight 2   tickets 100");
    }

    #[test]
    fn a_quiet_node_shows_dashes_not_zeros() {
        let a = reading(1, &[], &[], 0);
        let text = render("n:1", Some(&a), &reading(2, &[], &[], 0));
        assert!(
            text.contains("check-ins    0.0/s over 1.00 s   p50 -   p99 -   p999 -"),
            "{text}"
        );
        assert!(text.contains("outcomes     none yet"), "{text}");
    }

    #[test]
    fn json_carries_the_same_figures_as_the_text() {
        let a = reading(10, &[(100, 1000)], &[1000], 100);
        let b = reading(12, &[(100, 1000), (300, 2000)], &[2900, 100], 300);
        let j = render_json("n:1", Some(&a), &b);
        assert_eq!(j["node"], "n:1");
        assert_eq!(j["sync"], "always");
        assert_eq!(j["op"], "checkin");
        assert_eq!(j["window_s"], 2.0);
        assert_eq!(j["per_s"], 1000.0);
        assert_eq!(j["total"], 3000);
        let p50 = j["latency_us"]["p50"].as_u64().unwrap();
        assert!((250..=350).contains(&p50), "{j}");
        assert_eq!(j["outcomes"]["admitted"]["total"], 2900);
        assert_eq!(j["outcomes"]["admitted"]["per_s"], 950.0);
        assert_eq!(j["outcomes"]["already_used"]["per_s"], 50.0);
        assert_eq!(j["syncs_per_s"], 100.0);
        assert_eq!(j["records_per_sync"], 4.0);
        assert_eq!(j["fsync_busy_percent"], 5.0);
        assert_eq!(j["fsync_since_start"], false);
        assert_eq!(
            (j["connections"].as_u64(), j["in_flight"].as_u64()),
            (Some(3), Some(2))
        );
        // Nothing answered, nothing synced: nulls, not zeros.
        let quiet = render_json(
            "n:1",
            Some(&reading(1, &[], &[], 0)),
            &reading(2, &[], &[], 0),
        );
        assert!(quiet["latency_us"]["p99"].is_null(), "{quiet}");
        assert!(quiet["records_per_sync"].is_null(), "{quiet}");
        assert!(quiet["fsync_busy_percent"].is_null(), "{quiet}");
    }

    #[test]
    fn another_op_is_named_where_check_ins_were() {
        let mut a = reading(10, &[(100, 10)], &[], 1);
        let mut b = reading(11, &[(100, 30)], &[], 2);
        a.metrics.latency_op = op::MINT;
        b.metrics.latency_op = op::MINT;
        let text = render("n:1", Some(&a), &b);
        assert!(text.contains("\nmint         20.0/s over 1.00 s"), "{text}");
        assert!(text.contains("since start  30 mint requests"), "{text}");
        assert_eq!(render_json("n:1", Some(&a), &b)["op"], "mint");
        assert_eq!(parse_op("exit"), Ok(op::EXIT));
        assert!(parse_op("subscribe").unwrap_err().contains("checkin, exit"));
        assert!(parse_op("nope").is_err());
    }

    #[test]
    fn latencies_read_as_people_write_them() {
        assert_eq!(format_us(312), "312 µs");
        assert_eq!(format_us(1_100), "1.10 ms");
        assert_eq!(format_us(2_310_000), "2.31 s");
    }
}
