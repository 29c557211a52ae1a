//! `--report DIR`: an HTML page with the run's figures and SVG plots (latency by
//! percentile; latency over time as the client saw it and, beside it on the same scale, as
//! the node saw it, check-ins and fsyncs; throughput over time), one colour per run. The
//! page opens with the date, the stile version and the exact command line. The plots are
//! also written as files of their own; each keeps its legend in a strip below the axes, never
//! over the lines, its axes fitted to the data, and its text at 12 px or more.

use std::fmt::Write as _;
use std::path::Path;

use plotters::coord::combinators::{BindKeyPoints, LogCoord, WithKeyPoints};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

use crate::output::write_whole;
use crate::report::{Quantiles, Report, RunReport};

/// Plot size, pixels (legend strip included).
const SIZE: (u32, u32) = (900, 460);
/// Size of the two plots over time that sit side by side.
const HALF: (u32, u32) = (700, 460);
/// The percentile axis ends at 99.999 (five nines).
const NINES_MAX: f64 = 5.0;
/// Font sizes as plotters takes them: SVG text comes out at 1/1.24 of these, so the
/// smallest, 16, is drawn at 12.9 px.
const FONT_LABEL: u32 = 16;
const FONT_DESC: u32 = 18;
const FONT_CAPTION: u32 = 22;
/// Height of one row of the legend strip, pixels.
const LEGEND_ROW: u32 = 24;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    /// The directory cannot be made.
    #[error("--report {0}: cannot make the directory")]
    Dir(std::path::PathBuf, #[source] std::io::Error),
    /// Writing a file failed.
    #[error(transparent)]
    Write(#[from] crate::output::OutputError),
    /// Drawing failed.
    #[error("drawing {0}")]
    Draw(String),
}

/// Writes `DIR/index.html` and the plots beside it.
pub fn write(report: &Report, dir: &Path) -> Result<(), HtmlError> {
    std::fs::create_dir_all(dir).map_err(|e| HtmlError::Dir(dir.to_path_buf(), e))?;
    let plots = plots(&report.runs)?;
    for plot in &plots {
        write_whole(&dir.join(plot.file), plot.svg.as_bytes())?;
    }
    write_whole(&dir.join("index.html"), page(report, &plots).as_bytes())?;
    Ok(())
}

/// One plot of the report.
struct Plot {
    /// Its file name.
    file: &'static str,
    /// What it shows, under it.
    caption: &'static str,
    /// The SVG.
    svg: String,
    /// Drawn beside the plot before it (the node's view beside the client's).
    beside_previous: bool,
}

/// Every plot of the report: the node's view only when a run has one.
fn plots(runs: &[RunReport]) -> Result<Vec<Plot>, HtmlError> {
    // The client's and the node's latency over time share one scale, so they compare.
    let over_time = &fitted_log(
        runs.iter()
            .flat_map(|r| r.timeline.iter().filter(|s| s.requests > 0))
            .flat_map(|s| [s.latency_us.p50, s.latency_us.p99])
            .chain(node_values(runs)),
    );
    let mut plots = vec![
        Plot {
            file: "latency-percentiles.svg",
            caption: "The client's latency by percentile",
            svg: percentile_plot(runs)?,
            beside_previous: false,
        },
        Plot {
            file: "latency-over-time.svg",
            caption: "The client's latency over time: p50 thick, p99 thin",
            svg: latency_plot(runs, over_time)?,
            beside_previous: false,
        },
    ];
    if runs.iter().any(|r| !r.node_timeline.is_empty()) {
        plots.push(Plot {
            file: "node-latency-over-time.svg",
            caption: "The node's own view over time, on the same scale: check-in (from reading \
                      a request to writing its answer) solid, fsync of its log dashed; p50 \
                      thick, p99 thin",
            svg: node_plot(runs, over_time)?,
            beside_previous: true,
        });
    }
    plots.push(Plot {
        file: "throughput-over-time.svg",
        caption: "Throughput over time",
        svg: throughput_plot(runs)?,
        beside_previous: false,
    });
    Ok(plots)
}

/// Every p50 and p99 of the runs' node timelines.
fn node_values(runs: &[RunReport]) -> impl Iterator<Item = u64> + '_ {
    runs.iter()
        .flat_map(|r| &r.node_timeline)
        .flat_map(|s| [s.checkin_latency_us, s.fsync_us])
        .flatten()
        .flat_map(|q| [q.p50, q.p99])
}

