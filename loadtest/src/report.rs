//! What a run reports: the JSON document (`--json FILE`) and the text summary.

use std::collections::BTreeMap;

use serde::Serialize;

/// Latency percentiles, microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
}

impl Latency {
    /// The percentiles of `h` (microseconds).
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Latency {
        Latency {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One run against one target.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The target URL as given.
    pub target: String,
    /// Which round of a `--compare --rounds N` this run belongs to, from 1 (1 otherwise).
    pub round: u32,
    /// Which of the compared targets this run is, from 0 (the same URL may be given twice).
    #[serde(skip)]
    pub slot: usize,
    /// `always`, `batch`, `none` (or `unknown` when the target does not say).
    pub sync: String,
    /// `closed` (as fast as answers come) or `open` (a fixed rate).
    pub mode: String,
    /// Open loop: `flat` or `peak`.
    pub shape: Option<String>,
    /// Gates (connections).
    pub gates: u16,
    /// In flight per gate.
    pub inflight: u32,
    /// Requested rate (open loop), per second.
    pub requested_rate: Option<f64>,
    /// Answers counted (after warm-up).
    pub requests: u64,
    /// Answers per second over the measured time.
    pub throughput_per_s: f64,
    /// Measured time, seconds.
    pub measured_s: f64,
    /// Whether the warm-up was left out (false: the tickets ran out during it).
    pub warmup_excluded: bool,
    /// Whether the tickets ran out before the time was up (more were needed at the pace
    /// of the run, closed or open loop): the run ended early.
    pub tickets_ran_out: bool,
    /// Latency from send to answer.
    pub latency_us: Latency,
    /// Answers by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that failed without an answer.
    pub errors: u64,
    /// Requests with no answer in time.
    pub timeouts: u64,
    /// Admits of a ticket beyond what its plan allows (one for an event ticket or a
    /// journey; one per trip for a day pass). Must be 0.
    pub double_admits: u64,
    /// Forged codes admitted. Must be 0.
    pub forged_admits: u64,
    /// CPU time of this process over wall time, percent (200 = both cores of two).
    pub client_cpu_percent: f64,
    /// The target's CPU time (user and system) over the measured time, microseconds per
    /// request answered then: a node's own (`metrics`), Redis's (`INFO cpu`), or for
    /// `inproc` this whole process, clients included. Absent where it cannot be told (a
    /// node killed or changed during the run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_request: Option<f64>,
    /// UDP datagrams both ways (gate links, the whole run) per request sent: QUIC targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams_per_request: Option<f64>,
    /// How much the target's resident memory grew while the run's gates connected, bytes
    /// per gate (before any scan; for `inproc` this whole process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_memory_per_gate_bytes: Option<f64>,
    /// How busy the whole machine's CPUs were over the run (Linux only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_load: Option<MachineLoad>,
    /// Latency at percentiles from 0 to 99.999 (for plots).
    pub percentiles: Vec<Percentile>,
    /// Second by second from the start (warm-up included, marked).
    pub timeline: Vec<Second>,
    /// The target's own view of the measured time (a node, or the engine in process; absent
    /// for Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeView>,
    /// What QUIC carried, summed over the gates' connections (a node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quic: Option<QuicView>,
    /// Ended early by Ctrl-C, SIGTERM or SIGHUP: the figures cover the time measured until then.
    pub interrupted: bool,
    /// Gates whose connection failed, or went silent with requests in flight (no answer
    /// within 10 s); each stopped there. Should be 0.
    pub gates_lost: u32,
    /// Tickets minted for the run (a probe's not included).
    pub tickets: u64,
    /// How their number was decided: `given` (`--tickets`), `rate` (the open-loop rate over
    /// the warm-up and measured time, with headroom) or `probe` (the answers per second of a
    /// one-second closed-loop probe, with headroom).
    pub tickets_sized_by: String,
    /// The probe's answers per second, when one sized the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe_rate_per_s: Option<f64>,
    /// More tickets were needed than a run mints at most (20,000,000).
    pub tickets_capped: bool,
    /// The target's own view second by second from the start (a node, or the engine in
    /// process): where its check-in and fsync latency went as the client's did.
    pub node_timeline: Vec<NodeSecond>,
    /// What the run left in a node (absent for the engine in process and for Redis).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_in_node: Option<LeftInNode>,
    /// Faults injected into a spawned node during the run (`--kill-every`,
    /// `--pause-every`): kills and pauses.
    pub faults: u64,
    /// Times a gate connected again after its connection was lost, and sent its unanswered
    /// scans again with their scan ids.
    pub reconnects: u64,
    /// Scans that got no answer in the end (the connection lost for good, or an error
    /// answer): whether they took effect is unknown; the history checker allows both.
    pub indeterminate: u64,
    /// The `outage` scenario's own findings (absent in the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outage: Option<OutageReport>,
}

/// What the `outage` scenario found: its gates' admits online and offline, what reached the
/// node once it was back, and whether each thing that must hold did.
#[derive(Debug, Clone, Serialize)]
pub struct OutageReport {
    /// How long the node was to be cut off, seconds (`--outage`).
    pub outage_s: f64,
    /// When it was killed, seconds from the start of the run (absent: never, the run was
    /// stopped first).
    pub cut_at_s: Option<f64>,
    /// When it listened again, seconds from the start.
    pub back_at_s: Option<f64>,
    /// How long a gate waits for the node before it decides offline, milliseconds.
    pub online_timeout_ms: u64,
    /// Admits the node gave in time (`mode` online).
    pub admits_online: u64,
    /// Admits the gates decided themselves, from their replicas (`mode` offline).
    pub admits_offline: u64,
    /// Scans decided offline whose online request the node answered after all, once the
    /// gate reconnected (the client resends a scan still awaited): journaled as such; an
    /// admit answered so is not uploaded again. Absent if the journals could not be read.
    pub answered_late: Option<u64>,
    /// Offline scans uploaded: `checkin_offline` requests the node answered once back.
    pub uploads: u64,
    /// Conflicts the node recorded for this run's tickets.
    pub conflicts: u64,
    /// Tickets presented at two gates while the node was cut off, both times answered
    /// offline: the conflicts to expect.
    pub planted_duplicates: u64,
    /// Planted duplicates asked for (`--duplicates`, or as many as fit up to 20).
    pub planted_asked: u64,
    /// Seconds from the node's return until no gate's journal held a scan the node had not
    /// taken (polled every 50 ms; absent when the node never came back or the journals were
    /// not uploaded within the drain).
    pub reconciled_s: Option<f64>,
    /// A gate's time to answer, from presenting the code: answers the node gave in time.
    pub online_us: Option<Latency>,
    /// The same, answers the gate decided offline (its online timeout included).
    pub offline_us: Option<Latency>,
    /// Where the gates' certificates, replicas and journals are (kept after the run).
    pub gates_dir: String,
    /// Each check, in order.
    pub checks: Vec<OutageCheck>,
}

/// One thing the `outage` scenario checks.
#[derive(Debug, Clone, Serialize)]
pub struct OutageCheck {
    /// Its name (`no_gate_admits_twice`, …).
    pub name: String,
    /// Whether it held.
    pub passed: bool,
    /// What was found.
    pub detail: String,
}

impl OutageReport {
    /// The checks that failed.
    pub fn failed(&self) -> impl Iterator<Item = &OutageCheck> {
        self.checks.iter().filter(|c| !c.passed)
    }

    /// Lines of the summary.
    pub fn text(&self) -> String {
        let s = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1} s"));
        let mut out = format!(
            "  outage: node cut off at {} for {:.1} s, listening again at {}; gates decide \
             offline after {} ms\n",
            s(self.cut_at_s),
            self.outage_s,
            s(self.back_at_s),
            self.online_timeout_ms
        );
        let late = self.answered_late.map_or(String::new(), |n| {
            format!(" ({n} offline scans answered late)")
        });
        out.push_str(&format!(
            "  admits online {}, offline {}; uploads {}{late}; conflicts {}, planted \
             duplicates {} of {}; reconciled {} after the node was back\n",
            self.admits_online,
            self.admits_offline,
            self.uploads,
            self.conflicts,
            self.planted_duplicates,
            self.planted_asked,
            s(self.reconciled_s)
        ));
        let l = |name: &str, l: &Option<Latency>| {
            l.as_ref().map(|l| {
                format!(
                    "{name} p50 {} us  p99 {} us  max {} us",
                    l.p50, l.p99, l.max
                )
            })
        };
        let parts: Vec<String> = [l("online", &self.online_us), l("offline", &self.offline_us)]
            .into_iter()
            .flatten()
            .collect();
        if !parts.is_empty() {
            out.push_str(&format!("  a gate's answer: {}\n", parts.join(";  ")));
        }
        for c in &self.checks {
            let verdict = if c.passed { "ok" } else { "FAILED" };
            out.push_str(&format!("  check {}: {verdict}: {}\n", c.name, c.detail));
        }
        out
    }
}

/// Load-test tickets a run left in a node, and how to remove them.
#[derive(Debug, Clone, Serialize)]
pub struct LeftInNode {
    /// The partition they are in.
    pub partition: u16,
    /// How many this run minted there, its probe's included (tickets of earlier runs in the
    /// same partition stay too).
    pub tickets: u64,
    /// The command that drops every ticket of that partition: `stile purge --partition P
    /// --node ADDR --data DIR`.
    pub purge: String,
}

/// `word` as one shell word: as it is when it has nothing a shell would read, else in single
/// quotes.
pub fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,@%+".contains(&b));
    match plain {
        true => word.to_string(),
        false => format!("'{}'", word.replace('\'', "'\\''")),
    }
}

