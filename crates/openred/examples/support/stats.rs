//! Shared by the benchmark examples (included with `#[path]`): percentiles,
//! and where the `openred` binary is.

use std::path::PathBuf;
use std::time::Duration;

/// `given`, or the `openred` binary beside this example's folder:
/// `target/<profile>/examples/NAME` -> `target/<profile>/openred`.
pub fn openred_program(given: Option<&PathBuf>) -> Option<PathBuf> {
    match given {
        Some(p) => Some(p.clone()),
        None => std::env::current_exe()
            .ok()?
            .parent()
            .and_then(|examples| examples.parent())
            .map(|profile| profile.join("openred")),
    }
}

/// Nearest-rank percentiles of a set of samples, in one unit.
pub struct Stats {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// `samples` in units of `per_second` per second (1e3: milliseconds,
/// 1e6: microseconds). NaN for an empty set.
pub fn stats(samples: &[Duration], per_second: f64) -> Stats {
    let mut v: Vec<f64> = samples
        .iter()
        .map(|d| d.as_secs_f64() * per_second)
        .collect();
    v.sort_by(f64::total_cmp);
    let n = v.len().max(1);
    let rank = |p: f64| {
        v.get(((p * n as f64).ceil() as usize).clamp(1, n) - 1)
            .copied()
            .unwrap_or(f64::NAN)
    };
    Stats {
        n: v.len(),
        min: v.first().copied().unwrap_or(f64::NAN),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v.last().copied().unwrap_or(f64::NAN),
        mean: v.iter().sum::<f64>() / n as f64,
    }
}