/// A log axis fitted to `values` (microseconds): from the step of 1, 2 or 5 times a power
/// of ten at or below the smallest to the one at or above a tenth more than the largest,
/// labelled at each such step between (…, 50, 100, 200, 500, …).
#[derive(Debug, Clone, PartialEq)]
struct LogAxis {
    lo: u64,
    hi: u64,
    /// Labelled values.
    ticks: Vec<u64>,
    /// Faint lines: every whole multiple of each power of ten in the range.
    lines: Vec<u64>,
}

/// The step after `v` in 1, 2, 5, 10, 20, 50, …
fn next_125(v: u64) -> Option<u64> {
    match v / 10u64.pow(v.ilog10()) {
        2 => v.checked_mul(5).map(|w| w / 2),
        _ => v.checked_mul(2),
    }
}

/// 1, 2, 5, 10, 20, 50, … up to the first at or past `limit`.
fn steps_125(limit: u64) -> impl Iterator<Item = u64> {
    let mut next = Some(1u64);
    std::iter::from_fn(move || {
        let v = next?;
        next = if v >= limit { None } else { next_125(v) };
        Some(v)
    })
}

fn fitted_log(values: impl Iterator<Item = u64>) -> LogAxis {
    let (min, max) = values
        .filter(|&v| v > 0)
        .fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    // Nothing to plot: one decade.
    let (min, top) = if max == 0 {
        (1, 10)
    } else {
        (min, max + max / 10)
    };
    let lo = steps_125(min).take_while(|&s| s <= min).last().unwrap_or(1);
    let hi = steps_125(top).last().unwrap_or(10).max(lo * 2);
    let ticks = steps_125(hi).filter(|&s| s >= lo).collect();
    let lines = (0..=hi.ilog10())
        .flat_map(|e| (1..10).map(move |k| k * 10u64.pow(e)))
        .filter(|&v| v >= lo && v <= hi)
        .collect();
    LogAxis {
        lo,
        hi,
        ticks,
        lines,
    }
}

impl LogAxis {
    /// The coordinate: log scale, labelled at the ticks, faint lines at the others.
    fn coord(&self) -> WithKeyPoints<LogCoord<u64>> {
        (self.lo..self.hi)
            .log_scale()
            .with_key_points(self.ticks.clone())
            .with_light_points(self.lines.clone())
    }
}

