//! Plots for people to look at: PNG and SVG line charts drawn with `plotters` and the DejaVu Sans
//! font bundled in the binary (registered through plotters' `ab_glyph` backend), so no system
//! font package is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::curve::Axis;
use crate::detail::{BoundFamily, DetailedPoint};
use crate::network::{OutputError, RunResult};

const FONT: &str = "sans-serif";

/// One named line.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points (x, y); non-finite or (on a log axis) non-positive y values are skipped.
    pub points: Vec<(f64, f64)>,
}

/// A chart description.
#[derive(Debug, Clone)]
pub struct Chart {
    /// Title.
    pub title: String,
    /// X-axis label.
    pub x_label: String,
    /// Y-axis label.
    pub y_label: String,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// What the chart shows, when the title alone does not say (which series were chosen):
    /// printed above the legend, wrapped; empty for none.
    pub note: String,
    /// Lines.
    pub series: Vec<Series>,
}

impl Chart {
    /// Whether at least one point can be drawn (finite, and positive on a log axis).
    pub fn has_data(&self) -> bool {
        self.series
            .iter()
            .flat_map(|s| &s.points)
            .any(|p| p.0.is_finite() && p.1.is_finite() && (!self.log_y || p.1 > 0.0))
    }
}

fn register_font() -> Result<(), OutputError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| OutputError::Plot("bundled DejaVu font rejected".into()));
    });
    result
}

/// Draws `chart` into `<stem>.png` and `<stem>.svg`. A chart without a single drawable point
/// is refused rather than drawn with made-up axes.
pub fn draw(chart: &Chart, stem: &Path) -> Result<(), OutputError> {
    if !chart.has_data() {
        return Err(OutputError::Plot(format!(
            "{}: no point to draw",
            chart.title
        )));
    }
    register_font()?;
    let png = stem.with_extension("png");
    let svg = stem.with_extension("svg");
    {
        let root = BitMapBackend::new(&png, (1000, 640)).into_drawing_area();
        render(chart, &root)?;
        root.present().map_err(plot_err)?;
    }
    let root = SVGBackend::new(&svg, (1000, 640)).into_drawing_area();
    render(chart, &root)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn plot_err<E: std::fmt::Display>(e: E) -> OutputError {
    OutputError::Plot(e.to_string())
}

const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn render<DB: DrawingBackend>(
    chart: &Chart,
    root: &DrawingArea<DB, Shift>,
) -> Result<(), OutputError>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(plot_err)?;
    // The legend gets a panel of its own to the right, so it never covers data.
    let (w, _) = root.dim_in_pixel();
    let (plot_area, legend_area) = root.split_horizontally(w.saturating_sub(LEGEND_WIDTH));
    draw_legend(chart, &legend_area)?;
    let root = &plot_area;
    let keep = |y: f64| y.is_finite() && (!chart.log_y || y > 0.0);
    let pts = chart
        .series
        .iter()
        .flat_map(|s| s.points.iter().filter(|p| p.0.is_finite() && keep(p.1)));
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, if chart.log_y { 1e-3 } else { 0.0 }, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if chart.log_y {
        y0 = (y0.log10().floor() - 0.0).max(y1.log10() - 14.0);
        y0 = 10f64.powf(y0);
        y1 = 10f64.powf(y1.log10().ceil());
    } else {
        y0 = y0.min(0.0);
        y1 = if y1 <= y0 { y0 + 1.0 } else { y1 * 1.05 };
    }
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&chart.title, (FONT, 24))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(90);
    macro_rules! finish {
        ($ctx:expr) => {{
            let mut ctx = $ctx;
            ctx.configure_mesh()
                .x_desc(chart.x_label.as_str())
                .y_desc(chart.y_label.as_str())
                .label_style((FONT, 15))
                .y_label_formatter(&|y: &f64| {
                    if chart.log_y {
                        format_log_tick(*y)
                    } else {
                        format_tick(*y)
                    }
                })
                .x_label_formatter(&|x: &f64| format_tick(*x))
                .axis_desc_style((FONT, 17))
                .draw()
                .map_err(plot_err)?;
            for (i, s) in chart.series.iter().enumerate() {
                let c = COLOURS[i % COLOURS.len()];
                let line: Vec<(f64, f64)> = s
                    .points
                    .iter()
                    .copied()
                    .filter(|p| p.0.is_finite() && keep(p.1))
                    .collect();
                ctx.draw_series(LineSeries::new(line, c.stroke_width(2)))
                    .map_err(plot_err)?;
            }
        }};
    }
    if chart.log_y {
        finish!(
            builder
                .build_cartesian_2d(x0..x1, (y0..y1).log_scale())
                .map_err(plot_err)?
        );
    } else {
        finish!(
            builder
                .build_cartesian_2d(x0..x1, y0..y1)
                .map_err(plot_err)?
        );
    }
    Ok(())
}

/// Width of the legend panel, pixels.
const LEGEND_WIDTH: u32 = 250;

