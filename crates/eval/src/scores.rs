//! Scores from class probabilities: accuracy and the Inception-Score form.

/// Index of the largest value of each row of `probs` (`n × k`).
pub fn argmax_rows(probs: &[f32], k: usize) -> Vec<usize> {
    probs
        .chunks_exact(k)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                    if p > best.1 {
                        (i, p)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

/// Fraction of rows whose arg-max equals the wanted label.
pub fn accuracy(probs: &[f32], k: usize, wanted: &[usize]) -> f64 {
    let pred = argmax_rows(probs, k);
    let hits = pred.iter().zip(wanted).filter(|(p, w)| p == w).count();
    hits as f64 / wanted.len().max(1) as f64
}

/// The Inception-Score form exp(E_x[KL(p(y|x) ‖ p(y))]) (Salimans et al. 2016), computed as the
/// reference implementation does: the n rows are cut into `splits` consecutive parts, each
/// part's score uses its own marginal p(y), and the mean and standard deviation over parts are
/// returned. With a domain classifier instead of Inception this is the "classifier score"
/// (its maximum is the number of classes).
pub fn inception_score_form(probs: &[f32], k: usize, splits: usize) -> (f64, f64) {
    let n = probs.len() / k;
    let splits = splits.clamp(1, n.max(1));
    let mut scores = Vec::with_capacity(splits);
    for s in 0..splits {
        let (a, b) = (s * n / splits, (s + 1) * n / splits);
        let rows = &probs[a * k..b * k];
        let m = (b - a) as f64;
        let mut marginal = vec![0.0f64; k];
        for row in rows.chunks_exact(k) {
            for (acc, &p) in marginal.iter_mut().zip(row) {
                *acc += p as f64 / m;
            }
        }
        let mut kl = 0.0;
        for row in rows.chunks_exact(k) {
            for (&p, &q) in row.iter().zip(&marginal) {
                let p = p as f64;
                if p > 0.0 {
                    kl += p * (p.ln() - q.ln());
                }
            }
        }
        scores.push((kl / m).exp());
    }
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / scores.len() as f64;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accuracy_counts_argmax_hits() {
        let probs = [0.1, 0.9, 0.8, 0.2, 0.3, 0.7];
        assert_eq!(argmax_rows(&probs, 2), vec![1, 0, 1]);
        assert!((accuracy(&probs, 2, &[1, 0, 0]) - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn score_bounds() {
        // Confident and uniform over 4 classes: the maximum, k.
        let mut probs = Vec::new();
        for i in 0..40 {
            let mut row = [0.0f32; 4];
            row[i % 4] = 1.0;
            probs.extend(row);
        }
        let (mean, std) = inception_score_form(&probs, 4, 10);
        assert!((mean - 4.0).abs() < 1e-9 && std < 1e-9);
        // All the same class: 1 (no diversity).
        let same: Vec<f32> = (0..40).flat_map(|_| [1.0f32, 0.0, 0.0, 0.0]).collect();
        assert!((inception_score_form(&same, 4, 10).0 - 1.0).abs() < 1e-9);
        // Uniform predictions: 1 (no confidence).
        let flat = vec![0.25f32; 160];
        assert!((inception_score_form(&flat, 4, 10).0 - 1.0).abs() < 1e-6);
        // A known two-class case: rows (0.9, 0.1) and (0.1, 0.9) half each: marginal (0.5, 0.5),
        // KL = 0.9 ln 1.8 + 0.1 ln 0.2.
        let mixed: Vec<f32> = (0..10)
            .flat_map(|i| {
                if i % 2 == 0 {
                    [0.9f32, 0.1]
                } else {
                    [0.1, 0.9]
                }
            })
            .collect();
        let want = (0.9f64 * 1.8f64.ln() + 0.1 * 0.2f64.ln()).exp();
        assert!((inception_score_form(&mixed, 2, 1).0 - want).abs() < 1e-6);
    }
}
