//! Plots of part 4 as SVG: one panel per figure, mesh size across, direct push beside trees.

use std::fmt::Write;

use super::FanoutRow;

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 220.0;
const MARGIN: f64 = 50.0;

/// One line of a panel: its name, colour and points (mesh size, value).
struct Series {
    name: &'static str,
    colour: &'static str,
    points: Vec<(f64, f64)>,
}

/// `fanout.svg`: write-to-visible p99 at every receiver, the writer's bytes per record over the
/// envelope, and a receiver's inbound bytes per record, each by mesh size.
pub(crate) fn fanout(rows: &[FanoutRow]) -> Vec<(&'static str, String)> {
    let series = |f: &dyn Fn(&FanoutRow) -> f64| -> Vec<Series> {
        [("direct", "#c0392b"), ("tree", "#2471a3")]
            .into_iter()
            .map(|(how, colour)| Series {
                name: how,
                colour,
                points: rows
                    .iter()
                    .filter(|r| r.how == how)
                    .map(|r| (r.nodes as f64, f(r)))
                    .collect(),
            })
            .collect()
    };
    let panels = [
        (
            "visible at all, p99 (ms)",
            series(&|r| r.p99.as_secs_f64() * 1e3),
            Some((50.0, "target at 50 nodes")),
        ),
        (
            "writer's push bytes / envelope",
            series(&|r| r.writer_x),
            Some((4.0, "target")),
        ),
        (
            "receiver push bytes in / record",
            series(&|r| r.received),
            None,
        ),
    ];
    let width = panels.len() as f64 * (PANEL_W + MARGIN) + MARGIN;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        PANEL_H + 2.0 * MARGIN + 20.0
    );
    for (i, (title, lines, target)) in panels.iter().enumerate() {
        let x0 = MARGIN + i as f64 * (PANEL_W + MARGIN);
        panel(&mut svg, x0, title, lines, *target);
    }
    svg.push_str("</svg>\n");
    vec![("fanout.svg", svg)]
}

fn panel(svg: &mut String, x0: f64, title: &str, lines: &[Series], target: Option<(f64, &str)>) {
    let y0 = MARGIN;
    let xs: Vec<f64> = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .collect();
    let x_max = xs.iter().copied().fold(1.0, f64::max);
    let y_top = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .chain(target.map(|t| t.0))
        .fold(0.0, f64::max)
        * 1.1;
    let y_top = if y_top > 0.0 { y_top } else { 1.0 };
    let px = |x: f64| x0 + x / x_max * PANEL_W;
    let py = |y: f64| y0 + PANEL_H - y / y_top * PANEL_H;
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" font-size=\"13\">{title}</text>\n\
         <rect x=\"{x0}\" y=\"{y0}\" width=\"{PANEL_W}\" height=\"{PANEL_H}\" fill=\"none\" stroke=\"#888\"/>",
        x0,
        y0 - 12.0
    );
    for k in 0..=4 {
        let y = y_top * f64::from(k) / 4.0;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            x0 - 4.0,
            py(y) + 4.0,
            short(y)
        );
    }
    let mut ticks: Vec<f64> = xs.clone();
    ticks.sort_by(f64::total_cmp);
    ticks.dedup();
    for x in ticks {
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
            px(x),
            y0 + PANEL_H + 14.0
        );
    }
    let _ = writeln!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">nodes</text>",
        x0 + PANEL_W / 2.0,
        y0 + PANEL_H + 30.0
    );
    if let Some((t, label)) = target {
        let _ = writeln!(
            svg,
            "<line x1=\"{x0}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"#27ae60\" stroke-dasharray=\"4 3\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"#27ae60\" text-anchor=\"end\">{label}</text>",
            x0 + PANEL_W,
            x0 + PANEL_W - 4.0,
            py(t) - 4.0,
            y = py(t)
        );
    }
    for (i, s) in lines.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = writeln!(
            svg,
            "<polyline points=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"/>",
            path.join(" "),
            c = s.colour
        );
        for (x, y) in &s.points {
            let _ = writeln!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"/>",
                px(*x),
                py(*y),
                c = s.colour
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
            x0 + 8.0,
            y0 + 16.0 + 14.0 * i as f64,
            s.name,
            c = s.colour
        );
    }
}

fn short(v: f64) -> String {
    match v {
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 10.0 => format!("{v:.1}"),
        v => format!("{v:.2}"),
    }
}