/// The series labels, one line each, in the panel right of the chart.
fn draw_legend<DB: DrawingBackend>(
    chart: &Chart,
    area: &DrawingArea<DB, Shift>,
) -> Result<(), OutputError>
where
    DB::ErrorType: 'static,
{
    let style = TextStyle::from((FONT, 14).into_font()).color(&BLACK);
    let grey = TextStyle::from((FONT, 13).into_font()).color(&RGBColor(80, 80, 80));
    let mut y = 60;
    for r in wrap(&chart.note, 30) {
        area.draw(&Text::new(r, (6, y), grey.clone()))
            .map_err(plot_err)?;
        y += 17;
    }
    if !chart.note.is_empty() {
        y += 10;
    }
    for (i, s) in chart.series.iter().enumerate() {
        let c = COLOURS[i % COLOURS.len()];
        area.draw(&PathElement::new(
            vec![(6, y + 7), (30, y + 7)],
            c.stroke_width(3),
        ))
        .map_err(plot_err)?;
        for r in wrap(&s.label, 25) {
            area.draw(&Text::new(r, (36, y), style.clone()))
                .map_err(plot_err)?;
            y += 17;
        }
        y += 6;
    }
    Ok(())
}

/// Splits `text` into lines of at most `width` characters, at spaces where possible and inside
/// longer words (link ids) where not.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut rows = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        let mut word: Vec<char> = word.chars().collect();
        if !line.is_empty() && line.chars().count() + 1 + word.len() > width {
            rows.push(std::mem::take(&mut line));
        }
        while word.len() > width {
            rows.push(word.drain(..width).collect());
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.extend(word);
    }
    if !line.is_empty() {
        rows.push(line);
    }
    rows
}

/// Tick label on a logarithmic axis: always scientific, `1e-3`, `2e5`, so labels never mix
/// formats.
fn format_log_tick(v: f64) -> String {
    if v <= 0.0 || !v.is_finite() {
        return String::new();
    }
    let s = format!("{v:.0e}");
    // Ticks that are not a single significant digit (rare) keep one decimal.
    if (s.parse::<f64>().unwrap_or(0.0) / v - 1.0).abs() > 1e-9 {
        format!("{v:.1e}")
    } else {
        s
    }
}

fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-2..1e5).contains(&a) {
        format!("{v:.1e}")
    } else if a.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

/// Draws `rate.{png,svg}` (key rate with PLOB and TGW, and the single-repeater bound when the
/// protocol's family is held against it; log scale) and `qber.{png,svg}` (QBER in percent, at
/// the points with key) into `dir`. Returns notes for the user about plots not drawn.
pub fn rate_curve(
    points: &[DetailedPoint],
    axis: Axis,
    protocol: &str,
    dir: &Path,
) -> Result<Vec<String>, OutputError> {
    let x_label = match axis {
        Axis::Distance => "fibre length (km)",
        Axis::Loss => "channel loss (dB)",
    };
    let series = |label: &str, f: &dyn Fn(&DetailedPoint) -> f64| Series {
        label: label.into(),
        points: points.iter().map(|p| (p.point.x, f(p))).collect(),
    };
    let mut lines = vec![
        series("secret key rate", &|p| p.point.key_bps),
        series("PLOB bound (channel loss)", &|p| p.point.plob_bps),
        series("TGW bound", &|p| {
            p.point.tgw_per_use * p.point.plob_bps / p.point.plob_per_use
        }),
    ];
    if points
        .first()
        .is_some_and(|p| p.bound == BoundFamily::SingleRepeater)
    {
        lines.push(series("single-repeater bound", &|p| p.bound_bps));
    }
    let mut notes = Vec::new();
    let chart = Chart {
        title: format!("Secret key rate: {protocol}"),
        x_label: x_label.into(),
        y_label: "secret key rate (bit/s)".into(),
        log_y: true,
        note: String::new(),
        series: lines,
    };
    draw(&chart, &dir.join("rate"))?;
    // Beyond the last point with key the QBER is that of parameters optimised for nothing.
    let qber = Chart {
        title: format!("QBER: {protocol}"),
        x_label: x_label.into(),
        y_label: "QBER (%)".into(),
        log_y: false,
        note: "QBER at the points with key".into(),
        series: vec![Series {
            label: "QBER".into(),
            points: points
                .iter()
                .filter(|p| p.point.key_per_pulse > 0.0)
                .map(|p| (p.point.x, 100.0 * p.point.qber))
                .collect(),
        }],
    };
    if qber.has_data() {
        draw(&qber, &dir.join("qber"))?;
    } else {
        remove_stale(&dir.join("qber"))?;
        notes.push(if points.iter().all(|p| p.point.qber.is_nan()) {
            "no qber plot: this protocol reports no QBER (CV-QKD)".to_string()
        } else {
            "no qber plot: no point has a positive key rate".to_string()
        });
    }
    Ok(notes)
}

