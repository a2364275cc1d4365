//! Server-rendered SVG charts: the funnel plot of risk-adjusted ratios and the
//! run chart of monthly counts. Each carries an accessible title and description,
//! and each plotted point its figures as `data-*` attributes (tests and scripts
//! read the chart, not pixels). No script is needed to see them.

use maud::{html, Markup};

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 48.0;

/// One provider on the funnel plot.
#[derive(Debug, Clone)]
pub struct FunnelPoint {
    /// What the plot calls the provider: its ODS code, or a letter.
    pub label: String,
    pub expected: f64,
    pub ratio: f64,
    /// `high`, `low` or `none` (the 95% or 99.8% flag, whichever is further out).
    pub flag: String,
    pub own: bool,
}

/// The control limits at one expected count.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub expected: f64,
    pub lower95: f64,
    pub upper95: f64,
    pub lower998: f64,
    pub upper998: f64,
}

/// Ticks at round steps (1, 2 or 5 × 10^k) covering [0, max].
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(raw);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|t| *t <= max + step * 1e-9)
        .collect()
}

fn fmt_tick(t: f64) -> String {
    if t.fract().abs() < 1e-9 {
        format!("{t:.0}")
    } else {
        let s = format!("{t:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

struct Frame {
    xmax: f64,
    ymax: f64,
}

impl Frame {
    fn x(&self, v: f64) -> f64 {
        LEFT + (v / self.xmax) * (WIDTH - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v.min(self.ymax) / self.ymax) * (HEIGHT - TOP - BOTTOM)
    }

    fn axes(&self, x_label: &str, y_label: &str, y_ticks: &[f64], x_ticks: &[f64]) -> Markup {
        html! {
            line.axis x1=(LEFT) y1=(HEIGHT - BOTTOM) x2=(WIDTH - RIGHT) y2=(HEIGHT - BOTTOM) {}
            line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(HEIGHT - BOTTOM) {}
            @for t in x_ticks {
                line.tick x1=(self.x(*t)) y1=(HEIGHT - BOTTOM) x2=(self.x(*t)) y2=(HEIGHT - BOTTOM + 4.0) {}
                text x=(self.x(*t)) y=(HEIGHT - BOTTOM + 18.0) text-anchor="middle" { (fmt_tick(*t)) }
            }
            @for t in y_ticks {
                line.tick x1=(LEFT - 4.0) y1=(self.y(*t)) x2=(LEFT) y2=(self.y(*t)) {}
                text x=(LEFT - 8.0) y=(self.y(*t) + 4.0) text-anchor="end" { (fmt_tick(*t)) }
            }
            text x=((LEFT + WIDTH - RIGHT) / 2.0) y=(HEIGHT - 8.0) text-anchor="middle" { (x_label) }
            text x="14" y=((TOP + HEIGHT - BOTTOM) / 2.0) text-anchor="middle"
                transform=(format!("rotate(-90 14 {})", (TOP + HEIGHT - BOTTOM) / 2.0)) { (y_label) }
        }
    }
}

fn polyline(points: impl Iterator<Item = (f64, f64)>) -> String {
    points
        .map(|(x, y)| format!("{x:.1},{y:.1}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The funnel plot: ratio (observed ÷ expected) against expected count, with the
/// target line at 1 and the 95% and 99.8% control limits.
pub fn funnel(id: &str, title: &str, description: &str, points: &[FunnelPoint], limits: &[Limits]) -> Markup {
    let xmax = points
        .iter()
        .map(|p| p.expected)
        .chain(limits.iter().map(|l| l.expected))
        .fold(1.0f64, f64::max)
        * 1.05;
    let ymax = points.iter().map(|p| p.ratio * 1.15).fold(2.0f64, f64::max).min(10.0);
    let frame = Frame { xmax, ymax };
    let line = |f: fn(&Limits) -> f64| polyline(limits.iter().map(|l| (frame.x(l.expected), frame.y(f(l)))));
    let title_id = format!("{id}-title");
    let desc_id = format!("{id}-desc");
    html! {
        svg.chart id=(id) role="img" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            aria-labelledby=(format!("{title_id} {desc_id}")) xmlns="http://www.w3.org/2000/svg" {
            title id=(title_id) { (title) }
            desc id=(desc_id) { (description) }
            (frame.axes("Expected deaths", "Ratio (observed ÷ expected)", &ticks(ymax), &ticks(xmax)))
            line.target x1=(LEFT) y1=(frame.y(1.0)) x2=(WIDTH - RIGHT) y2=(frame.y(1.0)) {}
            polyline.limit95 points=(line(|l| l.upper95)) {}
            polyline.limit95 points=(line(|l| l.lower95)) {}
            polyline.limit998 points=(line(|l| l.upper998)) {}
            polyline.limit998 points=(line(|l| l.lower998)) {}
            @for p in points {
                circle.point.flag-high[p.flag == "high"].flag-low[p.flag == "low"].own[p.own]
                    cx=(format!("{:.1}", frame.x(p.expected))) cy=(format!("{:.1}", frame.y(p.ratio)))
                    r=(if p.own { 7 } else { 5 })
                    data-provider=(p.label) data-expected=(p.expected) data-ratio=(p.ratio) data-flag=(p.flag) {
                    title { (format!("{}: ratio {:.2}, expected {:.1}{}", p.label, p.ratio, p.expected,
                        match p.flag.as_str() { "high" => ", above the control limits", "low" => ", below the control limits", _ => "" })) }
                }
            }
        }
    }
}

/// One month of a run chart; `None` when the count was withheld.
#[derive(Debug, Clone)]
pub struct Month {
    pub month: String,
    pub count: Option<u64>,
}

/// The median of the released counts.
pub fn median(counts: &[u64]) -> Option<f64> {
    if counts.is_empty() {
        return None;
    }
    let mut v = counts.to_vec();
    v.sort_unstable();
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2] as f64
    } else {
        (v[n / 2 - 1] + v[n / 2]) as f64 / 2.0
    })
}

/// A run chart: counts by month joined in order, with the median as a line.
/// Withheld months are gaps, labelled.
pub fn run_chart(id: &str, title: &str, description: &str, months: &[Month]) -> Markup {
    let released: Vec<u64> = months.iter().filter_map(|m| m.count).collect();
    let ymax = released.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.15;
    let n = months.len().max(1) as f64;
    let frame = Frame { xmax: n, ymax };
    let x_of = |i: usize| frame.x(i as f64 + 0.5);
    let segments: Vec<String> = months
        .split(|m| m.count.is_none())
        .filter(|s| !s.is_empty())
        .map(|run| {
            let start = months.iter().position(|m| std::ptr::eq(m, &run[0])).unwrap_or(0);
            polyline(
                run.iter()
                    .enumerate()
                    .map(|(k, m)| (x_of(start + k), frame.y(m.count.unwrap_or(0) as f64))),
            )
        })
        .collect();
    let med = median(&released);
    let title_id = format!("{id}-title");
    let desc_id = format!("{id}-desc");
    html! {
        svg.chart id=(id) role="img" viewBox=(format!("0 0 {WIDTH} {HEIGHT}"))
            aria-labelledby=(format!("{title_id} {desc_id}")) xmlns="http://www.w3.org/2000/svg" {
            title id=(title_id) { (title) }
            desc id=(desc_id) { (description) }
            (frame.axes("Month of discharge", "Admissions", &ticks(ymax), &[]))
            @for (i, m) in months.iter().enumerate() {
                text x=(x_of(i)) y=(HEIGHT - BOTTOM + 18.0) text-anchor="middle" { (m.month.get(2..).unwrap_or(&m.month)) }
            }
            @if let Some(md) = med {
                line.median x1=(LEFT) y1=(frame.y(md)) x2=(WIDTH - RIGHT) y2=(frame.y(md)) data-median=(md) {}
            }
            @for s in &segments {
                polyline.limit95 points=(s) {}
            }
            @for (i, m) in months.iter().enumerate() {
                @if let Some(c) = m.count {
                    circle.point cx=(format!("{:.1}", x_of(i))) cy=(format!("{:.1}", frame.y(c as f64))) r="4"
                        data-month=(m.month) data-count=(c) {
                        title { (format!("{}: {c}", m.month)) }
                    }
                } @else {
                    text x=(x_of(i)) y=(HEIGHT - BOTTOM - 6.0) text-anchor="middle" data-month=(m.month) data-withheld="true" { "–" }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(2.3), vec![0.0, 0.5, 1.0, 1.5, 2.0]);
        assert_eq!(median(&[3, 1, 2]), Some(2.0));
        assert_eq!(median(&[4, 1, 2, 3]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn every_point_carries_its_figures() {
        let svg = funnel(
            "f",
            "t",
            "d",
            &[FunnelPoint {
                label: "RXL".into(),
                expected: 12.5,
                ratio: 1.6,
                flag: "high".into(),
                own: true,
            }],
            &[Limits {
                expected: 1.0,
                lower95: 0.1,
                upper95: 3.0,
                lower998: 0.0,
                upper998: 5.0,
            }],
        )
        .into_string();
        assert!(
            svg.contains(r#"data-provider="RXL" data-expected="12.5" data-ratio="1.6""#),
            "{svg}"
        );
        assert!(svg.contains(r#"class="point flag-high own""#), "{svg}");
        assert!(svg.contains("<title id=\"f-title\">t</title>"));
    }
}