/// Words as a shell reads them: each quoted (`'…'`) unless it is plain.
pub fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_word(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One second of a target's own view: its check-ins' and its log's latency.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSecond {
    /// Seconds from the start of the run (as the client's timeline counts them).
    pub t_s: u64,
    /// Check-ins, from reading the request to writing the answer (a node only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkin_latency_us: Option<Quantiles>,
    /// `fdatasync` of the log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_us: Option<Quantiles>,
    /// Syncs in that second.
    pub syncs: u64,
}

impl NodeSecond {
    /// Second `t_s`, between a reading at its start and one at its end.
    pub fn between(
        t_s: u64,
        before: &crate::link::NodeReading,
        after: &crate::link::NodeReading,
    ) -> NodeSecond {
        NodeSecond {
            t_s,
            checkin_latency_us: match (&before.checkin_us, &after.checkin_us) {
                (Some(b), Some(a)) => Quantiles::of(&a.since(b)),
                _ => None,
            },
            fsync_us: Quantiles::of(&after.fsync_us.since(&before.fsync_us)),
            syncs: after.syncs.saturating_sub(before.syncs),
        }
    }
}

impl RunReport {
    /// How many tickets the run minted and why, and what it left in a node: lines of the
    /// summary.
    pub fn tickets_text(&self) -> String {
        let why = match (self.tickets_sized_by.as_str(), self.probe_rate_per_s) {
            ("probe", Some(rate)) => format!(
                "sized by a 1 s probe at {rate:.0}/s{}",
                if self.tickets_capped {
                    ", capped at the most a run mints"
                } else {
                    ""
                }
            ),
            ("rate", _) => format!(
                "sized to the rate over the run{}",
                if self.tickets_capped {
                    ", capped at the most a run mints"
                } else {
                    ""
                }
            ),
            _ => "as given".into(),
        };
        let mut out = format!("  tickets: {} minted ({why})\n", self.tickets);
        if let Some(left) = &self.left_in_node {
            out.push_str(&format!(
                "  left in the node: {} load-test tickets in partition {}, with any of earlier \
                 runs; remove them with: {}\n",
                left.tickets, left.partition, left.purge
            ));
        }
        out
    }

