//! Line plots (loss curves, noise schedules) rendered to PNG with plotters.
//!
//! Text needs a TrueType font; the first of a few common system fonts (DejaVu, Liberation,
//! Noto) is used. Without one the plot is drawn without captions and labels.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use crate::error::{Result, TrainError};
use artifacts::save_png;

const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// Registers a system font once; returns whether text can be drawn.
fn font_available() -> bool {
    static FONT: OnceLock<bool> = OnceLock::new();
    *FONT.get_or_init(|| {
        for path in FONT_CANDIDATES {
            if let Ok(bytes) = std::fs::read(path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// One named line.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
}

/// An axis label with three significant digits and no trailing zeros (`0.6`, `0.02`, `2500`),
/// not the shortest round-trip form (`0.6000000000000001`).
fn tick(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let decimals = (2 - v.abs().log10().floor() as i32).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Draws `series` into a PNG at `path` (atomically). `log_y` uses a logarithmic y axis (all
/// y must then be positive).
pub fn line_plot(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_y: bool,
) -> Result<()> {
    let (w, h) = (900u32, 540u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    let text = font_available();
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all.filter(|(x, y)| x.is_finite() && y.is_finite() && (!log_y || *y > 0.0)) {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(TrainError::Invalid(format!(
            "nothing to plot in {}",
            path.display()
        )));
    }
    if x1 == x0 {
        x1 = x0 + 1.0;
    }
    if y1 == y0 {
        y1 = y0 + 1.0;
    }
    let draw = |e: &dyn std::fmt::Display| {
        TrainError::Invalid(format!("plotting {}: {e}", path.display()))
    };
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| draw(&e))?;
        let mut builder = ChartBuilder::on(&root);
        builder
            .margin(15)
            .x_label_area_size(if text { 45 } else { 5 })
            .y_label_area_size(if text { 70 } else { 5 });
        if text {
            builder.caption(title, ("sans-serif", 22));
        }
        macro_rules! finish {
            ($chart:expr) => {{
                let mut chart = $chart;
                let mut mesh = chart.configure_mesh();
                if text {
                    mesh.x_desc(x_label)
                        .y_desc(y_label)
                        .x_label_formatter(&|v| tick(*v))
                        .y_label_formatter(&|v| tick(*v));
                } else {
                    mesh.disable_x_axis().disable_y_axis();
                }
                mesh.draw().map_err(|e| draw(&e))?;
                for (i, s) in series.iter().enumerate() {
                    let color = Palette99::pick(i).stroke_width(2);
                    let pts = s.points.iter().copied().filter(|(_, y)| !log_y || *y > 0.0);
                    let line = chart
                        .draw_series(LineSeries::new(pts, color))
                        .map_err(|e| draw(&e))?;
                    if text {
                        line.label(s.name.clone()).legend(move |(x, y)| {
                            PathElement::new(
                                vec![(x, y), (x + 20, y)],
                                Palette99::pick(i).stroke_width(2),
                            )
                        });
                    }
                }
                if text && series.len() > 1 {
                    chart
                        .configure_series_labels()
                        .background_style(WHITE.mix(0.8))
                        .border_style(BLACK)
                        .draw()
                        .map_err(|e| draw(&e))?;
                }
            }};
        }
        if log_y {
            finish!(builder
                .build_cartesian_2d(x0..x1, (y0 * 0.9..y1 * 1.1).log_scale())
                .map_err(|e| draw(&e))?);
        } else {
            let pad = (y1 - y0) * 0.05;
            finish!(builder
                .build_cartesian_2d(x0..x1, y0 - pad..y1 + pad)
                .map_err(|e| draw(&e))?);
        }
        root.present().map_err(|e| draw(&e))?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).expect("buffer size matches");
    Ok(save_png(path, &img)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_png() {
        let dir = std::env::temp_dir().join(format!("plot-{}", std::process::id()));
        let path = dir.join("p.png");
        let s = Series {
            name: "loss".into(),
            points: (1..50).map(|i| (i as f64, 1.0 / i as f64)).collect(),
        };
        line_plot(&path, "t", "x", "y", &[s], true).unwrap();
        let img = image::open(&path).unwrap();
        assert_eq!((img.width(), img.height()), (900, 540));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// The schedule as CSV: `t,beta,alpha,alpha_cumprod,sqrt_alpha_cumprod,sqrt_one_minus_alpha_cumprod,snr`,
/// full `f64` precision (Rust's shortest round-trip formatting).
pub fn schedule_csv(s: &diffusion::NoiseSchedule) -> String {
    let mut out = String::from(
        "t,beta,alpha,alpha_cumprod,sqrt_alpha_cumprod,sqrt_one_minus_alpha_cumprod,snr\n",
    );
    for t in 0..s.num_train_timesteps() {
        out.push_str(&format!(
            "{t},{},{},{},{},{},{}\n",
            s.betas[t],
            s.alphas[t],
            s.alphas_cumprod[t],
            s.sqrt_alphas_cumprod[t],
            s.sqrt_one_minus_alphas_cumprod[t],
            s.snr[t]
        ));
    }
    out
}

#[cfg(test)]
mod schedule_tests {
    use super::*;

    #[test]
    fn csv_equals_the_crate_values() {
        let s = diffusion::NoiseScheduleConfig::default().build().unwrap();
        let csv = schedule_csv(&s);
        let mut lines = csv.lines();
        assert_eq!(
            lines.next().unwrap(),
            "t,beta,alpha,alpha_cumprod,sqrt_alpha_cumprod,sqrt_one_minus_alpha_cumprod,snr"
        );
        for (t, line) in lines.enumerate() {
            let v: Vec<f64> = line.split(',').map(|x| x.parse().unwrap()).collect();
            assert_eq!(v[0] as usize, t);
            assert_eq!(
                &v[1..],
                &[
                    s.betas[t],
                    s.alphas[t],
                    s.alphas_cumprod[t],
                    s.sqrt_alphas_cumprod[t],
                    s.sqrt_one_minus_alphas_cumprod[t],
                    s.snr[t]
                ]
            );
        }
        assert_eq!(csv.lines().count(), 1001);
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(0.6000000000000001), "0.6");
        assert_eq!(tick(0.02), "0.02");
        assert_eq!(tick(2500.0), "2500");
        assert_eq!(tick(1.0), "1");
        assert_eq!(tick(0.000123456), "0.000123");
        assert_eq!(tick(0.0), "0");
    }
}
