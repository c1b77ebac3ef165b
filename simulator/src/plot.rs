//! Plots for people to look at: PNG and SVG line charts drawn with `plotters` and the DejaVu Sans
//! font bundled in the binary (registered through plotters' `ab_glyph` backend), so no system
//! font package is needed.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

use crate::curve::{Axis, CurvePoint};
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
    /// Lines.
    pub series: Vec<Series>,
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

/// Draws `chart` into `<stem>.png` and `<stem>.svg`.
pub fn draw(chart: &Chart, stem: &Path) -> Result<(), OutputError> {
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
                .y_label_formatter(&|y: &f64| format_tick(*y))
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
                    .map_err(plot_err)?
                    .label(s.label.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
            ctx.configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font((FONT, 15))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(plot_err)?;
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

/// Draws `rate.{png,svg}` (key rate with PLOB and TGW, log scale) and `qber.{png,svg}` into
/// `dir` for a curve.
pub fn rate_curve(
    points: &[CurvePoint],
    axis: Axis,
    protocol: &str,
    dir: &Path,
) -> Result<(), OutputError> {
    let x_label = match axis {
        Axis::Distance => "fibre length (km)",
        Axis::Loss => "channel loss (dB)",
    };
    let series = |label: &str, f: &dyn Fn(&CurvePoint) -> f64| Series {
        label: label.into(),
        points: points.iter().map(|p| (p.x, f(p))).collect(),
    };
    draw(
        &Chart {
            title: format!("Secret key rate: {protocol}"),
            x_label: x_label.into(),
            y_label: "bit/s".into(),
            log_y: true,
            series: vec![
                series("secret key rate", &|p| p.key_bps),
                series("PLOB bound (channel loss)", &|p| p.plob_bps),
                series("TGW bound", &|p| {
                    p.tgw_per_use * p.plob_bps / p.plob_per_use
                }),
            ],
        },
        &dir.join("rate"),
    )?;
    draw(
        &Chart {
            title: format!("QBER: {protocol}"),
            x_label: x_label.into(),
            y_label: "QBER".into(),
            log_y: false,
            series: vec![series("QBER", &|p| p.qber)],
        },
        &dir.join("qber"),
    )
}

/// Draws `links.{png,svg}` (cumulative key of up to 8 links: those on the first pair's path, or
/// the first links) and `pairs.{png,svg}` (end-to-end deliverable key per pair) into `dir`.
pub fn run_result(r: &RunResult, dir: &Path) -> Result<(), OutputError> {
    let hours: Vec<f64> = r.times.iter().map(|t| *t as f64 / 3600.0).collect();
    let mut chosen: Vec<usize> = Vec::new();
    if let Some(p) = r.pairs.first() {
        for w in p.path.windows(2) {
            if let Some(i) = r
                .links
                .iter()
                .position(|l| (l.a == w[0] && l.b == w[1]) || (l.a == w[1] && l.b == w[0]))
            {
                chosen.push(i);
            }
        }
    }
    for i in 0..r.links.len() {
        if chosen.len() >= 8 {
            break;
        }
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    chosen.truncate(8);
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
            title: format!("{}: cumulative link key", r.name),
            x_label: "time (h)".into(),
            y_label: "bits".into(),
            log_y: false,
            series: links,
        },
        &dir.join("links"),
    )?;
    let pairs = r
        .pairs
        .iter()
        .take(8)
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
            y_label: "bits".into(),
            log_y: false,
            series: pairs,
        },
        &dir.join("pairs"),
    )
}