    /// What the figures point at, one sentence each: lost packets, and a client whose
    /// latency is mostly its own (or the network's) rather than the node's.
    pub fn notes(&self) -> Vec<String> {
        let ms = |us: u64| format!("{:.1} ms", us as f64 / 1000.0);
        let mut notes = Vec::new();
        if self.interrupted {
            notes.push(format!(
                "interrupted: the run was stopped early, and its figures cover the {:.1} s \
                 measured until then",
                self.measured_s
            ));
        }
        if self.tickets_ran_out && self.warmup_excluded && !self.interrupted {
            notes.push(format!(
                "the tickets ran out {:.1} s into the measured time, before it was up: the \
                 figures cover those {:.1} s, and towards their end fewer gates had tickets \
                 left to send (raise --tickets for a full run)",
                self.measured_s, self.measured_s
            ));
        }
        if self.timeouts + self.errors + u64::from(self.gates_lost) > 0 {
            notes.push(format!(
                "{} requests got no answer within {} s and {} failed, and {} of {} gates lost \
                 their connection: the target stopped answering or fell far behind, and each \
                 gate it left stopped sending; the throughput and latency count answered \
                 requests only",
                self.timeouts,
                crate::link::REQUEST_TIMEOUT.as_secs(),
                self.errors,
                self.gates_lost,
                self.gates
            ));
        }
        if let Some(q) = self.quic.filter(|q| q.packets_lost > 0) {
            notes.push(format!(
                "{} packets were lost and sent again; an answer behind one is late by a \
                 loss-detection delay (are the UDP buffers short? see the README)",
                q.packets_lost
            ));
        }
        let node = self.node.as_ref().and_then(|n| n.checkin_latency_us);
        if let Some(node) = node {
            let client = self.latency_us.p50;
            if client >= 1000 && client > 3 * node.p50 {
                notes.push(format!(
                    "the client's p50 ({}) is {:.0} times the node's ({}): most of the time \
                     is spent in the tester and on the way, not in the node (the tester used \
                     {:.0} % CPU)",
                    ms(client),
                    client as f64 / node.p50.max(1) as f64,
                    ms(node.p50),
                    self.client_cpu_percent
                ));
            }
        }
        if let Some(load) = self
            .machine_load
            .filter(|l| l.busy_percent + l.steal_percent >= BUSY_NOTE_PERCENT)
        {
            notes.push(format!(
                "the machine's CPUs were busy {:.0} % of the run and taken by the hypervisor \
                 {:.0} % (the tester's share {:.0} % of one CPU): requests waited for a CPU as \
                 well as for the target, and a node on these CPUs syncs more slowly under \
                 such load (see the README)",
                load.busy_percent, load.steal_percent, self.client_cpu_percent
            ));
        }
        // Only `always` answers after the sync; with `batch` or `none` a slow sync holds no
        // answer (a `none` log still syncs when a segment fills).
        if let Some(n) = self.node.as_ref().filter(|_| self.sync == "always") {
            if let Some(slow) = n
                .slow_sync_percent
                .filter(|&p| p >= SLOW_SHARE_NOTE_PERCENT)
            {
                notes.push(format!(
                    "the log spent {slow:.1} % of the measured time in {} syncs of {} ms or \
                     more: a check-in that arrives during one waits for the rest of it and \
                     then for its own sync, so at 1 % of the time or more the disk reaches the \
                     p99 (here {})",
                    n.slow_syncs,
                    SLOW_SYNC_US / 1000,
                    ms(self.latency_us.p99)
                ));
            }
        }
        notes
    }
}

/// Share of the measured time in slow syncs from which the summary names them, percent.
const SLOW_SHARE_NOTE_PERCENT: f64 = 1.0;

/// How much of the machine's CPU time must be busy or stolen by a hypervisor for the
/// summary to say that latencies include waiting for a CPU, percent.
const BUSY_NOTE_PERCENT: f64 = 90.0;

/// The whole machine's CPU time over a run, as shares of all its CPUs' time: what the tester
/// and anything beside it (a node on the same machine, the kernel) left over.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct MachineLoad {
    /// Running anything (user, system and interrupt time), percent.
    pub busy_percent: f64,
    /// Idle with a disk request outstanding, percent.
    pub iowait_percent: f64,
    /// Wanted to run while a hypervisor ran something else, percent.
    pub steal_percent: f64,
}

/// This process's resident memory, bytes (`/proc/self/statm`).
pub(crate) fn own_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * rustix::param::page_size() as u64)
}

/// The machine's cumulative CPU time, in clock ticks, from the `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    busy: u64,
    idle: u64,
    iowait: u64,
    steal: u64,
}

impl CpuTicks {
    /// Now (`None` where there is no `/proc/stat`).
    pub fn read() -> Option<CpuTicks> {
        CpuTicks::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the text of `/proc/stat`: user, nice, system, idle, iowait, irq, softirq, steal
    /// (guest time is already counted in user and nice).
    pub fn parse(stat: &str) -> Option<CpuTicks> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = f[..] else {
            return None;
        };
        Some(CpuTicks {
            busy: user + nice + system + irq + softirq,
            idle,
            iowait,
            steal,
        })
    }
}

impl MachineLoad {
    /// The shares between two readings (`None` when no time passed between them).
    pub fn between(before: &CpuTicks, after: &CpuTicks) -> Option<MachineLoad> {
        let busy = after.busy.saturating_sub(before.busy);
        let idle = after.idle.saturating_sub(before.idle);
        let iowait = after.iowait.saturating_sub(before.iowait);
        let steal = after.steal.saturating_sub(before.steal);
        let total = busy + idle + iowait + steal;
        let percent = |x: u64| 100.0 * x as f64 / total as f64;
        (total > 0).then(|| MachineLoad {
            busy_percent: percent(busy),
            iowait_percent: percent(iowait),
            steal_percent: percent(steal),
        })
    }

    /// `, machine busy 93 %, iowait 13 %, steal 9 %`.
    fn text(&self) -> String {
        format!(
            ", machine busy {:.0} %, iowait {:.0} %, steal {:.0} %",
            self.busy_percent, self.iowait_percent, self.steal_percent
        )
    }
}

/// Datagrams of a run over QUIC, the warm-up included, from the gates' side.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct QuicView {
    /// UDP datagrams the gates sent.
    pub datagrams_sent: u64,
    /// UDP datagrams the gates received.
    pub datagrams_received: u64,
    /// Packets the gates sent that QUIC declared lost and sent again: each one is an answer
    /// late by a loss-detection delay, so a few explain a latency tail.
    pub packets_lost: u64,
}

impl QuicView {
    /// Adds one connection's figures.
    pub fn add(&mut self, other: &QuicView) {
        self.datagrams_sent += other.datagrams_sent;
        self.datagrams_received += other.datagrams_received;
        self.packets_lost += other.packets_lost;
    }

    /// The summary line.
    fn text(&self) -> String {
        format!(
            "  QUIC: {} datagrams sent, {} received, {} packets lost\n",
            self.datagrams_sent, self.datagrams_received, self.packets_lost
        )
    }
}

