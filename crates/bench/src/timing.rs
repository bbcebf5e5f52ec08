//! Repeated timing: warm-up runs, then at least `min_reps` timed runs (more until `target_s`
//! of timed work or `max_reps`), summarised by the median.

use std::time::Instant;

use serde::Serialize;

/// How long to run a case.
#[derive(Debug, Clone, Copy)]
pub struct Reps {
    /// Untimed runs first.
    pub warmup: usize,
    /// At least this many timed runs.
    pub min_reps: usize,
    /// At most this many.
    pub max_reps: usize,
    /// Keep going (up to `max_reps`) until this much time was measured.
    pub target_s: f64,
}

/// Summary of the timed runs, in seconds.
#[derive(Debug, Clone, Serialize)]
pub struct Timing {
    /// Median.
    pub median_s: f64,
    /// Fastest.
    pub min_s: f64,
    /// Slowest.
    pub max_s: f64,
    /// Timed runs.
    pub reps: usize,
}

/// Times `f` (which must finish its work, e.g. by reading a result back, before returning).
pub fn bench(reps: Reps, mut f: impl FnMut()) -> Timing {
    for _ in 0..reps.warmup {
        f();
    }
    let mut times = Vec::new();
    let mut total = 0.0;
    while times.len() < reps.min_reps.max(1)
        || (total < reps.target_s && times.len() < reps.max_reps)
    {
        let t0 = Instant::now();
        f();
        let dt = t0.elapsed().as_secs_f64();
        total += dt;
        times.push(dt);
    }
    times.sort_by(f64::total_cmp);
    let n = times.len();
    let median_s = if n % 2 == 1 {
        times[n / 2]
    } else {
        0.5 * (times[n / 2 - 1] + times[n / 2])
    };
    Timing {
        median_s,
        min_s: times[0],
        max_s: times[n - 1],
        reps: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_at_least_min_reps_and_reports_the_median() {
        let mut calls = 0;
        let t = bench(
            Reps {
                warmup: 2,
                min_reps: 5,
                max_reps: 5,
                target_s: 0.0,
            },
            || {
                calls += 1;
                std::thread::sleep(std::time::Duration::from_millis(if calls == 7 {
                    30
                } else {
                    1
                }));
            },
        );
        assert_eq!((calls, t.reps), (7, 5));
        assert!(t.min_s <= t.median_s && t.median_s <= t.max_s);
        assert!(t.max_s >= 0.03 && t.median_s < 0.02, "{t:?}");
    }
}
