//! Progress bars: training's (smoothed loss, rate; plain lines without a terminal) and the
//! evaluator's.

use indicatif::{ProgressBar, ProgressStyle};
use training::train::{StepMetrics, TrainObserver};

use crate::signals::StopSignal;

/// Progress bar for training; passes a stop signal on to the training loop.
pub(crate) struct TrainBar {
    bar: ProgressBar,
    smoothed: Option<f64>,
    rate: Option<f64>,
    stop: StopSignal,
}

impl TrainObserver for TrainBar {
    fn on_step(&mut self, m: &StepMetrics) {
        if m.loss.is_finite() {
            self.smoothed = Some(self.smoothed.map_or(m.loss, |s| 0.98 * s + 0.02 * m.loss));
        }
        self.rate = Some(
            self.rate
                .map_or(m.img_per_s, |r| 0.9 * r + 0.1 * m.img_per_s),
        );
        self.bar.set_position(m.step + 1);
        if self.bar.is_hidden() && (m.step + 1) % 50 == 0 {
            // No terminal (a log file): a plain line now and then instead of the bar.
            eprintln!(
                "step {}/{}  loss {:.4}  lr {:.2e}  {:.1} img/s",
                m.step + 1,
                self.bar.length().unwrap_or(0),
                self.smoothed.unwrap_or(f64::NAN),
                m.lr,
                self.rate.unwrap_or(0.0)
            );
        }
        self.bar.set_message(format!(
            "loss {:.4}  lr {:.2e}  {:.1} img/s{}",
            self.smoothed.unwrap_or(f64::NAN),
            m.lr,
            self.rate.unwrap_or(0.0),
            if m.skipped {
                "  (skipped non-finite step)"
            } else {
                ""
            }
        ));
    }

    fn on_message(&mut self, message: &str) {
        self.bar.println(message);
    }

    fn stop_requested(&mut self) -> Option<String> {
        self.stop.received()
    }
}

impl TrainBar {
    /// A bar for a run of `steps` steps that stops the run on `stop`.
    pub(crate) fn new(steps: u64, stop: StopSignal) -> Self {
        Self {
            bar: bar(steps),
            smoothed: None,
            rate: None,
            stop,
        }
    }

    /// Leaves the finished bar on screen.
    pub(crate) fn finish(&self) {
        self.bar.finish();
    }
}

/// A bar of `len` steps with elapsed time and estimate.
pub(crate) fn bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .expect("valid template"),
    );
    bar
}