/// What a node (or the engine in process) measured itself over the measured time.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    /// Its check-in latency, from reading a request to writing the answer, the wait for
    /// `fdatasync` included (a node only; microseconds, upper bucket edges).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkin_latency_us: Option<Quantiles>,
    /// Its `fdatasync` latency (microseconds, upper bucket edges); absent without a sync.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_us: Option<Quantiles>,
    /// `fdatasync` calls.
    pub syncs: u64,
    /// Records each sync made durable, on average.
    pub records_per_sync: Option<f64>,
    /// Share of the measured time the log spent in `fdatasync`, percent (absent without a
    /// sync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsync_busy_percent: Option<f64>,
    /// Syncs of [`SLOW_SYNC_US`] or longer.
    pub slow_syncs: u64,
    /// Share of the measured time the log spent in those slow syncs, percent (estimated from
    /// the histogram's buckets, each at most 3 % wide). Every check-in that arrives during
    /// one waits for it and then for its own sync, so this share, not the slow syncs' count,
    /// is what reaches the latency percentiles.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slow_sync_percent: Option<f64>,
}

/// A sync this long or longer counts as slow (microseconds): 5 ms, many times a healthy
/// disk's sync and, alone, a visible latency tail.
pub const SLOW_SYNC_US: u64 = 5_000;

/// Syncs of `from_us` or longer in `h`, and the time they took in microseconds (each
/// counted at the middle of its bucket).
fn syncs_from(h: &stile_protocol::histogram::Histogram, from_us: u64) -> (u64, f64) {
    h.buckets
        .iter()
        .map(|&(i, n)| (stile_protocol::histogram::bucket_range(usize::from(i)), n))
        .filter(|&((low, _), _)| low >= from_us)
        .fold((0, 0.0), |(count, us), ((low, high), n)| {
            (count + n, us + (low + high) as f64 / 2.0 * n as f64)
        })
}

/// Percentiles of a node's histogram (absent where it counted nothing).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantiles {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

impl Quantiles {
    fn of(h: &stile_protocol::histogram::Histogram) -> Option<Quantiles> {
        Some(Quantiles {
            p50: h.quantile(0.5)?,
            p99: h.quantile(0.99)?,
            p999: h.quantile(0.999)?,
        })
    }
}

impl NodeView {
    /// The view over the time between two readings.
    pub fn between(
        before: &crate::link::NodeReading,
        after: &crate::link::NodeReading,
    ) -> NodeView {
        let syncs = after.syncs.saturating_sub(before.syncs);
        let records = after.records.saturating_sub(before.records);
        let checkin = match (&before.checkin_us, &after.checkin_us) {
            (Some(b), Some(a)) => Quantiles::of(&a.since(b)),
            _ => None,
        };
        let fsync = after.fsync_us.since(&before.fsync_us);
        let elapsed_us = after.at.saturating_duration_since(before.at).as_micros() as f64;
        let share =
            |us: f64| (fsync.count() > 0 && elapsed_us > 0.0).then(|| us / elapsed_us * 100.0);
        let (slow_syncs, slow_us) = syncs_from(&fsync, SLOW_SYNC_US);
        NodeView {
            checkin_latency_us: checkin,
            fsync_us: Quantiles::of(&fsync),
            syncs,
            records_per_sync: (syncs > 0).then(|| records as f64 / syncs as f64),
            fsync_busy_percent: share(fsync.sum as f64),
            slow_syncs,
            // An estimate by buckets: never more than the exact time in all syncs.
            slow_sync_percent: share(slow_us.min(fsync.sum as f64)),
        }
    }

    fn text(&self) -> String {
        let q = |name: &str, q: &Option<Quantiles>| {
            q.map(|q| {
                format!(
                    "{name} p50 {} us  p99 {} us  p999 {} us",
                    q.p50, q.p99, q.p999
                )
            })
        };
        let mut parts: Vec<String> = [
            q("check-in", &self.checkin_latency_us),
            q("fsync", &self.fsync_us),
        ]
        .into_iter()
        .flatten()
        .collect();
        if let Some(r) = self.records_per_sync {
            parts.push(format!("{} syncs, {r:.1} records/sync", self.syncs));
        }
        if let (Some(busy), Some(slow)) = (self.fsync_busy_percent, self.slow_sync_percent) {
            parts.push(format!(
                "in fdatasync {busy:.0} % of the time, {slow:.1} % in {} syncs of {} ms or more",
                self.slow_syncs,
                SLOW_SYNC_US / 1000
            ));
        }
        // An engine that never synced (`--sync none` in process) has nothing to say.
        match parts.is_empty() {
            true => String::new(),
            false => format!("  its own view: {}\n", parts.join(";  ")),
        }
    }
}

/// The latency at one percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    /// Percent, 0 to 100.
    pub percent: f64,
    /// Microseconds.
    pub us: u64,
}

/// Percentiles plotted.
const PERCENTS: [f64; 14] = [
    0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 99.999, 100.0,
];

/// Percentiles of a histogram.
#[derive(Debug)]
pub struct Percentiles;

impl Percentiles {
    /// The latency of `h` at each plotted percentile.
    pub fn of(h: &hdrhistogram::Histogram<u64>) -> Vec<Percentile> {
        PERCENTS
            .iter()
            .map(|&percent| Percentile {
                percent,
                us: h.value_at_percentile(percent),
            })
            .collect()
    }
}

/// One second of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    /// Seconds from the start.
    pub t_s: u64,
    /// Whether it falls in the warm-up.
    pub warmup: bool,
    /// Requests due in this second and answered.
    pub requests: u64,
    /// Their latency, microseconds.
    pub latency_us: Latency,
}

impl Second {
    /// The series of a run's per-second histograms (seconds with no answers included, as
    /// zero), up to the end of the run: a second that starts at its end holds only a few
    /// stragglers and would plot as a collapse.
    pub fn series(
        per_second: &[hdrhistogram::Histogram<u64>],
        warmup: std::time::Duration,
        run: std::time::Duration,
    ) -> Vec<Second> {
        let seconds = run.as_secs_f64().ceil().max(1.0) as usize;
        per_second
            .iter()
            .take(seconds)
            .enumerate()
            .map(|(t, h)| Second {
                t_s: t as u64,
                warmup: (t as f64) < warmup.as_secs_f64(),
                requests: h.len(),
                latency_us: if h.is_empty() {
                    Latency {
                        p50: 0,
                        p99: 0,
                        p999: 0,
                        max: 0,
                    }
                } else {
                    Latency::of(h)
                },
            })
            .collect()
    }
}

