//! Temperature and nucleus (top-p) sampling.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;

use super::fastexp;

/// Validated sampling parameters (ranges are checked by the API layer's `Valid*` types).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// Nucleus mass in (0, 1].
    pub top_p: f32,
    pub seed: u64,
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A seeded sampler for one sequence.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha12Rng,
    /// Unnormalized probabilities by token id (reused across steps).
    probs: Vec<f32>,
    /// Their sums per `fastexp::CHUNK` ids.
    chunk_mass: Vec<f32>,
    /// `(id, probability)` pairs for nucleus selection (reused across steps).
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        Sampler {
            params,
            rng: ChaCha12Rng::seed_from_u64(params.seed),
            probs: Vec::new(),
            chunk_mass: Vec::new(),
            scratch: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks the next token from raw logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.is_greedy() {
            return argmax(logits);
        }
        let inv_t = 1.0 / self.params.temperature;
        let max = fastexp::finite_max(logits);
        self.probs.clear();
        self.probs
            .extend(logits.iter().map(|&l| fastexp::exp((l - max) * inv_t)));
        // Per-chunk masses: a vectorized total, and a draw that skips whole chunks.
        self.chunk_mass.clear();
        self.chunk_mass.extend(
            self.probs
                .chunks(fastexp::CHUNK)
                .map(|c| fastexp::lane_sum(c, |p| p)),
        );
        let total: f32 = self.chunk_mass.iter().sum();
        // Only nucleus sampling needs the candidates in order; without it the draw walks the
        // vocabulary in id order (same distribution, no sort per token).
        if self.params.top_p < 1.0 {
            self.scratch.clear();
            self.scratch
                .extend((0u32..).zip(self.probs.iter().copied()));
            let keep = nucleus(&mut self.scratch, self.params.top_p * total);
            let kept = &self.scratch[..keep];
            let mass: f32 = kept.iter().map(|p| p.1).sum();
            return draw(kept.iter().copied(), self.rng.gen::<f32>() * mass);
        }
        let mut r = self.rng.gen::<f32>() * total;
        // Skip the chunks the draw passes over whole, then walk the one it lands in.
        let mut start = 0;
        for (i, &m) in self.chunk_mass.iter().enumerate() {
            if r < m || i + 1 == self.chunk_mass.len() {
                start = i * fastexp::CHUNK;
                break;
            }
            r -= m;
        }
        draw((start as u32..).zip(self.probs[start..].iter().copied()), r)
    }
}

/// The candidate at which the running mass passes `r` (the last one if rounding left `r` beyond
/// the total).
fn draw(candidates: impl Iterator<Item = (u32, f32)>, mut r: f32) -> u32 {
    let mut last = 0;
    for (id, p) in candidates {
        if r < p {
            return id;
        }
        r -= p;
        last = id;
    }
    last
}

/// Moves the nucleus (the fewest most probable candidates whose mass reaches `target`) to the
/// front of `c`, most probable first (ties: lower id first), and returns its length.
///
/// The nucleus is usually a few dozen tokens out of 49,152, so instead of sorting the whole
/// vocabulary per token this selects the top `k` in O(n), sorts only those, and grows `k`
/// fourfold until their mass reaches `target`. The prefix it returns is exactly the prefix of
/// a full sort (the order is total), so the draw is unchanged.
fn nucleus(c: &mut [(u32, f32)], target: f32) -> usize {
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut k = c.len().min(64);
    loop {
        if k < c.len() {
            c.select_nth_unstable_by(k - 1, order);
        }
        c[..k].sort_unstable_by(order);
        let mut acc = 0.0;
        for (i, p) in c[..k].iter().enumerate() {
            acc += p.1;
            if acc >= target {
                return i + 1;
            }
        }
        if k == c.len() {
            return k;
        }
        k = c.len().min(k * 4);
    }
}

/// Index of the largest logit (ties: lowest index).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_p: f32, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p,
            seed,
        }
    }

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(params(0.0, 1.0, 1));
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 2.9]), 1);
    }

    #[test]
    fn same_seed_same_tokens_and_different_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |seed| {
            let mut s = Sampler::new(params(1.0, 1.0, seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_p_excludes_the_tail() {
        // One token holds ~88% of the mass: with top_p 0.5 only it may be drawn.
        let logits = [5.0, 3.0, 0.0, 0.0];
        let mut s = Sampler::new(params(1.0, 0.5, 3));
        assert!((0..200).all(|_| s.sample(&logits) == 0));
        let mut s = Sampler::new(params(1.0, 1.0, 3));
        assert!((0..500).any(|_| s.sample(&logits) != 0));
    }

    #[test]
    fn nucleus_equals_the_prefix_of_a_full_sort() {
        use rand::Rng;
        let mut rng = ChaCha12Rng::seed_from_u64(5);
        for &(n, spread) in &[(10usize, 1.0f32), (3000, 0.1), (3000, 8.0), (50_000, 3.0)] {
            let probs: Vec<(u32, f32)> = (0..n as u32)
                .map(|i| (i, rng.gen_range(-spread..spread).exp()))
                .collect();
            let total: f32 = probs.iter().map(|p| p.1).sum();
            for top_p in [0.05f32, 0.5, 0.9, 0.999] {
                let mut full = probs.clone();
                full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let mut acc = 0.0;
                let want = full
                    .iter()
                    .position(|p| {
                        acc += p.1;
                        acc >= top_p * total
                    })
                    .map_or(n, |i| i + 1);
                let mut got = probs.clone();
                let k = nucleus(&mut got, top_p * total);
                assert_eq!(k, want, "n {n} spread {spread} top_p {top_p}");
                assert_eq!(got[..k], full[..k]);
            }
        }
    }

    #[test]
    fn draw_across_chunks_follows_the_distribution() {
        // Mass in chunk 0 (id 10) and chunk 14 (id 900) only: the chunk skip must land right.
        let mut logits = vec![-100.0f32; 1000];
        logits[10] = 3f32.ln();
        logits[900] = 0.0;
        let mut s = Sampler::new(params(1.0, 1.0, 17));
        let draws: Vec<u32> = (0..4000).map(|_| s.sample(&logits)).collect();
        assert!(draws.iter().all(|&t| t == 10 || t == 900));
        let tens = draws.iter().filter(|&&t| t == 10).count();
        assert!((2800..3200).contains(&tens), "got {tens}");
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 3, 0]) = [0.75, 0.25].
        let logits = [3f32.ln(), 0.0];
        let mut s = Sampler::new(params(1.0, 1.0, 11));
        let zeros = (0..4000).filter(|_| s.sample(&logits) == 0).count();
        assert!((2800..3200).contains(&zeros), "got {zeros}");
    }
}
