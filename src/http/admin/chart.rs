//! The clicks-per-day chart of a link's page: an SVG drawn on the server (no script), with a
//! title and description for screen readers; the page also shows the same numbers as a table.

use std::fmt::Write;

/// Width and height of the drawing (it scales to its container).
const W: f64 = 640.0;
const H: f64 = 200.0;
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 10.0;

/// Escapes text for XML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The SVG of `days` ((YYYY-MM-DD, clicks), oldest first).
pub fn clicks_svg(days: &[(String, u64)]) -> String {
    let max = days.iter().map(|d| d.1).max().unwrap_or(0);
    let total: u64 = days.iter().map(|d| d.1).sum();
    let top = nice_max(max);
    let n = days.len().max(1) as f64;
    let slot = (W - LEFT) / n;
    let bar = (slot * 0.7).max(1.0);
    let plot_h = H - BOTTOM - TOP;
    let busiest = days.iter().filter(|d| d.1 > 0).max_by_key(|d| d.1);
    let desc = match busiest {
        Some((day, c)) => format!("{total} clicks in {} days; the busiest day was {day} with {c}.", days.len()),
        None => format!("No clicks in the last {} days.", days.len()),
    };
    let mut s = String::with_capacity(4096 + days.len() * 160);
    let _ = write!(
        s,
        r#"<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-labelledby="chart-title chart-desc" xmlns="http://www.w3.org/2000/svg"><title id="chart-title">Clicks per day, last {} days</title><desc id="chart-desc">{}</desc>"#,
        days.len(),
        esc(&desc)
    );
    // Grid lines and their labels: 0, half, top.
    let fracs: &[f64] = if top >= 2 { &[0.0, 0.5, 1.0] } else { &[0.0, 1.0] };
    for &frac in fracs {
        let y = TOP + plot_h * (1.0 - frac);
        let v = (top as f64 * frac).round() as u64;
        let _ = write!(
            s,
            r#"<line class="grid" x1="{LEFT}" x2="{W}" y1="{y:.1}" y2="{y:.1}"/><text class="axis" x="{:.1}" y="{:.1}" text-anchor="end">{v}</text>"#,
            LEFT - 6.0,
            y + 4.0
        );
    }
    for (i, (day, clicks)) in days.iter().enumerate() {
        let h = if top == 0 { 0.0 } else { plot_h * (*clicks as f64) / (top as f64) };
        let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
        let y = TOP + plot_h - h;
        let _ = write!(
            s,
            r#"<rect class="bar" x="{x:.1}" y="{y:.1}" width="{bar:.1}" height="{:.1}"><title>{}: {clicks}</title></rect>"#,
            h.max(0.0),
            esc(day)
        );
    }
    // First and last day under the axis.
    if let (Some(first), Some(last)) = (days.first(), days.last()) {
        let _ = write!(
            s,
            r#"<text class="axis" x="{LEFT}" y="{:.1}">{}</text><text class="axis" x="{W}" y="{:.1}" text-anchor="end">{}</text>"#,
            H - 6.0,
            esc(&first.0),
            H - 6.0,
            esc(&last.0)
        );
    }
    s.push_str("</svg>");
    s
}

/// A round number at or above `max` for the chart's top (at least 1).
fn nice_max(max: u64) -> u64 {
    if max <= 4 {
        return max.max(1);
    }
    let mag = 10u64.pow((max as f64).log10().floor() as u32);
    for step in [1, 2, 5, 10] {
        if step * mag >= max {
            return step * mag;
        }
    }
    10 * mag
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_has_a_bar_with_a_title_per_day_and_describes_its_busiest_day() {
        let days = vec![("2026-11-29".to_string(), 0), ("2026-11-30".to_string(), 3), ("2026-12-01".to_string(), 1)];
        let svg = clicks_svg(&days);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("<title>2026-11-30: 3</title>"));
        assert!(svg.contains("4 clicks in 3 days; the busiest day was 2026-11-30 with 3."));
        assert!(clicks_svg(&days[..1]).contains("No clicks in the last 1 days."));
    }

    #[test]
    fn the_top_of_the_scale_is_a_round_number() {
        assert_eq!(nice_max(0), 1);
        assert_eq!(nice_max(3), 3);
        assert_eq!(nice_max(7), 10);
        assert_eq!(nice_max(12), 20);
        assert_eq!(nice_max(480), 500);
        assert_eq!(nice_max(1000), 1000);
    }
}