/// One target against another, in the same invocation (and round).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The round both runs belong to, from 1.
    pub round: u32,
    /// The baseline's place among the compared targets (from 1).
    #[serde(skip)]
    pub slot: usize,
    /// The first target given.
    pub target: String,
    /// The one it is set against.
    pub baseline: String,
    /// Throughput of `target` over throughput of `baseline`.
    pub throughput: f64,
    /// p50 latency of `target` over that of `baseline` (below 1: faster).
    pub p50: f64,
    /// Same, p99.
    pub p99: f64,
    /// Same, p99.9.
    pub p999: f64,
}

impl Ratio {
    /// In each round, the run of the first target (slot 0) set against each other run of
    /// that round. A round whose first target has no run (it failed) gives none, and a run
    /// cut short by an interrupt, or that measured nothing, is set against nothing.
    pub fn of(runs: &[RunReport]) -> Vec<Ratio> {
        let div = |a: u64, b: u64| a as f64 / (b.max(1)) as f64;
        let whole = |r: &&RunReport| !r.interrupted && r.requests > 0;
        let mut out = Vec::new();
        let mut rounds: Vec<u32> = runs.iter().map(|r| r.round).collect();
        rounds.dedup();
        for round in rounds {
            let these = || runs.iter().filter(move |r| r.round == round).filter(whole);
            let Some(a) = these().find(|r| r.slot == 0) else {
                continue;
            };
            out.extend(these().filter(|b| b.slot > 0).map(|b| Ratio {
                round,
                slot: b.slot,
                target: a.target.clone(),
                baseline: b.target.clone(),
                throughput: a.throughput_per_s / b.throughput_per_s.max(1e-9),
                p50: div(a.latency_us.p50, b.latency_us.p50),
                p99: div(a.latency_us.p99, b.latency_us.p99),
                p999: div(a.latency_us.p999, b.latency_us.p999),
            }));
        }
        out
    }
}

/// The ratios of one pair of targets over several rounds: each figure's median, and the
/// throughput ratio's range.
#[derive(Debug, Clone, Serialize)]
pub struct RatioMedian {
    /// The first target given.
    pub target: String,
    /// The one it is set against.
    pub baseline: String,
    /// Rounds with a ratio for this pair.
    pub rounds: usize,
    /// Median throughput ratio.
    pub throughput: f64,
    /// Lowest throughput ratio of a round.
    pub throughput_min: f64,
    /// Highest throughput ratio of a round.
    pub throughput_max: f64,
    /// Median p50 ratio.
    pub p50: f64,
    /// Median p99 ratio.
    pub p99: f64,
    /// Median p99.9 ratio.
    pub p999: f64,
}

impl RatioMedian {
    /// One per baseline (by its place among the targets), in order, when the ratios come
    /// from more than one round.
    pub fn of(ratios: &[Ratio]) -> Vec<RatioMedian> {
        let mut slots: Vec<usize> = ratios.iter().map(|q| q.slot).collect();
        slots.sort_unstable();
        slots.dedup();
        let out: Vec<RatioMedian> = slots
            .into_iter()
            .map(|slot| {
                let these: Vec<&Ratio> = ratios.iter().filter(|q| q.slot == slot).collect();
                let (target, baseline) = (&these[0].target, &these[0].baseline);
                let of = |f: fn(&Ratio) -> f64| median(these.iter().map(|q| f(q)).collect());
                let throughputs = these.iter().map(|q| q.throughput);
                RatioMedian {
                    target: target.to_string(),
                    baseline: baseline.to_string(),
                    rounds: these.len(),
                    throughput: of(|q| q.throughput),
                    throughput_min: throughputs.clone().fold(f64::INFINITY, f64::min),
                    throughput_max: throughputs.fold(f64::NEG_INFINITY, f64::max),
                    p50: of(|q| q.p50),
                    p99: of(|q| q.p99),
                    p999: of(|q| q.p999),
                }
            })
            .collect();
        let mut rounds: Vec<u32> = ratios.iter().map(|q| q.round).collect();
        rounds.dedup();
        match rounds.len() > 1 {
            true => out,
            false => Vec::new(),
        }
    }
}

/// The median of `v` (the mean of the middle two for an even count); 0 for none.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() % 2 {
        1 => v[mid],
        _ => (v[mid - 1] + v[mid]) / 2.0,
    }
}

/// The machine a report was made on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub cpus: usize,
    /// CPU model.
    pub cpu: String,
    /// Operating system.
    pub os: String,
}

impl Machine {
    /// This machine.
    pub fn this() -> Machine {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            cpu,
            os: std::env::consts::OS.to_string(),
        }
    }
}

/// The `--json` document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The version of stile that ran it.
    pub version: String,
    /// The command line, as a shell would read it back.
    pub command: String,
    /// When it started (UTC, RFC 3339).
    pub date: String,
    /// Scenario name.
    pub scenario: String,
    /// Seed of the random choices.
    pub seed: u64,
    /// Where it ran.
    pub machine: Machine,
    /// One entry per target.
    pub runs: Vec<RunReport>,
    /// With several targets: the first against each other one, in each round.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratios: Vec<Ratio>,
    /// With several rounds: each pair's ratios' medians.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ratio_medians: Vec<RatioMedian>,
    /// The runs' history, checked (`--check-history`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryCheck>,
}

/// What `--check-history` found in the runs' history.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryCheck {
    /// The history file.
    pub file: String,
    /// `consistent`, `violation` or `undecided` (see `stile history check`).
    pub verdict: String,
    /// Operations checked (resends of a scan id merged).
    pub operations: u64,
    /// Tickets declared.
    pub tickets: u64,
    /// Operations that got no answer.
    pub indeterminate: u64,
    /// The checker's words: the counts, or the first violation with its operations.
    pub summary: String,
}

