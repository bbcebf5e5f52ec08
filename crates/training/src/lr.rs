//! Learning-rate schedule: linear warmup, then cosine decay.

use serde::{Deserialize, Serialize};

/// Linear warmup from 0 to `base_lr` over `warmup_steps`, then half a cosine from `base_lr`
/// down to `min_lr` at `total_steps` (Loshchilov & Hutter 2017, without restarts).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// Peak learning rate.
    pub base_lr: f64,
    /// Final learning rate.
    pub min_lr: f64,
    /// Steps of linear warmup.
    pub warmup_steps: u64,
    /// Total training steps.
    pub total_steps: u64,
}

impl LrSchedule {
    /// The learning rate for (zero-based) `step`: `base_lr · (step + 1) / warmup_steps` during
    /// warmup, then `min_lr + ½ (base_lr − min_lr)(1 + cos(π p))` with p the fraction of the
    /// decay phase done.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.base_lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let decay = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / decay as f64).min(1.0);
        self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_at_chosen_steps() {
        let s = LrSchedule {
            base_lr: 1e-3,
            min_lr: 1e-5,
            warmup_steps: 100,
            total_steps: 1100,
        };
        assert!((s.lr(0) - 1e-5).abs() < 1e-15);
        assert!((s.lr(49) - 5e-4).abs() < 1e-15);
        assert!((s.lr(99) - 1e-3).abs() < 1e-15);
        assert!((s.lr(100) - 1e-3).abs() < 1e-15); // start of the decay: cos(0) = 1
        assert!((s.lr(600) - (1e-5 + 0.5 * (1e-3 - 1e-5))).abs() < 1e-15); // halfway: cos(π/2) = 0
        assert!((s.lr(1100) - 1e-5).abs() < 1e-15);
        assert!((s.lr(5000) - 1e-5).abs() < 1e-15);
        // Monotone after warmup.
        assert!((100..1100).all(|t| s.lr(t + 1) <= s.lr(t)));
    }
}
