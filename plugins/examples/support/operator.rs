//! What an operator sees: the demo's metrics scraped from its own
//! Prometheus endpoint over HTTP while it runs, and drawn as an SVG (four
//! panels: handler calls per second by plugin, queue depth by priority,
//! events lost per second by reason, and the publish→handler latency's
//! p50 and p99 from the histogram buckets).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plotters::prelude::*;

/// One scrape: seconds since the start, and `series → value` (labels
/// rendered as `name{k=v,...}` in the exporter's order).
type Scrape = (f64, BTreeMap<String, f64>);

/// Scrapes `addr` every `every` until stopped.
pub(crate) struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<Mutex<Vec<Scrape>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    pub(crate) fn start(addr: SocketAddr, every: Duration) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), scrapes.clone());
        let thread = std::thread::spawn(move || {
            let start = Instant::now();
            while !s.load(Ordering::SeqCst) {
                if let Ok(samples) = scrape(addr) {
                    out.lock().unwrap().push((start.elapsed().as_secs_f64(), samples));
                }
                std::thread::sleep(every);
            }
        });
        Scraper { stop, scrapes, thread: Some(thread) }
    }

    /// Stops, takes a last scrape, and draws the SVG.
    pub(crate) fn finish(mut self, addr: SocketAddr, path: &Path) -> Result<usize, String> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let mut scrapes = std::mem::take(&mut *self.scrapes.lock().unwrap());
        if let (Ok(last), Some((t, _))) = (scrape(addr), scrapes.last()) {
            let t = *t + 0.2;
            scrapes.push((t, last));
        }
        if scrapes.len() < 3 {
            return Err(format!("only {} scrapes: too few to draw", scrapes.len()));
        }
        draw(path, &scrapes).map_err(|e| e.to_string())?;
        Ok(scrapes.len())
    }
}

fn scrape(addr: SocketAddr) -> std::io::Result<BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("switchboard_"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect())
}

/// A label's value in a rendered series.
fn label<'a>(series: &'a str, key: &str) -> Option<&'a str> {
    let start = series.find(&format!("{key}=\""))? + key.len() + 2;
    let end = series[start..].find('"')? + start;
    Some(&series[start..end])
}

/// Sums, per scrape, the series of metric `name` grouped by `group` (a
/// function of the series' labels; `None` leaves a series out).
fn grouped(
    scrapes: &[Scrape],
    name: &str,
    group: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (t, samples) in scrapes {
        let mut sums: BTreeMap<String, f64> = BTreeMap::new();
        for (series, v) in samples {
            if series.split('{').next() == Some(name) {
                if let Some(g) = group(series) {
                    *sums.entry(g).or_default() += v;
                }
            }
        }
        for (g, v) in sums {
            out.entry(g).or_default().push((*t, v));
        }
    }
    out
}

/// Per-second rates of a counter's points.
fn rates(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    points
        .windows(2)
        .map(|w| (w[1].0, ((w[1].1 - w[0].1) / (w[1].0 - w[0].0).max(1e-3)).max(0.0)))
        .collect()
}

/// The `q` quantile, in microseconds, of the samples recorded between two
/// scrapes, from cumulative buckets summed over plugins.
fn quantiles(scrapes: &[Scrape], name: &str, q: f64) -> Vec<(f64, f64)> {
    let buckets = |samples: &BTreeMap<String, f64>| {
        let mut by_le: BTreeMap<u64, f64> = BTreeMap::new();
        for (series, v) in samples {
            if series.starts_with(&format!("{name}_bucket{{")) {
                if let Some(le) = label(series, "le").and_then(|le| le.parse::<f64>().ok()) {
                    *by_le.entry((le * 1e9) as u64).or_default() += v;
                }
            }
        }
        by_le
    };
    scrapes
        .windows(2)
        .filter_map(|w| {
            let (before, after) = (buckets(&w[0].1), buckets(&w[1].1));
            let delta: Vec<(u64, f64)> = after
                .iter()
                .map(|(le, v)| (*le, v - before.get(le).copied().unwrap_or(0.0)))
                .collect();
            let total = delta.last()?.1;
            if total < 1.0 {
                return None;
            }
            let (le, _) = delta.iter().find(|(_, n)| *n >= q * total)?;
            Some((w[1].0, *le as f64 / 1e3))
        })
        .collect()
}

fn draw(path: &Path, scrapes: &[Scrape]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1200, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let root =
        root.titled("heavy-bot demo, as scraped from its Prometheus endpoint", ("sans-serif", 24))?;
    let panels = root.split_evenly((2, 2));
    let t_max = scrapes.last().map_or(1.0, |s| s.0);

    // Handler calls per second, by plugin (synthetic ones as one).
    let calls = grouped(scrapes, "switchboard_subscription_calls_total", |s| {
        let plugin = label(s, "plugin")?;
        Some(if plugin.starts_with("synthetic") {
            "synthetic (1000)".into()
        } else {
            plugin.into()
        })
    });
    let calls: Vec<(String, Vec<(f64, f64)>)> =
        calls.into_iter().map(|(k, v)| (k, rates(&v))).collect();
    panel(&panels[0], "handler calls / s, by plugin", t_max, "calls/s", &calls)?;

    let depth =
        grouped(scrapes, "switchboard_queue_depth", |s| label(s, "priority").map(Into::into));
    panel(
        &panels[1],
        "queue depth, by priority lane",
        t_max,
        "events",
        &depth.into_iter().collect::<Vec<_>>(),
    )?;

    let lost = grouped(scrapes, "switchboard_events_dropped_total", |s| {
        label(s, "reason").map(Into::into)
    });
    let lost: Vec<(String, Vec<(f64, f64)>)> =
        lost.into_iter().map(|(k, v)| (k, rates(&v))).collect();
    panel(&panels[2], "events lost or refused / s, by reason", t_max, "events/s", &lost)?;

    let latency = vec![
        ("p50".to_owned(), quantiles(scrapes, "switchboard_handler_latency_seconds", 0.5)),
        ("p99".to_owned(), quantiles(scrapes, "switchboard_handler_latency_seconds", 0.99)),
    ];
    panel(
        &panels[3],
        "publish -> handler latency (sampled calls)",
        t_max,
        "µs (bucket bound)",
        &latency,
    )?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    t_max: f64,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), Box<dyn std::error::Error>> {
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|p| p.1)).fold(1.0f64, f64::max);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..y_max * 1.15)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .y_label_formatter(&|y| human(*y))
        .label_style(("sans-serif", 13))
        .draw()?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 12))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}
