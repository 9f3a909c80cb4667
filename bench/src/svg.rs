//! The picture of a run (`bench/results/latest.svg`): for every latency scenario, each
//! system's latency by percentile over all rounds — percentiles on a "nines" axis (50, 90, 99,
//! 99.9) so the tail gets as much room as the median, latency on a log axis. Written by hand:
//! a few lines and some text need no crate.

use std::fmt::Write as _;

use super::report::{Dist, SYSTEMS};

const PANEL_W: f64 = 560.0;
const PANEL_H: f64 = 320.0;
const COLS: usize = 2;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;

fn color(system: &str) -> &'static str {
    match system {
        "sluice" => "#1f6fd1",
        "sluice-nosockmap" => "#17a589",
        "sluice-nopolicy" => "#7fb3ef",
        "sluice-nosockmap-nopolicy" => "#8fd8c8",
        "veth" => "#6b6b6b",
        "bridge" => "#e07b00",
        "iptables" => "#8e44ad",
        "sluice-tunnel" => "#1f6fd1",
        "sluice-native" => "#17a589",
        "routed" => "#6b6b6b",
        "flannel" => "#e07b00",
        _ => "#aa2222",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Ticks at 1, 2 and 5 times each power of ten within `[lo, hi]`.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let t = decade * m;
            if t >= lo && t <= hi {
                out.push(t);
            }
        }
        decade *= 10.0;
    }
    out
}

fn label(v: f64) -> String {
    if v >= 1.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The whole picture: one panel per distribution, `title` on top.
pub fn render(title: &str, dists: &[Dist]) -> String {
    let rows = dists.len().div_ceil(COLS).max(1);
    let (w, h) = (PANEL_W * COLS as f64, PANEL_H * rows as f64 + 40.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="12" y="24" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    for (i, d) in dists.iter().enumerate() {
        let x0 = PANEL_W * (i % COLS) as f64;
        let y0 = 40.0 + PANEL_H * (i / COLS) as f64;
        panel(&mut s, d, x0, y0);
    }
    s.push_str("</svg>\n");
    s
}

/// The highest percentile drawn: 99.9 (three nines).
const NINES: f64 = 3.0;

/// Horizontal position (0..=1) of quantile `q` on the nines axis.
fn nines(q: f64) -> f64 {
    (-(1.0 - q).max(1e-9).log10() / NINES).min(1.0)
}

fn panel(s: &mut String, d: &Dist, x0: f64, y0: f64) {
    let hists: Vec<_> = SYSTEMS
        .iter()
        .filter_map(|name| d.systems.get(*name).map(|h| (*name, h)))
        .filter(|(_, h)| h.count() > 0)
        .collect();
    if hists.is_empty() {
        return;
    }
    let q = |p: f64, pick: fn(u64, u64) -> u64| {
        hists
            .iter()
            .map(|(_, h)| h.quantile_ns(p))
            .reduce(pick)
            .unwrap_or(1)
            .max(1) as f64
    };
    // From the fastest minimum to the slowest 99.9th percentile; above it is off the chart.
    let (lo_ns, hi_ns) = (q(0.0, u64::min), q(0.999, u64::max));
    let (unit, scale) = if q(0.5, u64::max) >= 1e6 {
        ("ms", 1e6)
    } else {
        ("µs", 1e3)
    };
    let lo = lo_ns / scale * 0.9;
    let hi = (hi_ns / scale * 1.1).max(lo * 2.0);
    let (pw, ph) = (PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM);
    let (px, py) = (x0 + LEFT, y0 + TOP);
    let xpos = |q: f64| px + nines(q) * pw;
    let ypos = |v: f64| py + ph - (v.max(lo).min(hi).ln() - lo.ln()) / (hi.ln() - lo.ln()) * ph;

    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-weight="bold">{}</text>"#,
        px,
        y0 + 20.0,
        esc(&format!("{} — {}", d.scenario, d.title))
    );
    let _ = writeln!(
        s,
        "<rect x=\"{px}\" y=\"{py}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#999\"/>"
    );
    for t in log_ticks(lo, hi) {
        let y = ypos(t);
        let _ = writeln!(
            s,
            "<line x1=\"{px}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            px + pw,
            px - 6.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate({},{}) rotate(-90)" text-anchor="middle">latency ({unit}, log scale)</text>"#,
        x0 + 14.0,
        py + ph / 2.0
    );
    for (q, name) in [
        (0.0, "0"),
        (0.5, "50"),
        (0.9, "90"),
        (0.99, "99"),
        (0.999, "99.9"),
    ] {
        let x = xpos(q);
        let _ = writeln!(
            s,
            "<line x1=\"{x:.1}\" y1=\"{py}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{name}</text>",
            py + ph,
            py + ph + 14.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">percentile (all rounds)</text>"#,
        px + pw / 2.0,
        py + ph + 32.0
    );
    for (k, (name, h)) in hists.iter().enumerate() {
        // A step per bucket: its latency holds from the previous cumulative fraction to its own.
        let mut points = String::new();
        let mut prev = 0.0;
        for (ns, frac) in h.cdf() {
            let y = ypos(ns as f64 / scale);
            let _ = write!(points, " {:.1},{y:.1} {:.1},{y:.1}", xpos(prev), xpos(frac));
            prev = frac;
            if frac >= 0.999 {
                break;
            }
        }
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.8"/>"#,
            points.trim(),
            color(name)
        );
        // Legend bottom right: latency grows with the percentile, so that corner is empty.
        let (lx, ly) = (
            px + pw - 10.0,
            py + ph - 10.0 - 16.0 * (hists.len() - 1 - k) as f64,
        );
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{lx}\" y2=\"{}\" stroke=\"{}\" stroke-width=\"3\"/>\
             <text x=\"{}\" y=\"{ly}\" text-anchor=\"end\">{name}: p50 {}, p99 {} {unit} ({} samples)</text>",
            lx - 18.0,
            ly - 4.0,
            ly - 4.0,
            color(name),
            lx - 24.0,
            super::report::num(h.quantile_ns(0.5) as f64 / scale),
            super::report::num(h.quantile_ns(0.99) as f64 / scale),
            h.count()
        );
    }
}