impl Report {
    /// The text summary.
    pub fn text(&self) -> String {
        let mut out = format!("scenario {} (seed {})\n", self.scenario, self.seed);
        for r in &self.runs {
            let rate = match r.requested_rate {
                Some(rate) => format!(
                    "open loop at {rate:.0}/s ({})",
                    r.shape.as_deref().unwrap_or("flat")
                ),
                None => "closed loop".to_string(),
            };
            out.push_str(&format!(
                "{}  sync {}  {rate}  {} gates x {} in flight  {} requests in {:.1} s: {:.0}/s  \
                 p50 {} us  p99 {} us  p999 {} us  max {} us\n",
                r.target,
                r.sync,
                r.gates,
                r.inflight,
                r.requests,
                r.measured_s,
                r.throughput_per_s,
                r.latency_us.p50,
                r.latency_us.p99,
                r.latency_us.p999,
                r.latency_us.max
            ));
            let outcomes: Vec<String> =
                r.outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!(
                "  outcomes: {}; errors {}, timeouts {}, double admits {}, client CPU {:.0}%{}\n",
                outcomes.join(", "),
                r.errors,
                r.timeouts,
                r.double_admits,
                r.client_cpu_percent,
                r.machine_load.map(|l| l.text()).unwrap_or_default()
            ));
            let mut cost = Vec::new();
            if let Some(us) = r.server_cpu_us_per_request {
                cost.push(format!("server CPU {us:.1} us/request"));
            }
            if let Some(d) = r.datagrams_per_request {
                cost.push(format!("{d:.2} datagrams/request"));
            }
            if let Some(b) = r.server_memory_per_gate_bytes {
                cost.push(format!("server memory {:.1} KiB/gate", b / 1024.0));
            }
            if !cost.is_empty() {
                out.push_str(&format!("  cost: {}\n", cost.join(", ")));
            }
            // The outage scenario's gates reconnect by themselves: its own lines say it all.
            if r.outage.is_none() && r.faults + r.reconnects + r.indeterminate > 0 {
                out.push_str(&format!(
                    "  faults {}, reconnects {}, indeterminate {}\n",
                    r.faults, r.reconnects, r.indeterminate
                ));
            }
            if let Some(o) = &r.outage {
                out.push_str(&o.text());
            }
            if let Some(node) = &r.node {
                out.push_str(&node.text());
            }
            if let Some(quic) = &r.quic {
                out.push_str(&quic.text());
            }
            out.push_str(&r.tickets_text());
            for note in r.notes() {
                out.push_str(&format!("  note: {note}\n"));
            }
        }
        let rounds = self.runs.iter().map(|r| r.round).max().unwrap_or(1);
        for q in &self.ratios {
            if rounds > 1 {
                out.push_str(&format!("round {}: ", q.round));
            }
            out.push_str(&format!(
                "{} vs {}: throughput x{:.2}, p50 x{:.2}, p99 x{:.2}, p999 x{:.2}\n",
                q.target, q.baseline, q.throughput, q.p50, q.p99, q.p999
            ));
        }
        for m in &self.ratio_medians {
            out.push_str(&format!(
                "median of {} rounds: {} vs {}: throughput x{:.2} (x{:.2} to x{:.2}), p50 x{:.2}, \
                 p99 x{:.2}, p999 x{:.2}\n",
                m.rounds,
                m.target,
                m.baseline,
                m.throughput,
                m.throughput_min,
                m.throughput_max,
                m.p50,
                m.p99,
                m.p999
            ));
        }
        if let Some(h) = &self.history {
            out.push_str(&format!("history {}: {}\n", h.file, h.summary));
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A run against a node whose client's p50 is `client_p50`, with the node's own view
    /// (its check-in p50 `node_p50`) and QUIC's count of lost packets when given.
    pub(crate) fn run(client_p50: u64, node_p50: Option<u64>, lost: Option<u64>) -> RunReport {
        RunReport {
            target: "quic://127.0.0.1:7443".into(),
            round: 1,
            slot: 0,
            sync: "always".into(),
            mode: "open".into(),
            shape: Some("flat".into()),
            gates: 64,
            inflight: 16,
            requested_rate: Some(50_000.0),
            requests: 500_000,
            throughput_per_s: 50_000.0,
            measured_s: 10.0,
            warmup_excluded: true,
            tickets_ran_out: false,
            latency_us: Latency {
                p50: client_p50,
                p99: client_p50 * 3,
                p999: client_p50 * 4,
                max: client_p50 * 5,
            },
            outcomes: BTreeMap::new(),
            errors: 0,
            timeouts: 0,
            double_admits: 0,
            forged_admits: 0,
            client_cpu_percent: 80.0,
            server_cpu_us_per_request: Some(21.5),
            datagrams_per_request: Some(2.1),
            server_memory_per_gate_bytes: Some(20480.0),
            interrupted: false,
            gates_lost: 0,
            tickets: 500_000,
            tickets_sized_by: "given".into(),
            probe_rate_per_s: None,
            tickets_capped: false,
            node_timeline: Vec::new(),
            left_in_node: None,
            faults: 0,
            reconnects: 0,
            indeterminate: 0,
            outage: None,
            machine_load: None,
            percentiles: Vec::new(),
            timeline: Vec::new(),
            node: node_p50.map(|p50| NodeView {
                checkin_latency_us: Some(Quantiles {
                    p50,
                    p99: p50 * 2,
                    p999: p50 * 3,
                }),
                fsync_us: None,
                syncs: 0,
                records_per_sync: None,
                fsync_busy_percent: None,
                slow_syncs: 0,
                slow_sync_percent: None,
            }),
            quic: lost.map(|packets_lost| QuicView {
                datagrams_sent: 1000,
                datagrams_received: 1000,
                packets_lost,
            }),
        }
    }

    /// The summary says how many tickets were minted and why, and what a run left in a
    /// node with the command that removes them, quoted for a shell where need be.
    #[test]
    fn the_summary_says_what_was_minted_and_left_and_how_to_remove_it() {
        let mut r = run(2_500, Some(2_000), Some(0));
        assert_eq!(r.tickets_text(), "  tickets: 500000 minted (as given)\n");
        (r.tickets_sized_by, r.probe_rate_per_s) = ("probe".into(), Some(41_000.4));
        let words: Vec<String> = ["stile", "purge", "--data", "my data", "--node", "it's"]
            .map(String::from)
            .into();
        r.left_in_node = Some(LeftInNode {
            partition: 65535,
            tickets: 700_000,
            purge: shell_words(&words),
        });
        let text = r.tickets_text();
        assert_eq!(
            text,
            "  tickets: 500000 minted (sized by a 1 s probe at 41000/s)\n  left in the node: \
             700000 load-test tickets in partition 65535, with any of earlier runs; remove \
             them with: stile purge --data 'my data' --node 'it'\\''s'\n"
        );
        r.tickets_sized_by = "rate".into();
        r.tickets_capped = true;
        assert!(r
            .tickets_text()
            .starts_with("  tickets: 500000 minted (sized to the rate over the run, capped"));
    }

    #[test]
    fn unanswered_requests_get_a_note() {
        let mut r = run(2_500, Some(2_000), Some(0));
        assert!(r.notes().is_empty());
        r.timeouts = 1024;
        let notes = r.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("1024 requests got no answer within 10 s and 0 failed"));
        r.timeouts = 0;
        r.errors = 3;
        assert!(r.notes()[0].contains("and 3 failed"), "{:?}", r.notes());
        // A gate that lost its link with nothing in flight still counts.
        r.errors = 0;
        r.gates_lost = 2;
        assert!(
            r.notes()[0].contains("2 of 64 gates lost"),
            "{:?}",
            r.notes()
        );
    }

