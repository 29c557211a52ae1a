//! `--report DIR`: an HTML page with the run's figures and three SVG plots (latency by
//! percentile, latency over time, throughput over time), one line per target. The plots
//! are also written as files of their own.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::output::write_whole;
use crate::report::{Report, RunReport};

/// Plot size, pixels.
const SIZE: (u32, u32) = (900, 420);
/// The percentile axis ends at 99.999 (five nines).
const NINES_MAX: f64 = 5.0;

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
    let plots = [
        ("latency-percentiles.svg", percentile_plot(&report.runs)?),
        ("latency-over-time.svg", latency_plot(&report.runs)?),
        ("throughput-over-time.svg", throughput_plot(&report.runs)?),
    ];
    for (name, svg) in &plots {
        write_whole(&dir.join(name), svg.as_bytes())?;
    }
    write_whole(&dir.join("index.html"), page(report, &plots).as_bytes())?;
    Ok(())
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

/// Latency (log scale) against percentile (nines scale).
fn percentile_plot(runs: &[RunReport]) -> Result<String, HtmlError> {
    let top = runs
        .iter()
        .flat_map(|r| r.percentiles.iter().map(|p| p.us))
        .max()
        .unwrap_or(1)
        .max(10);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Latency by percentile", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..NINES_MAX, (1u64..top * 2).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("percentile")
            .y_desc("latency (µs)")
            .x_labels(6)
            .x_label_formatter(&|x| {
                let p = format!("{:.3}", 100.0 * (1.0 - 10f64.powf(-x)));
                p.trim_end_matches('0').trim_end_matches('.').to_string()
            })
            .draw()
            .map_err(draw_err)?;
        for (i, r) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points: Vec<(f64, u64)> = r
                .percentiles
                .iter()
                .filter(|p| p.percent < 100.0)
                .map(|p| (nines(p.percent), p.us.max(1)))
                .collect();
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(draw_err)?
                .label(name(runs, i))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// p50 and p99 of each second.
fn latency_plot(runs: &[RunReport]) -> Result<String, HtmlError> {
    let seconds = runs
        .iter()
        .map(|r| r.timeline.len())
        .max()
        .unwrap_or(1)
        .max(1) as u64;
    let top = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.latency_us.p99))
        .max()
        .unwrap_or(1)
        .max(10);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                "Latency over time (p50 solid, p99 thin)",
                ("sans-serif", 20),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..seconds, (1u64..top * 2).log_scale())
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("second of the run (warm-up first)")
            .y_desc("latency (µs)")
            .draw()
            .map_err(draw_err)?;
        for (i, r) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let busy = || r.timeline.iter().filter(|s| s.requests > 0);
            chart
                .draw_series(LineSeries::new(
                    busy().map(|s| (s.t_s, s.latency_us.p50.max(1))),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(name(runs, i))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            chart
                .draw_series(LineSeries::new(
                    busy().map(|s| (s.t_s, s.latency_us.p99.max(1))),
                    color.stroke_width(1),
                ))
                .map_err(draw_err)?;
        }
        legend(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

/// Answers per second.
fn throughput_plot(runs: &[RunReport]) -> Result<String, HtmlError> {
    let seconds = runs
        .iter()
        .map(|r| r.timeline.len())
        .max()
        .unwrap_or(1)
        .max(1) as u64;
    let top = runs
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| s.requests))
        .max()
        .unwrap_or(1)
        .max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Throughput over time", ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(80)
            .build_cartesian_2d(0u64..seconds, 0u64..top + top / 10)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("second of the run (warm-up first)")
            .y_desc("check-ins per second")
            .draw()
            .map_err(draw_err)?;
        for (i, r) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    r.timeline.iter().map(|s| (s.t_s, s.requests)),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(name(runs, i))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart)?;
        root.present().map_err(draw_err)?;
    }
    Ok(svg)
}

fn legend<'a, DB, CT>(chart: &mut ChartContext<'a, DB, CT>) -> Result<(), HtmlError>
where
    DB: DrawingBackend + 'a,
    CT: CoordTranslate,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(draw_err)
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

fn page(report: &Report, plots: &[(&str, String)]) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>stile load test: {scenario}</title>\
         <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}\
         table{{border-collapse:collapse;font-size:14px}}td,th{{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}}th:first-child,td:first-child{{text-align:left}}</style>\
         </head><body>\n<h1>Load test: {scenario}</h1>\n<p>Seed {seed}; {cpus} CPUs ({cpu}), \
         {os}.</p>\n",
        scenario = esc(&report.scenario),
        seed = report.seed,
        cpus = report.machine.cpus,
        cpu = esc(&report.machine.cpu),
        os = esc(&report.machine.os),
    );
    h.push_str(
        "<table><tr><th>target</th><th>sync</th><th>mode</th><th>gates × in flight</th>\
         <th>requests</th><th>per second</th><th>p50 µs</th><th>p99 µs</th><th>p999 µs</th>\
         <th>max µs</th><th>errors</th><th>timeouts</th><th>double admits</th>\
         <th>client CPU</th><th>machine busy (steal)</th></tr>\n",
    );
    for r in &report.runs {
        let mode = match r.requested_rate {
            Some(rate) => format!("open, {rate:.0}/s"),
            None => "closed".into(),
        };
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} × {}</td><td>{}</td><td>{:.0}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
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
    for (name, svg) in plots {
        let _ = writeln!(h, "<figure>{svg}<figcaption>{name}</figcaption></figure>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::nines;

    #[test]
    fn nines_axis() {
        assert!((nines(90.0) - 1.0).abs() < 1e-9);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(nines(100.0), super::NINES_MAX);
        assert_eq!(nines(0.0), 0.0);
    }
}
