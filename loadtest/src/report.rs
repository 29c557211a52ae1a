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
    /// `always`, `batch`, `none` (or `unknown` when the target does not say).
    pub sync: String,
    /// `closed` (as fast as answers come) or `open` (a fixed rate).
    pub mode: String,
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
    /// Latency from send to answer.
    pub latency_us: Latency,
    /// Answers by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that failed without an answer.
    pub errors: u64,
    /// Requests with no answer in time.
    pub timeouts: u64,
    /// Admits beyond the first of any ticket (must be 0).
    pub double_admits: u64,
    /// CPU time of this process over wall time, percent (200 = both cores of two).
    pub client_cpu_percent: f64,
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
    /// Scenario name.
    pub scenario: String,
    /// Seed of the random choices.
    pub seed: u64,
    /// Where it ran.
    pub machine: Machine,
    /// One entry per target.
    pub runs: Vec<RunReport>,
}

impl Report {
    /// The text summary.
    pub fn text(&self) -> String {
        let mut out = format!("scenario {} (seed {})\n", self.scenario, self.seed);
        for r in &self.runs {
            out.push_str(&format!(
                "{}  sync {}  {} gates x {} in flight  {} requests in {:.1} s: {:.0}/s  \
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
                "  outcomes: {}; errors {}, timeouts {}, double admits {}, client CPU {:.0}%\n",
                outcomes.join(", "),
                r.errors,
                r.timeouts,
                r.double_admits,
                r.client_cpu_percent
            ));
        }
        out
    }
}