    #[test]
    fn a_run_whose_tickets_ran_out_says_so() {
        let mut r = run(2_500, Some(2_000), Some(0));
        r.measured_s = 7.2;
        r.tickets_ran_out = true;
        let notes = r.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with("the tickets ran out 7.2 s into the measured time")
                && notes[0].contains("raise --tickets"),
            "{notes:?}"
        );
        // Ran out during the warm-up: the warning at the time says so, and the figures
        // include the warm-up; stopped by hand: the interrupt's note says it.
        r.warmup_excluded = false;
        assert!(r.notes().is_empty());
        r.warmup_excluded = true;
        r.interrupted = true;
        let notes = r.notes();
        assert!(notes[0].starts_with("interrupted"), "{notes:?}");
        assert!(
            !notes.iter().any(|n| n.contains("tickets ran out")),
            "{notes:?}"
        );
    }

    #[test]
    fn notes_name_lost_packets_and_a_client_slower_than_the_node() {
        let slow_client = run(16_000, Some(2_300), Some(0));
        let notes = slow_client.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("16.0 ms") && notes[0].contains("2.3 ms"),
            "{notes:?}"
        );
        assert!(notes[0].contains("7 times"), "{notes:?}");

        let lossy = run(2_500, Some(2_000), Some(42));
        let notes = lossy.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].starts_with("42 packets were lost"), "{notes:?}");

        // Close to the node, nothing lost, or no node to compare with: nothing to say.
        assert!(run(2_500, Some(2_000), Some(0)).notes().is_empty());
        assert!(run(900, Some(100), Some(0)).notes().is_empty());
        assert!(run(16_000, None, None).notes().is_empty());

        let report = Report {
            version: "0.1.0".into(),
            command: "stile loadtest".into(),
            date: "2026-01-01T00:00:00Z".into(),
            scenario: "stadium".into(),
            seed: 1,
            machine: Machine::this(),
            runs: vec![slow_client],
            ratios: Vec::new(),
            ratio_medians: Vec::new(),
            history: None,
        };
        assert!(report
            .text()
            .contains("\n  note: the client's p50 (16.0 ms)"));
    }

    /// The machine's load comes from the `cpu` line of `/proc/stat`, as shares of all the
    /// time between two readings; a machine busy or stolen from 90 % of the time or more
    /// gets a note.
    #[test]
    fn the_machine_load_is_read_from_proc_stat() {
        let before = CpuTicks::parse(
            "cpu  100 0 50 800 40 5 5 0 0 0\ncpu0 50 0 25 400 20 2 3 0 0 0\nintr 1\n",
        )
        .unwrap();
        // Then 100 ticks: 70 user, 5 nice, 10 system, 2 irq, 3 softirq (90 busy), 2 idle,
        // 3 iowait, 5 steal.
        let after =
            CpuTicks::parse("cpu  170 5 60 802 43 7 8 5 9 0\ncpu0 85 2 30 401 21 3 4 2 4 0\n")
                .unwrap();
        let load = MachineLoad::between(&before, &after).unwrap();
        assert_eq!(
            (load.busy_percent, load.iowait_percent, load.steal_percent),
            (90.0, 3.0, 5.0)
        );
        assert_eq!(MachineLoad::between(&after, &after), None);
        assert_eq!(CpuTicks::parse("cpu  1 2 3\n"), None, "too few fields");
        assert_eq!(
            CpuTicks::parse("cpu0 1 2 3 4 5 6 7 8\n"),
            None,
            "no total line"
        );
        if cfg!(target_os = "linux") {
            assert!(CpuTicks::read().is_some(), "this machine has /proc/stat");
        }

        let mut r = run(2_500, Some(2_000), Some(0));
        r.machine_load = Some(load);
        let notes = r.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(
                "the machine's CPUs were busy 90 % of the run and taken by the hypervisor 5 % \
                 (the tester's share 80 %"
            ),
            "{notes:?}"
        );
        // Time the hypervisor took counts: 86 % busy and 5 % stolen is past 90.
        r.machine_load = Some(MachineLoad {
            busy_percent: 86.0,
            ..load
        });
        assert_eq!(r.notes().len(), 1, "{:?}", r.notes());
        r.machine_load = Some(MachineLoad {
            busy_percent: 84.0,
            ..load
        });
        assert!(r.notes().is_empty(), "{:?}", r.notes());
        let report = Report {
            version: "0.1.0".into(),
            command: "stile loadtest".into(),
            date: "2026-01-01T00:00:00Z".into(),
            scenario: "stadium".into(),
            seed: 1,
            machine: Machine::this(),
            runs: vec![r],
            ratios: Vec::new(),
            ratio_medians: Vec::new(),
            history: None,
        };
        assert!(
            report
                .text()
                .contains("client CPU 80%, machine busy 84 %, iowait 3 %, steal 5 %\n"),
            "{}",
            report.text()
        );
    }

    /// A reading of a log that made `syncs` syncs of each length (microseconds) since it
    /// started, read `at`.
    fn reading(syncs: &[(u64, u64)], at: std::time::Instant) -> crate::link::NodeReading {
        use stile_protocol::histogram::bucket_of;
        let mut buckets: Vec<(u16, u64)> = syncs
            .iter()
            .map(|&(us, n)| (bucket_of(us) as u16, n))
            .collect();
        buckets.sort_unstable();
        crate::link::NodeReading {
            checkin_us: None,
            fsync_us: stile_protocol::histogram::Histogram {
                sum: syncs.iter().map(|&(us, n)| us * n).sum(),
                buckets,
            },
            syncs: syncs.iter().map(|&(_, n)| n).sum(),
            records: 0,
            at,
        }
    }

    /// The own view counts the time in syncs between two readings against the time between
    /// them, and the share in slow ones apart; a run with that share at 1 % or more gets a
    /// note that names the disk.
    #[test]
    fn the_view_weighs_slow_syncs_by_the_time_they_took() {
        let t0 = std::time::Instant::now();
        let before = reading(&[(200, 1_000), (12_000, 1)], t0);
        // One second later: 4,000 more syncs of 0.2 ms (0.8 s), 3 more of 12 ms and 2 of
        // 40 ms (0.116 s): 91.6 % of the time in syncs, 11.6 % in slow ones. One of 4 ms is
        // not slow.
        let after = reading(
            &[(200, 5_000), (4_000, 1), (12_000, 4), (40_000, 2)],
            t0 + std::time::Duration::from_secs(1),
        );
        let v = NodeView::between(&before, &after);
        let busy = v.fsync_busy_percent.unwrap();
        assert!((busy - 92.0).abs() < 0.01, "{v:?}");
        assert_eq!(v.slow_syncs, 5, "{v:?}");
        let slow = v.slow_sync_percent.unwrap();
        assert!((slow - 11.6).abs() < 11.6 * 0.02, "{v:?}");
        assert!(
            v.text()
                .contains(&format!("{slow:.1} % in 5 syncs of 5 ms or more")),
            "{}",
            v.text()
        );

        let mut r = run(2_500, Some(2_000), Some(0));
        r.node = Some(v);
        let notes = r.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "the log spent {slow:.1} % of the measured time in 5 syncs of 5 ms"
            )),
            "{notes:?}"
        );

        // Fast syncs only: no share in slow ones, no note.
        let quiet = reading(&[(200, 2_000)], t0 + std::time::Duration::from_secs(1));
        let v = NodeView::between(&reading(&[], t0), &quiet);
        assert_eq!((v.slow_syncs, v.slow_sync_percent), (0, Some(0.0)));
        r.node = Some(v);
        assert!(r.notes().is_empty(), "{:?}", r.notes());
        // A node that does not wait for its syncs: no note, whatever they took.
        r.node = Some(NodeView::between(&before, &after));
        for sync in ["none", "batch"] {
            r.sync = sync.into();
            assert!(r.notes().is_empty(), "{sync}: {:?}", r.notes());
        }
        // No sync at all (a log that never synced): no shares.
        let v = NodeView::between(&reading(&[], t0), &reading(&[], t0));
        assert_eq!((v.fsync_busy_percent, v.slow_sync_percent), (None, None));
    }

    /// Each round's first target is set against that round's others; a round whose first
    /// target failed gives no ratio, nor does a run cut short or empty; baselines are told
    /// apart by their place, not their name; the medians take every round, an even count the
    /// mean of the middle two, and one round gives none.
    #[test]
    fn ratios_are_taken_within_each_round_and_their_medians_across() {
        let at = |round: u32, slot: usize, target: &str, per_s: f64, p50: u64| {
            let mut r = run(p50, None, None);
            (r.round, r.slot, r.target, r.throughput_per_s) = (round, slot, target.into(), per_s);
            r
        };
        let (a, b) = ("quic://a", "redis://b");
        let mut cut_short = at(5, 1, b, 1.0, 1);
        cut_short.interrupted = true;
        let mut empty = at(5, 2, b, 0.0, 0);
        empty.requests = 0;
        let runs = vec![
            at(1, 0, a, 300.0, 10),
            at(1, 1, b, 100.0, 20),
            at(1, 2, b, 150.0, 10),
            at(2, 0, a, 200.0, 10),
            at(2, 1, b, 100.0, 40),
            at(3, 1, b, 100.0, 40), // round 3's first target failed
            at(4, 0, a, 360.0, 10),
            at(4, 1, b, 90.0, 10),
            at(5, 0, a, 100.0, 10),
            cut_short,
            empty,
        ];
        let ratios = Ratio::of(&runs);
        let got: Vec<(u32, usize, f64, f64)> = ratios
            .iter()
            .map(|q| (q.round, q.slot, q.throughput, q.p50))
            .collect();
        assert_eq!(
            got,
            [
                (1, 1, 3.0, 0.5),
                (1, 2, 2.0, 1.0),
                (2, 1, 2.0, 0.25),
                (4, 1, 4.0, 1.0)
            ]
        );
        let medians = RatioMedian::of(&ratios);
        assert_eq!(medians.len(), 2, "one per baseline, though both are {b}");
        let m = &medians[0];
        assert_eq!((m.target.as_str(), m.baseline.as_str()), (a, b));
        assert_eq!(m.rounds, 3);
        assert_eq!(
            (m.throughput, m.throughput_min, m.throughput_max),
            (3.0, 2.0, 4.0)
        );
        assert_eq!(m.p50, 0.5);
        assert_eq!((medians[1].rounds, medians[1].throughput), (1, 2.0));
        // An even count: the middle two's mean.
        assert_eq!(
            RatioMedian::of(&[&ratios[..1], &ratios[2..3]].concat())[0].throughput,
            2.5
        );
        // One round, even with two baselines: no medians.
        assert!(RatioMedian::of(&ratios[..2]).is_empty());
        let ratios: Vec<Ratio> = ratios.into_iter().filter(|q| q.slot == 1).collect();
        let medians = RatioMedian::of(&ratios);
        let text = Report {
            version: "0.1.0".into(),
            command: "stile loadtest".into(),
            date: "2026-01-01T00:00:00Z".into(),
            scenario: "stadium".into(),
            seed: 1,
            machine: Machine::this(),
            ratio_medians: medians,
            history: None,
            ratios,
            runs,
        }
        .text();
        assert!(
            text.contains("round 2: quic://a vs redis://b: throughput x2.00"),
            "{text}"
        );
        assert!(
            text.contains(
                "median of 3 rounds: quic://a vs redis://b: throughput x3.00 (x2.00 to x4.00)"
            ),
            "{text}"
        );
    }
}
