//! What one batched model call costs: `t(B) = a + b·B` seconds for a call of `B` rows, fitted
//! by weighted least squares to the calls the executors make, the recent ones weighing most.
//!
//! Admission predicts from it when a request would finish ([`crate::admission`]). The fit
//! starts from a calibration (calls timed when the pool starts); those points keep a small
//! fixed weight, so the line stays defined when every live call has the same size (a busy
//! server runs full batches only) and the live calls decide the cost where they are.

/// Weight of the newest live call relative to the one before: an effective window of about
/// ten calls, so the fit follows a machine whose speed drifts.
const DECAY: f64 = 0.9;

/// Weighted sums for a least-squares line.
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    w: f64,
    x: f64,
    y: f64,
    xx: f64,
    xy: f64,
}

impl Sums {
    fn add(&mut self, x: f64, y: f64, w: f64) {
        self.w += w;
        self.x += w * x;
        self.y += w * y;
        self.xx += w * x * x;
        self.xy += w * x * y;
    }

    fn scale(&mut self, f: f64) {
        for v in [
            &mut self.w,
            &mut self.x,
            &mut self.y,
            &mut self.xx,
            &mut self.xy,
        ] {
            *v *= f;
        }
    }

    fn plus(self, o: Sums) -> Sums {
        Sums {
            w: self.w + o.w,
            x: self.x + o.x,
            y: self.y + o.y,
            xx: self.xx + o.xx,
            xy: self.xy + o.xy,
        }
    }
}

/// The fitted cost of a model call by its rows.
#[derive(Debug, Clone)]
pub struct StepTime {
    prior: Sums,
    live: Sums,
    /// `(a, b)` of the current fit.
    line: (f64, f64),
}

impl StepTime {
    /// Starts from calibration calls `(rows, seconds)` (at least one).
    pub fn new(calibration: &[(usize, f64)]) -> Self {
        let mut prior = Sums::default();
        for &(rows, s) in calibration {
            prior.add(rows as f64, s.max(0.0), 1.0);
        }
        let mut t = Self {
            prior,
            live: Sums::default(),
            line: (0.0, 0.0),
        };
        t.fit();
        t
    }

    /// Records a call of `rows` rows that took `seconds` (model call and scheduler steps).
    pub fn observe(&mut self, rows: usize, seconds: f64) {
        if rows == 0 || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        self.live.scale(DECAY);
        self.live.add(rows as f64, seconds, 1.0);
        self.fit();
    }

    /// Predicted seconds of a call of `rows` rows.
    pub fn seconds(&self, rows: usize) -> f64 {
        let (a, b) = self.line;
        a + b * rows as f64
    }

    fn fit(&mut self) {
        let s = self.prior.plus(self.live);
        if s.w <= 0.0 {
            return;
        }
        let (mx, my) = (s.x / s.w, s.y / s.w);
        let var = s.xx / s.w - mx * mx;
        let cov = s.xy / s.w - mx * my;
        // A call never gets cheaper with more rows, and never costs less than nothing: clamp
        // the line to a ≥ 0, b ≥ 0 (a flat line through the mean, or one through the origin).
        let mut b = if var > 1e-9 { cov / var } else { 0.0 };
        let mut a = my - b * mx;
        if b < 0.0 {
            b = 0.0;
            a = my;
        } else if a < 0.0 {
            a = 0.0;
            b = if s.xx > 0.0 { s.xy / s.xx } else { 0.0 };
        }
        self.line = (a, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_the_calibration_and_follows_the_live_calls() {
        // Calibration: 10 ms + 1 ms per row.
        let mut t = StepTime::new(&[(1, 0.011), (32, 0.042)]);
        assert!((t.seconds(16) - 0.026).abs() < 1e-9);
        // The machine slows down to twice that at full batches: the prediction there follows
        // within a few dozen calls, and the line stays defined.
        for _ in 0..60 {
            t.observe(32, 0.084);
        }
        assert!((t.seconds(32) - 0.084).abs() < 0.004, "{}", t.seconds(32));
        assert!(t.seconds(1) > 0.0 && t.seconds(1) < t.seconds(32));
        // Nonsense is ignored, and a line never slopes down.
        t.observe(0, 1.0);
        t.observe(4, f64::NAN);
        let flat = StepTime::new(&[(1, 0.05), (32, 0.04)]);
        assert_eq!(flat.seconds(1), flat.seconds(32));
    }
}