/// A linear axis fitted to `values`: a tenth of their spread below and above, or a
/// twentieth of the largest when they hardly spread (a steady rate), not below zero.
fn fitted_linear(values: impl Iterator<Item = u64>) -> (u64, u64) {
    let (lo, hi) = values.fold((u64::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if lo > hi {
        return (0, 1);
    }
    let pad = ((hi - lo) / 10).max(hi / 20).max(1);
    (lo.saturating_sub(pad), hi + pad)
}

/// `x` of a percentile on the "nines" axis: 90 → 1, 99 → 2, 99.9 → 3.
fn nines(percent: f64) -> f64 {
    let rest = (100.0 - percent) / 100.0;
    if rest <= 0.0 {
        NINES_MAX
    } else {
        (-rest.log10()).min(NINES_MAX)
    }
}

fn draw_err(e: impl std::fmt::Display) -> HtmlError {
    HtmlError::Draw(e.to_string())
}

/// How a legend entry's line is drawn.
#[derive(Clone, Copy)]
struct Stroke {
    color: RGBAColor,
    width: u32,
    dashed: bool,
}

impl Stroke {
    fn style(self) -> ShapeStyle {
        self.color.stroke_width(self.width)
    }
}

/// Splits `root` into the plot's area and a strip below it for `entries` legend entries
/// of at most `widest` characters.
fn with_legend_strip<'a>(
    root: &DrawingArea<SVGBackend<'a>, Shift>,
    entries: &[(String, Stroke)],
) -> (
    DrawingArea<SVGBackend<'a>, Shift>,
    DrawingArea<SVGBackend<'a>, Shift>,
) {
    let (w, h) = root.dim_in_pixel();
    let rows = legend_rows(entries, w);
    root.split_vertically(h - rows.len() as u32 * LEGEND_ROW - 8)
}

/// Entries laid out left to right, a row at a time, within `width` pixels.
fn legend_rows(entries: &[(String, Stroke)], width: u32) -> Vec<Vec<(String, Stroke)>> {
    let mut rows: Vec<Vec<(String, Stroke)>> = vec![Vec::new()];
    let mut used = 0;
    for (label, stroke) in entries {
        let need = entry_width(label);
        if used + need > width && !rows.last().expect("a row").is_empty() {
            rows.push(Vec::new());
            used = 0;
        }
        rows.last_mut()
            .expect("a row")
            .push((label.clone(), *stroke));
        used += need;
    }
    rows
}

/// Pixels an entry takes: its line, a gap, its text (at most 8 px a character at this
/// size), a gap.
fn entry_width(label: &str) -> u32 {
    12 + 28 + 8 + 8 * label.chars().count() as u32 + 16
}

/// Draws the legend strip: each entry's line as it is drawn in the plot, then its label.
fn draw_legend(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[(String, Stroke)],
) -> Result<(), HtmlError> {
    let (w, _) = area.dim_in_pixel();
    let font = ("sans-serif", FONT_LABEL).into_font().color(&BLACK);
    for (row, items) in legend_rows(entries, w).iter().enumerate() {
        let y = 4 + row as i32 * LEGEND_ROW as i32 + LEGEND_ROW as i32 / 2;
        let mut x = 12;
        for (label, stroke) in items {
            let line = vec![(x, y), (x + 28, y)];
            if stroke.dashed {
                area.draw(&DashedPathElement::new(line, 6, 4, stroke.style()))
                    .map_err(draw_err)?;
            } else {
                area.draw(&PathElement::new(line, stroke.style()))
                    .map_err(draw_err)?;
            }
            area.draw(&Text::new(
                label.clone(),
                (x + 36, y - FONT_LABEL as i32 / 2),
                font.clone(),
            ))
            .map_err(draw_err)?;
            x += entry_width(label) as i32;
        }
    }
    Ok(())
}

/// Draws a chart's mesh with readable labels and axis names.
macro_rules! mesh {
    ($chart:expr, $x_desc:expr, $y_desc:expr) => {
        $chart
            .configure_mesh()
            .x_desc($x_desc)
            .y_desc($y_desc)
            .label_style(("sans-serif", FONT_LABEL))
            .axis_desc_style(("sans-serif", FONT_DESC))
            .draw()
            .map_err(draw_err)
    };
}

/// A run's colour.
fn color(i: usize) -> RGBAColor {
    Palette99::pick(i).to_rgba()
}

/// Latency (log scale) against percentile (nines scale).
fn percentile_plot(runs: &[RunReport]) -> Result<String, HtmlError> {
    let axis = fitted_log(
        runs.iter()
            .flat_map(|r| r.percentiles.iter().filter(|p| p.percent < 100.0))
            .map(|p| p.us),
    );
    let entries: Vec<(String, Stroke)> = (0..runs.len())
        .map(|i| {
            let stroke = Stroke {
                color: color(i),
                width: 2,
                dashed: false,
            };
            (name(runs, i), stroke)
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = with_legend_strip(&root, &entries);
        let mut chart = ChartBuilder::on(&plot)
            .caption("Latency by percentile", ("sans-serif", FONT_CAPTION))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0f64..NINES_MAX, axis.coord())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .label_style(("sans-serif", FONT_LABEL))
            .axis_desc_style(("sans-serif", FONT_DESC))
            .x_labels(6)
            .x_label_formatter(&|x| {
                let p = format!("{:.3}", 100.0 * (1.0 - 10f64.powf(-x)));
                p.trim_end_matches('0').trim_end_matches('.').to_string()
            })
            .draw()
            .map_err(draw_err)?;
        for (i, r) in runs.iter().enumerate() {
            let points: Vec<(f64, u64)> = r
                .percentiles
                .iter()
                .filter(|p| p.percent < 100.0)
                .map(|p| (nines(p.percent), p.us.max(1)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, entries[i].1.style()))
                .map_err(draw_err)?;
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// The last second any run's timeline holds (at least 1): the time axis ends there.
fn seconds(runs: &[RunReport]) -> u64 {
    runs.iter()
        .flat_map(|r| {
            let client = r.timeline.iter().map(|s| s.t_s);
            client.chain(r.node_timeline.iter().map(|s| s.t_s))
        })
        .max()
        .unwrap_or(1)
        .max(1)
}

/// The client's p50 and p99 of each second.
fn latency_plot(runs: &[RunReport], axis: &LogAxis) -> Result<String, HtmlError> {
    let mut entries = Vec::new();
    for (i, _) in runs.iter().enumerate() {
        for (what, width) in [("p50", 2), ("p99", 1)] {
            let stroke = Stroke {
                color: color(i),
                width,
                dashed: false,
            };
            entries.push((format!("{} {what}", name(runs, i)), stroke));
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, HALF).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = with_legend_strip(&root, &entries);
        let mut chart = ChartBuilder::on(&plot)
            .caption("The client's latency", ("sans-serif", FONT_CAPTION))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0u64..seconds(runs), axis.coord())
            .map_err(draw_err)?;
        mesh!(chart, "second of the run (warm-up first)", "latency (µs)")?;
        for (i, r) in runs.iter().enumerate() {
            let busy = || r.timeline.iter().filter(|s| s.requests > 0);
            let series: [fn(&crate::report::Second) -> u64; 2] =
                [|s| s.latency_us.p50, |s| s.latency_us.p99];
            for (k, value) in series.into_iter().enumerate() {
                chart
                    .draw_series(LineSeries::new(
                        busy().map(|s| (s.t_s, value(s).max(1))),
                        entries[2 * i + k].1.style(),
                    ))
                    .map_err(draw_err)?;
            }
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Which of a second's quantiles of the node a line plots: its check-ins' or its fsyncs'.
type Pick = fn(&crate::report::NodeSecond) -> Option<Quantiles>;
/// Which quantile a line plots.
type Value = fn(&Quantiles) -> u64;

/// The node's check-in and fsync p50 and p99 of each second, on the client's scale.
fn node_plot(runs: &[RunReport], axis: &LogAxis) -> Result<String, HtmlError> {
    let kinds: [(&str, bool, Pick); 2] = [
        ("check-in", false, |s| s.checkin_latency_us),
        ("fsync", true, |s| s.fsync_us),
    ];
    let mut entries = Vec::new();
    let mut lines: Vec<(usize, Pick, Value)> = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        for (kind, dashed, pick) in kinds {
            if !r.node_timeline.iter().any(|s| pick(s).is_some()) {
                continue;
            }
            let quantiles: [(&str, u32, Value); 2] = [("p50", 2, |q| q.p50), ("p99", 1, |q| q.p99)];
            for (what, width, value) in quantiles {
                let stroke = Stroke {
                    color: color(i),
                    width,
                    dashed,
                };
                entries.push((format!("{} {kind} {what}", name(runs, i)), stroke));
                lines.push((i, pick, value));
            }
        }
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, HALF).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = with_legend_strip(&root, &entries);
        let mut chart = ChartBuilder::on(&plot)
            .caption("The node's own view", ("sans-serif", FONT_CAPTION))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(80)
            .build_cartesian_2d(0u64..seconds(runs), axis.coord())
            .map_err(draw_err)?;
        mesh!(chart, "second of the run (warm-up first)", "latency (µs)")?;
        for ((i, pick, value), (_, stroke)) in lines.into_iter().zip(&entries) {
            let points: Vec<(u64, u64)> = runs[i]
                .node_timeline
                .iter()
                .filter_map(|s| pick(s).map(|q| (s.t_s, value(&q).max(1))))
                .collect();
            if stroke.dashed {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, stroke.style()))
                    .map_err(draw_err)?;
            } else {
                chart
                    .draw_series(LineSeries::new(points, stroke.style()))
                    .map_err(draw_err)?;
            }
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Answers per second.
fn throughput_plot(runs: &[RunReport]) -> Result<String, HtmlError> {
    let (lo, hi) = fitted_linear(
        runs.iter()
            .flat_map(|r| r.timeline.iter().map(|s| s.requests)),
    );
    let entries: Vec<(String, Stroke)> = (0..runs.len())
        .map(|i| {
            let stroke = Stroke {
                color: color(i),
                width: 2,
                dashed: false,
            };
            (name(runs, i), stroke)
        })
        .collect();
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (plot, legend) = with_legend_strip(&root, &entries);
        let mut chart = ChartBuilder::on(&plot)
            .caption("Throughput over time", ("sans-serif", FONT_CAPTION))
            .margin(12)
            .x_label_area_size(50)
            .y_label_area_size(90)
            .build_cartesian_2d(0u64..seconds(runs), lo..hi)
            .map_err(draw_err)?;
        mesh!(
            chart,
            "second of the run (warm-up first)",
            "check-ins per second"
        )?;
        for (i, r) in runs.iter().enumerate() {
            chart
                .draw_series(LineSeries::new(
                    r.timeline.iter().map(|s| (s.t_s, s.requests)),
                    entries[i].1.style(),
                ))
                .map_err(draw_err)?;
        }
        draw_legend(&legend, &entries)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// A run's name in a legend: its target, numbered when there are several runs.
fn name(runs: &[RunReport], i: usize) -> String {
    if runs.len() > 1 {
        format!("{}. {}", i + 1, runs[i].target)
    } else {
        runs[i].target.clone()
    }
}

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `p50 / p99 / p999` cells of a node's quantiles, or dashes.
fn quantile_cells(q: Option<Quantiles>) -> String {
    match q {
        Some(q) => format!("<td>{}</td><td>{}</td><td>{}</td>", q.p50, q.p99, q.p999),
        None => "<td>–</td><td>–</td><td>–</td>".into(),
    }
}

fn page(report: &Report, plots: &[Plot]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>stile load test: {scenario}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}\
         table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}\
         pre{{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-all}}\
         .row{{display:flex;flex-wrap:wrap;gap:16px}}figure{{margin:1em 0}}\
         figcaption{{font-size:14px;max-width:700px}}</style>\
         </head><body>\n<h1>Load test: {scenario}</h1>\n\
         <p class=\"run\">Run on <time>{date}</time> with stile {version}:</p>\n\
         <pre class=\"command\">{command}</pre>\n\
         <p>Seed {seed}; {cpus} CPUs ({cpu}), {os}.</p>\n",
        scenario = esc(&report.scenario),
        date = esc(&report.date),
        version = esc(&report.version),
        command = esc(&report.command),
        seed = report.seed,
        cpus = report.machine.cpus,
        cpu = esc(&report.machine.cpu),
        os = esc(&report.machine.os),
    );
    h.push_str(
        "<table><tr><th rowspan=\"2\">target</th><th rowspan=\"2\">sync</th>\
         <th rowspan=\"2\">mode</th><th rowspan=\"2\">gates × in flight</th>\
         <th rowspan=\"2\">requests</th><th rowspan=\"2\">per second</th>\
         <th colspan=\"4\">the client's latency, µs</th>\
         <th colspan=\"3\">the node's check-in, µs</th><th colspan=\"3\">the node's fsync, µs</th>\
         <th rowspan=\"2\">errors</th><th rowspan=\"2\">timeouts</th>\
         <th rowspan=\"2\">double admits</th><th rowspan=\"2\">client CPU</th>\
         <th rowspan=\"2\">machine busy (steal)</th></tr>\n<tr><th>p50</th><th>p99</th>\
         <th>p999</th><th>max</th><th>p50</th><th>p99</th><th>p999</th><th>p50</th><th>p99</th>\
         <th>p999</th></tr>\n",
    );
    for r in &report.runs {
        let mode = match r.requested_rate {
            Some(rate) => format!("open, {rate:.0}/s"),
            None => "closed".into(),
        };
        let node = r.node.as_ref();
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} × {}</td><td>{}</td><td>{:.0}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}{}<td>{}</td><td>{}</td><td>{}</td>\
             <td>{:.0}%</td><td>{}</td></tr>",
            esc(&r.target),
            esc(&r.sync),
            mode,
            r.gates,
            r.inflight,
            r.requests,
            r.throughput_per_s,
            r.latency_us.p50,
            r.latency_us.p99,
            r.latency_us.p999,
            r.latency_us.max,
            quantile_cells(node.and_then(|n| n.checkin_latency_us)),
            quantile_cells(node.and_then(|n| n.fsync_us)),
            r.errors,
            r.timeouts,
            r.double_admits,
            r.client_cpu_percent,
            r.machine_load
                .map(|l| format!("{:.0}% ({:.0}%)", l.busy_percent, l.steal_percent))
                .unwrap_or_else(|| "–".into())
        );
    }
    h.push_str("</table>\n");
    for r in &report.runs {
        let outcomes: Vec<String> = r
            .outcomes
            .iter()
            .map(|(k, v)| format!("{} {v}", esc(k)))
            .collect();
        let _ = writeln!(
            h,
            "<p><b>{}</b> outcomes: {}</p>",
            esc(&r.target),
            outcomes.join(", ")
        );
        if let Some(o) = &r.outage {
            for line in o.text().lines() {
                let _ = writeln!(h, "<p class=\"outage\">{}</p>", esc(line.trim()));
            }
        }
        for line in r.tickets_text().lines() {
            let _ = writeln!(h, "<p class=\"tickets\">{}</p>", esc(line.trim()));
        }
        for note in r.notes() {
            let _ = writeln!(h, "<p class=\"note\">note: {}</p>", esc(&note));
        }
    }
    if !report.ratios.is_empty() {
        h.push_str("<h2>Ratios</h2>\n<ul>\n");
        let rounds = report.runs.iter().map(|r| r.round).max().unwrap_or(1);
        for m in &report.ratio_medians {
            let _ = writeln!(
                h,
                "<li><b>median of {} rounds: {} against {}: throughput ×{:.2} (×{:.2} to \
                 ×{:.2}); latency p50 ×{:.2}, p99 ×{:.2}, p999 ×{:.2}</b></li>",
                m.rounds,
                esc(&m.target),
                esc(&m.baseline),
                m.throughput,
                m.throughput_min,
                m.throughput_max,
                m.p50,
                m.p99,
                m.p999
            );
        }
        for q in &report.ratios {
            let round = match rounds {
                1 => String::new(),
                _ => format!("round {}: ", q.round),
            };
            let _ = writeln!(
                h,
                "<li>{round}{} against {}: throughput ×{:.2}; latency p50 ×{:.2}, p99 ×{:.2}, \
                 p999 ×{:.2}</li>",
                esc(&q.target),
                esc(&q.baseline),
                q.throughput,
                q.p50,
                q.p99,
                q.p999
            );
        }
        h.push_str("</ul>\n");
    }
    for (i, plot) in plots.iter().enumerate() {
        let pairs = plots.get(i + 1).is_some_and(|next| next.beside_previous);
        if pairs {
            h.push_str("<div class=\"row\">\n");
        }
        let _ = writeln!(
            h,
            "<figure id=\"{}\">{}<figcaption>{} ({})</figcaption></figure>",
            plot.file.trim_end_matches(".svg"),
            plot.svg,
            esc(plot.caption),
            plot.file
        );
        if plot.beside_previous {
            h.push_str("</div>\n");
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), super::NINES_MAX);
        assert_eq!(nines(0.0), 0.0);
    }

    /// The page opens with the date, the version and the command line; the node's own
    /// view (check-ins and fsyncs, second by second) has a plot beside the client's and
    /// columns in the table; every text of every plot is 12 px or more, and the legends sit
    /// below the axes.
    #[test]
    fn the_page_names_the_run_and_shows_the_nodes_view_readably() {
        use crate::report::{Latency, NodeSecond, Percentile, Second};
        let mut r = crate::report::tests::run(2_500, Some(2_000), Some(0));
        r.percentiles = [(50.0, 2_500), (99.0, 7_000), (99.9, 9_000)]
            .map(|(percent, us)| Percentile { percent, us })
            .into();
        let q = |p50| Quantiles {
            p50,
            p99: p50 * 3,
            p999: p50 * 4,
        };
        r.timeline = (0..4)
            .map(|t_s| Second {
                t_s,
                warmup: t_s == 0,
                requests: 50_000 + t_s,
                latency_us: Latency {
                    p50: 2_400 + t_s,
                    p99: 7_000,
                    p999: 9_000,
                    max: 9_500,
                },
            })
            .collect();
        r.node_timeline = (0..4)
            .map(|t_s| NodeSecond {
                t_s,
                checkin_latency_us: Some(q(1_900 + t_s)),
                fsync_us: Some(q(300)),
                syncs: 1_000,
            })
            .collect();
        let report = Report {
            version: "9.8.7".into(),
            command: "stile loadtest --scenario stadium --report 'a <b>'".into(),
            date: "2026-05-04T03:02:01Z".into(),
            scenario: "stadium".into(),
            seed: 1,
            machine: crate::report::Machine::this(),
            runs: vec![r],
            ratios: Vec::new(),
            ratio_medians: Vec::new(),
            history: None,
        };
        let dir = tempfile::tempdir().unwrap();
        write(&report, dir.path()).unwrap();
        let page = std::fs::read_to_string(dir.path().join("index.html")).unwrap();
        for want in [
            "<time>2026-05-04T03:02:01Z</time> with stile 9.8.7",
            "<pre class=\"command\">stile loadtest --scenario stadium --report 'a &lt;b&gt;'</pre>",
            "the node's check-in, µs",
            "<td>2000</td><td>4000</td><td>6000</td>",
        ] {
            assert!(page.contains(want), "{want}: {page:.3000}");
        }
        assert_eq!(page.matches("<svg").count(), 4, "four plots inline");
        // The node's plot right after the client's, in one row.
        let client = page.find("id=\"latency-over-time\"").unwrap();
        let node = page.find("id=\"node-latency-over-time\"").unwrap();
        assert!(client < node && page[..client].ends_with("<div class=\"row\">\n<figure "));
        let svg = std::fs::read_to_string(dir.path().join("node-latency-over-time.svg")).unwrap();
        for label in ["check-in p50", "check-in p99", "fsync p50", "fsync p99"] {
            assert!(
                svg.contains(&format!("\nquic://127.0.0.1:7443 {label}\n")),
                "{label}"
            );
        }
        // Four series over three seconds: two solid lines, two dashed (a short line a dash).
        assert!(svg.matches("<polyline").count() > 2 + 4, "{svg:.2000}");
        for file in [
            "latency-percentiles.svg",
            "latency-over-time.svg",
            "node-latency-over-time.svg",
            "throughput-over-time.svg",
        ] {
            let svg = std::fs::read_to_string(dir.path().join(file)).unwrap();
            let sizes: Vec<f64> = svg
                .split("font-size=\"")
                .skip(1)
                .map(|rest| rest[..rest.find('"').unwrap()].parse().unwrap())
                .collect();
            assert!(sizes.len() > 10, "{file}: {sizes:?}");
            assert!(sizes.iter().all(|&px| px >= 12.0), "{file}: {sizes:?}");
            // The legend's labels sit below the x axis's name, the lowest text of the plot.
            let y_of = |text: &str| -> f64 {
                let end = svg
                    .find(&format!(">\n{text}\n</text>"))
                    .unwrap_or_else(|| panic!("{file}: {text}"));
                let start = svg[..end].rfind("<text").unwrap();
                let tag = &svg[start..end];
                let y = &tag[tag.find(" y=\"").unwrap() + 4..];
                y[..y.find('"').unwrap()].parse().unwrap()
            };
            let axis = match file {
                "latency-percentiles.svg" => "percentile",
                _ => "second of the run (warm-up first)",
            };
            let first_label = match file {
                "latency-over-time.svg" => "quic://127.0.0.1:7443 p50",
                "node-latency-over-time.svg" => "quic://127.0.0.1:7443 check-in p50",
                _ => "quic://127.0.0.1:7443",
            };
            assert!(
                y_of(first_label) > y_of(axis),
                "{file}: the legend is over the plot"
            );
        }
    }

    /// Axes start near the data, not at 1 µs or 0: a log axis at the power of ten at or
    /// below the least value, a linear one a twentieth of the spread below it.
    #[test]
    fn axes_are_fitted_to_the_data() {
        let axis = fitted_log([850, 4_000, 0].into_iter());
        assert_eq!((axis.lo, axis.hi), (500, 5_000));
        assert_eq!(axis.ticks, [500, 1_000, 2_000, 5_000]);
        assert_eq!(
            axis.lines,
            [500, 600, 700, 800, 900, 1_000, 2_000, 3_000, 4_000, 5_000]
        );
        let axis = fitted_log([1_000, 1_100].into_iter());
        assert_eq!(
            (axis.lo, axis.hi, axis.ticks),
            (1_000, 2_000, vec![1_000, 2_000])
        );
        assert_eq!(fitted_log([95].into_iter()).ticks, [50, 100, 200]);
        assert_eq!(fitted_log(std::iter::empty()).ticks, [1, 2, 5, 10]);
        assert_eq!(fitted_linear([10_000, 50_000].into_iter()), (6_000, 54_000));
        assert_eq!(
            fitted_linear([20_000, 20_000].into_iter()),
            (19_000, 21_000)
        );
        assert_eq!(fitted_linear([0, 100].into_iter()), (0, 110));
    }
}
