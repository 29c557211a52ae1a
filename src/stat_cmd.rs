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
    let redraw = !args.once && std::io::stdout().is_terminal();
    runtime()?.block_on(async {
        let client = connect(&args.conn, Want::Admin).await?;
        let mut last = read(&client, &node).await?;
        let mut shown = 0;
        let mut out = std::io::stdout().lock();
        if redraw {
            write!(out, "\x1b[2J")?;
        }
        while frames.is_none_or(|n| shown < n) {
            tokio::time::sleep(args.interval).await;
            let now = read(&client, &node).await?;
            let text = render(&node, Some(&last), &now);
            if redraw {
                // Home, each line cleared to its end, then the rest of the screen.
                write!(out, "\x1b[H")?;
                for line in text.lines() {
                    writeln!(out, "{line}\x1b[K")?;
                }
                write!(out, "\x1b[J")?;
            } else {
                if shown > 0 {
                    writeln!(out)?;
                }
                write!(out, "{text}")?;
            }
            out.flush()?;
            last = now;
            shown += 1;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reads the node's stats and metrics, with errors a person can act on.
async fn read(client: &Client, node: &str) -> anyhow::Result<Reading> {
    // Metrics first, alone: its in-flight count then leaves out this reading's own requests.
    let both = async {
        let metrics = client.metrics(op::CHECKIN).await?;
        Ok::<_, ClientError>((client.stats().await?, metrics))
    };
    match tokio::time::timeout(READ_TIMEOUT, both).await {
        Ok(Ok((stats, metrics))) => Ok(Reading { stats, metrics }),
        Ok(Err(ClientError::Refused(why))) if why.contains("unknown op") => anyhow::bail!(
            "node {node} does not answer the metrics request: it runs an older stile than this \
             one"
        ),
        Ok(Err(e)) => Err(e).with_context(|| format!("reading node {node}")),
        Err(_) => anyhow::bail!(
            "node {node} stopped answering (no reading within {} s)",
            READ_TIMEOUT.as_secs()
        ),
    }
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

/// The view of reading `now`, with rates over the time since `last` (a reading of the same
/// node; `None` or a restarted node: rates since start). Plain lines, each starting with a
/// fixed label.
pub fn render(node: &str, last: Option<&Reading>, now: &Reading) -> String {
    let (m, s) = (&now.metrics, &now.stats);
    // Differences against the last reading, unless the node restarted in between.
    let base = last.filter(|l| l.metrics.uptime_us <= m.uptime_us);
    let window_us = m.uptime_us - base.map_or(0, |l| l.metrics.uptime_us);
    let per_s = |n: u64| n as f64 * 1e6 / window_us.max(1) as f64;
    let window = format!("over {:.2} s", window_us as f64 / 1e6);
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
    let empty = Histogram::default();
    let latency = m
        .latency_us
        .since(base.map_or(&empty, |l| &l.metrics.latency_us));
    line(format!(
        "check-ins    {:.1}/s {window}   {}",
        per_s(latency.count()),
        percentiles(&latency, P3)
    ));
    line(format!(
        "since start  {} check-ins   {}",
        m.latency_us.count(),
        percentiles(&m.latency_us, P3)
    ));

    let before = |i: usize| {
        base.and_then(|l| l.metrics.outcomes.get(i).copied())
            .unwrap_or(0)
    };
    let outcomes: Vec<String> = m
        .outcomes
        .iter()
        .enumerate()
        .filter(|&(_, &n)| n > 0)
        .map(|(i, &n)| {
            let name = OutcomeKind::from_u8(i as u8).map_or("outcome", |k| k.name());
            let rate = per_s(n.saturating_sub(before(i)));
            format!("{name} {n} ({rate:.1}/s)")
        })
        .collect();
    line(if outcomes.is_empty() {
        "outcomes     none yet".to_string()
    } else {
        format!("outcomes     {}", outcomes.join("   "))
    });

    line(fsync_line(now, base, &per_s));
    line(format!(
        "connections  {}   in flight {}   tickets {}",
        s.connections, m.inflight, s.tickets
    ));
    out
}

fn fsync_line(now: &Reading, base: Option<&Reading>, per_s: &dyn Fn(u64) -> f64) -> String {
    let (m, s) = (&now.metrics, &now.stats);
    match s.sync_mode {
        sync_mode::NO_LOG => return "fsync        no log".into(),
        sync_mode::NONE if s.wal_syncs == 0 => return "fsync        none (sync none)".into(),
        _ => {}
    }
    let (syncs, records) = match base {
        Some(l) => (
            s.wal_syncs.saturating_sub(l.stats.wal_syncs),
            s.wal_records.saturating_sub(l.stats.wal_records),
        ),
        None => (s.wal_syncs, s.wal_records),
    };
    let recent = m
        .fsync_us
        .since(base.map_or(&Histogram::default(), |l| &l.metrics.fsync_us));
    let (hist, when) = if recent.count() > 0 {
        (&recent, "")
    } else {
        (&m.fsync_us, " (since start)")
    };
    let per_sync = if syncs > 0 {
        format!("{:.1}", records as f64 / syncs as f64)
    } else {
        "-".into()
    };
    format!(
        "fsync        {}{when}   {:.1} syncs/s   {per_sync} records/sync",
        percentiles(hist, P2),
        per_s(syncs)
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
            },
        }
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
        assert!(
            lines[4].contains("100.0 syncs/s   4.0 records/sync"),
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
    fn latencies_read_as_people_write_them() {
        assert_eq!(format_us(312), "312 µs");
        assert_eq!(format_us(1_100), "1.10 ms");
        assert_eq!(format_us(2_310_000), "2.31 s");
    }
}