/// Removes `<stem>.png` and `<stem>.svg` left by an earlier run, so a directory never shows a
/// plot that does not belong to its data.
fn remove_stale(stem: &Path) -> Result<(), OutputError> {
    for ext in ["png", "svg"] {
        match std::fs::remove_file(stem.with_extension(ext)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// Draws `links.{png,svg}` (cumulative key of at most 8 links, named in the title: the slowest
/// links on the first pair's path, or the slowest links of the network when there is no pair)
/// and `pairs.{png,svg}` (end-to-end deliverable key of the first 8 pairs) into `dir`. Returns
/// notes for the user about what was left out.
pub fn run_result(r: &RunResult, dir: &Path) -> Result<Vec<String>, OutputError> {
    const MAX: usize = 8;
    let mut notes = Vec::new();
    let hours: Vec<f64> = r.times.iter().map(|t| *t as f64 / 3600.0).collect();
    let slowest = |mut idx: Vec<usize>| {
        idx.sort_by(|&x, &y| {
            r.links[x]
                .mean_rate_bps
                .total_cmp(&r.links[y].mean_rate_bps)
        });
        idx
    };
    let on_path = r
        .pairs
        .first()
        .filter(|p| !p.path_links.is_empty())
        .map(|p| (p, slowest(p.path_links.clone())));
    let (mut chosen, what) = match on_path {
        Some((p, idx)) => {
            let what = if idx.len() > MAX {
                format!(
                    "the {MAX} slowest of the {} links on the path {} <-> {}",
                    idx.len(),
                    p.a,
                    p.b
                )
            } else {
                format!("the links on the path {} <-> {}", p.a, p.b)
            };
            (idx, what)
        }
        None => {
            let idx = slowest((0..r.links.len()).collect());
            let what = if idx.len() > MAX {
                format!("the {MAX} slowest of {} links", idx.len())
            } else {
                "all links".to_string()
            };
            (idx, what)
        }
    };
    chosen.truncate(MAX);
    let links = chosen
        .iter()
        .map(|&i| Series {
            label: r.links[i].id.clone(),
            points: hours
                .iter()
                .zip(&r.links[i].buckets)
                .map(|(h, b)| (*h, b.cumulative_bits as f64))
                .collect(),
        })
        .collect();
    draw(
        &Chart {
            title: format!("{}: cumulative key per link", r.name),
            x_label: "time (h)".into(),
            y_label: "cumulative secret key (bits)".into(),
            log_y: false,
            note: format!("Showing {what}."),
            series: links,
        },
        &dir.join("links"),
    )?;
    notes.push(format!(
        "links plot shows {what}; every link is in links.csv"
    ));
    if r.pairs.is_empty() {
        remove_stale(&dir.join("pairs"))?;
        notes.push("no pairs plot: the scenario names no pair (add --pair A:B)".into());
        return Ok(notes);
    }
    if r.pairs.len() > MAX {
        notes.push(format!(
            "pairs plot shows the first {MAX} of {} pairs; all are in pairs.csv",
            r.pairs.len()
        ));
    }
    let pairs = r
        .pairs
        .iter()
        .take(MAX)
        .map(|p| Series {
            label: format!("{} <-> {}", p.a, p.b),
            points: hours
                .iter()
                .zip(&p.cumulative_bits)
                .map(|(h, c)| (*h, *c as f64))
                .collect(),
        })
        .collect();
    draw(
        &Chart {
            title: format!("{}: end-to-end deliverable key", r.name),
            x_label: "time (h)".into(),
            y_label: "cumulative end-to-end key (bits)".into(),
            log_y: false,
            note: if r.pairs.len() > MAX {
                format!("Showing the first {MAX} of {} pairs.", r.pairs.len())
            } else {
                String::new()
            },
            series: pairs,
        },
        &dir.join("pairs"),
    )?;
    Ok(notes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_ticks_share_one_format() {
        for v in [1e-12, 1e-3, 2e-3, 5e-2, 1.0, 10.0, 1e4, 2e5, 1e9] {
            let t = format_log_tick(v);
            let (m, e) = t.split_once('e').unwrap_or_else(|| panic!("{v}: {t}"));
            assert!(
                m.parse::<f64>().is_ok() && e.parse::<i32>().is_ok(),
                "{v}: {t}"
            );
            assert!(
                (t.parse::<f64>().unwrap() / v - 1.0).abs() < 1e-9,
                "{v}: {t}"
            );
        }
        assert_eq!(format_log_tick(1e-3), "1e-3");
        assert_eq!(format_log_tick(100.0), "1e2");
    }

    #[test]
    fn legend_lines_wrap_long_ids() {
        let rows = wrap("groningen-hamburg-1-groningen-hamburg-2 and more", 25);
        assert!(rows.iter().all(|r| r.chars().count() <= 25), "{rows:?}");
        assert_eq!(
            rows.concat().replace(' ', ""),
            "groningen-hamburg-1-groningen-hamburg-2andmore"
        );
    }

    #[test]
    fn charts_without_data_are_refused() {
        let empty = Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            log_y: false,
            note: String::new(),
            series: vec![Series {
                label: "nan".into(),
                points: vec![(0.0, f64::NAN), (1.0, f64::NAN)],
            }],
        };
        assert!(!empty.has_data());
        let dir = tempfile::tempdir().unwrap();
        assert!(draw(&empty, &dir.path().join("e")).is_err());
        assert!(!dir.path().join("e.png").exists());
    }
}
