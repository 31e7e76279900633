//! Next-token selection: greedy, or temperature with top-k / top-p, plus a repeat penalty.
//!
//! Runs on the session thread right after each forward pass, over the full vocabulary. Seeded
//! runs are reproducible: the same seed, prompt and parameters give the same tokens.

use crate::error::{Error, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How to pick each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax); otherwise logits are divided by it before sampling.
    pub temperature: f32,
    /// Keep only the k most likely tokens (0 = no limit).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability mass reaches p (1.0 = no limit).
    pub top_p: f32,
    /// Divide positive logits (multiply negative ones) of recently generated tokens by this.
    pub repeat_penalty: f32,
    /// How many recent tokens the repeat penalty looks at.
    pub repeat_last_n: usize,
    /// Seed for the random generator; `None` picks one from the OS.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Rejects values outside their meaningful ranges, naming the field.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=2.0).contains(&self.temperature) || self.temperature.is_nan() {
            return Err(Error::InvalidInput(format!(
                "temperature must be within 0..=2, got {}",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::InvalidInput(format!(
                "top_p must be within (0, 1], got {}",
                self.top_p
            )));
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return Err(Error::InvalidInput(format!(
                "repeat_penalty must be within (0, 10], got {}",
                self.repeat_penalty
            )));
        }
        Ok(())
    }
}

/// Stateful sampler for one generation.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Scratch buffer of (token, logit), reused across steps.
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            scratch: Vec::new(),
        }
    }

    /// Picks the next token from `logits`, given the tokens generated so far (`history`).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let p = &self.params;
        if p.repeat_penalty != 1.0 {
            let start = history.len().saturating_sub(p.repeat_last_n);
            let mut seen = history[start..].to_vec();
            seen.sort_unstable();
            seen.dedup();
            for t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l >= 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
            }
        }
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        let inv_t = 1.0 / p.temperature;
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, l * inv_t)),
        );
        let cand = &mut self.scratch;
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, |a, b| b.1.total_cmp(&a.1));
            cand.truncate(p.top_k);
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        let max = cand[0].1;
        let mut total = 0.0f32;
        for c in cand.iter_mut() {
            c.1 = (c.1 - max).exp();
            total += c.1;
        }
        if p.top_p < 1.0 {
            let mut mass = 0.0;
            let mut keep = cand.len();
            for (i, c) in cand.iter().enumerate() {
                mass += c.1 / total;
                if mass >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            cand.truncate(keep);
            total = cand.iter().map(|c| c.1).sum();
        }
        let mut r = self.rng.random::<f32>() * total;
        for c in cand.iter() {
            r -= c.1;
            if r <= 0.0 {
                return c.0;
            }
        }
        cand[cand.len() - 1].0
    }
}

/// Index of the largest logit (first one on ties).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: usize, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            ..Default::default()
        }
    }

    #[test]
    fn greedy_takes_the_argmax() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
    }

    #[test]
    fn top_k_one_is_greedy_even_when_hot() {
        let mut s = Sampler::new(params(5.0, 1, 1.0, 7));
        for _ in 0..50 {
            assert_eq!(s.sample(&mut [0.0, 1.0, 0.5], &[]), 1);
        }
    }

    #[test]
    fn top_k_restricts_candidates() {
        let mut s = Sampler::new(params(10.0, 2, 1.0, 3));
        for _ in 0..200 {
            let t = s.sample(&mut [5.0, 4.9, 0.0, 0.0, 0.0], &[]);
            assert!(t <= 1, "sampled {t} outside the top 2");
        }
    }

    #[test]
    fn top_p_cuts_the_tail() {
        // Token 0 holds ~88% of the mass; p = 0.5 leaves it alone.
        let mut s = Sampler::new(params(1.0, 0, 0.5, 11));
        for _ in 0..200 {
            assert_eq!(s.sample(&mut [4.0, 2.0, 0.0, 0.0], &[]), 0);
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 7919) % 13) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 40, 0.9, seed));
            (0..30)
                .map(|_| s.sample(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
    }

    #[test]
    fn repeat_penalty_demotes_recent_tokens() {
        let p = SamplingParams {
            repeat_penalty: 2.0,
            ..Default::default()
        };
        let mut s = Sampler::new(p);
        assert_eq!(s.sample(&mut [3.0, 2.0, -1.0], &[0]), 1);
    }

    #[test]
    fn validation_names_the_field() {
        let bad = SamplingParams {
            top_p: 0.0,
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("top_p"));
        for t in [-1.0, 2.5, f32::NAN] {
            let bad = SamplingParams {
                temperature: t,
                ..Default::default()
            };
            assert!(
                bad.validate()
                    .unwrap_err()
                    .to_string()
                    .contains("temperature must be within 0..=2")
            );
        }
        let ok = SamplingParams {
            temperature: 2.0,
            ..Default::default()
        };
        assert!(ok.validate().is_ok());
    }
}
