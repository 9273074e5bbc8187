//! The comparison chart: throughput against subscription count, one line per
//! contender, both axes logarithmic, as SVG (text is left to the viewer's
//! fonts, so no font rasteriser or system library is needed).

use std::error::Error;
use std::path::Path;

use plotters::prelude::*;

/// One contender's line: its name and `(subscriptions, events per second)`
/// points.
#[derive(Clone, Debug)]
pub struct Series {
    /// The contender.
    pub name: String,
    /// `(subscriptions, events/s)`, in increasing subscription count.
    pub points: Vec<(f64, f64)>,
}

/// Writes an SVG of `series` to `path`, titled `title`.
pub fn throughput_chart(path: &Path, title: &str, series: &[Series]) -> Result<(), Box<dyn Error>> {
    let all = series.iter().flat_map(|s| s.points.iter().copied());
    let (mut x_max, mut y_min, mut y_max) = (1.0f64, f64::MAX, 1.0f64);
    for (x, y) in all {
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_min == f64::MAX {
        return Err("no points to draw".into());
    }
    let root = SVGBackend::new(path, (1100, 680)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(90)
        .build_cartesian_2d(
            (0.8f64..x_max * 1.5).log_scale(),
            (y_min / 2.0..y_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("subscriptions on the bus (each event matches 3 of them)")
        .y_desc("events per second (log)")
        .x_label_formatter(&|x| human(*x))
        .y_label_formatter(&|y| human(*y))
        .label_style(("sans-serif", 16))
        .draw()?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(s.points.iter().copied(), color.stroke_width(3)))?
            .label(s.name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(s.points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .label_font(("sans-serif", 16))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// `1.5k`, `20M`: short labels for log axes.
fn human(v: f64) -> String {
    let (value, unit) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    if value >= 10.0 || value.fract() == 0.0 {
        format!("{value:.0}{unit}")
    } else {
        format!("{value:.1}{unit}")
    }
}
