//! The per-step logits pipeline (DESIGN.md §7), in this order:
//!
//! 1. raw logits → **logprob snapshot**: log-softmax of the *raw* logits, truncated to the
//!    requested top-k and rounded per the tenant's confidence policy;
//! 2. `logit_bias` (OpenAI: added to the logit, ±100 bans/forces a token);
//! 3. frequency / presence penalties (OpenAI: `μ[j] -= c[j]·α_freq + [c[j] > 0]·α_pres`, where
//!    `c[j]` counts token `j` among the tokens generated so far);
//! 4. watermark bias (keyed SelfHash green list, sampled completions only);
//! 5. temperature / top-p, then a seeded draw ([`Sampler`]).
//!
//! Why the snapshot comes first: logprobs returned to a client must never reveal the effect of
//! `logit_bias` or of the secret watermark (a client could otherwise difference them out to
//! learn the green list or exact logits). They describe the model, not the sampler.
//!
//! Pure: no I/O, no clock; randomness is the seeded sampler's and the keyed logprob noise's.

use std::collections::HashMap;
use std::sync::Arc;

use crate::sampling::fastexp;
use crate::sampling::noise::NoiseKey;
use crate::sampling::{Sampler, SamplingParams};
use crate::watermark::bias::top_candidates;
use crate::watermark::{apply_bias, WatermarkKey, WatermarkParams};

/// How many previous tokens the pipeline keeps for the watermark context (≥ the largest `h − 1`).
const CONTEXT_KEEP: usize = crate::watermark::key::MAX_CONTEXT_WIDTH;

/// What the client asked to see of the model's confidence, already narrowed by policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogprobSpec {
    /// Alternatives returned per position (0 = only the chosen token's logprob).
    pub top: usize,
    /// Returned values are rounded to a multiple of this many nats (`None` = exact).
    pub rounding: Option<f32>,
    /// Scale (nats) of the keyed Laplace noise added before rounding (`None` = none). Applied
    /// only when [`PipelineParams::noise_key`] is set.
    pub noise: Option<f32>,
}

/// The watermark to embed: a key and the scheme parameters.
#[derive(Clone, Debug)]
pub struct WatermarkSpec {
    pub key: Arc<WatermarkKey>,
    pub params: WatermarkParams,
}

/// Everything the pipeline applies besides temperature / top-p / seed.
#[derive(Clone, Debug, Default)]
pub struct PipelineParams {
    /// `(token id, bias)`; ids outside the vocabulary are ignored.
    pub logit_bias: Vec<(u32, f32)>,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// Applied only when sampling (temperature > 0): greedy output carries no soft watermark.
    pub watermark: Option<WatermarkSpec>,
    pub logprobs: Option<LogprobSpec>,
    /// The request's noise key (set by the server, never by the client).
    pub noise_key: Option<NoiseKey>,
}

/// Log-probability of one token, from the raw (unbiased) distribution.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    /// Most likely alternatives, most likely first (length = [`LogprobSpec::top`]).
    pub top: Vec<(u32, f32)>,
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
}

/// The pipeline state of one sequence.
#[derive(Debug)]
pub struct LogitsPipeline {
    sampler: Sampler,
    params: PipelineParams,
    /// Last tokens (prompt tail, then generated), oldest first, for the watermark context.
    context: Vec<u32>,
    /// Occurrences of each generated token (penalties).
    counts: HashMap<u32, u32>,
    /// Tokens generated so far (the logprob noise's position).
    position: u64,
}

impl LogitsPipeline {
    /// A pipeline for a sequence whose prompt is `prompt`.
    pub fn new(sampling: SamplingParams, params: PipelineParams, prompt: &[u32]) -> Self {
        let tail = prompt.len().saturating_sub(CONTEXT_KEEP);
        LogitsPipeline {
            sampler: Sampler::new(sampling),
            params,
            context: prompt[tail..].to_vec(),
            counts: HashMap::new(),
            position: 0,
        }
    }

    /// Whether this sequence is being watermarked.
    pub fn watermarked(&self) -> bool {
        self.params.watermark.is_some() && !self.sampler.params().is_greedy()
    }

    /// Runs one step over `logits` (modified in place: they are consumed) and records the
    /// chosen token in the sequence history.
    pub fn step(&mut self, logits: &mut [f32]) -> Step {
        let noise = self
            .params
            .noise_key
            .as_ref()
            .map(|key| (key, self.position));
        let snapshot = self
            .params
            .logprobs
            .map(|spec| Snapshot::new(logits, spec, noise));
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        let (fp, pp) = (self.params.frequency_penalty, self.params.presence_penalty);
        if fp != 0.0 || pp != 0.0 {
            for (&id, &c) in &self.counts {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l -= c as f32 * fp + pp;
                }
            }
        }
        if let Some(wm) = self
            .params
            .watermark
            .as_ref()
            .filter(|_| !self.sampler.params().is_greedy())
        {
            // Only fails for vocabularies beyond u32 ids, which the model loader rules out.
            let _ = apply_bias(logits, &wm.key, &wm.params, &self.context);
        }
        let token = self.sampler.sample(logits);
        self.record(token);
        Step {
            token,
            logprob: snapshot.map(|s| s.for_token(token)),
        }
    }

    fn record(&mut self, token: u32) {
        *self.counts.entry(token).or_insert(0) += 1;
        if self.context.len() >= CONTEXT_KEEP {
            self.context.remove(0);
        }
        self.context.push(token);
        self.position += 1;
    }
}

/// Log-softmax of the raw logits, kept only as far as a step needs it.
struct Snapshot {
    /// `max + ln Σ exp(l − max)`: `logprob(j) = l[j] − lse`.
    lse: f64,
    top: Vec<(u32, f32)>,
    /// The raw logits are overwritten by the later stages; keep what `for_token` needs.
    raw: Vec<f32>,
    release: Release,
}

/// How a raw logprob becomes a returned one: noise (if any), then rounding.
#[derive(Clone)]
struct Release {
    rounding: Option<f32>,
    noise: Option<(NoiseKey, f32, u64)>,
}

impl Release {
    fn value(&self, raw: f32, token: u32) -> f32 {
        match &self.noise {
            Some((key, scale, position)) if raw.is_finite() => {
                let noisy = raw + key.laplace(*scale, *position, token);
                // A released value stays a logprob: never above 0.
                round(noisy, self.rounding).min(0.0)
            }
            _ => round(raw, self.rounding),
        }
    }
}

impl Snapshot {
    fn new(logits: &[f32], spec: LogprobSpec, noise: Option<(&NoiseKey, u64)>) -> Self {
        let release = Release {
            rounding: spec.rounding,
            noise: spec
                .noise
                .zip(noise)
                .map(|(scale, (key, position))| (key.clone(), scale, position)),
        };
        let lse = log_sum_exp(logits);
        let top = top_candidates(logits, spec.top)
            .into_iter()
            .map(|id| (id, release.value(logprob(logits, id, lse), id)))
            .collect();
        Snapshot {
            lse,
            top,
            raw: logits.to_vec(),
            release,
        }
    }

    fn for_token(self, token: u32) -> TokenLogprob {
        TokenLogprob {
            token,
            logprob: self
                .release
                .value(logprob(&self.raw, token, self.lse), token),
            top: self.top,
        }
    }
}

fn logprob(logits: &[f32], id: u32, lse: f64) -> f32 {
    logits
        .get(id as usize)
        .map_or(f32::NEG_INFINITY, |&l| (l as f64 - lse) as f32)
}

/// Rounds to the nearest multiple of `step` (never to a positive value: a rounded logprob stays
/// a logprob).
fn round(v: f32, step: Option<f32>) -> f32 {
    match step {
        Some(s) if s > 0.0 && v.is_finite() => ((v / s).round() * s).min(0.0),
        _ => v,
    }
}

/// `ln Σ exp(l)` over the finite logits (terms in `f32`, their sum in `f64`).
pub fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = fastexp::finite_max(logits);
    if !max.is_finite() {
        return 0.0;
    }
    // −∞ (a banned token) contributes exp(−87 clamp) ≈ 0; NaN is not a logit a model emits.
    f64::from(max) + fastexp::sum_exp(logits, max, 1.0).ln()
}

/// Log-softmax of `logits` (the raw distribution), in f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = log_sum_exp(logits);
    logits.iter().map(|&l| (l as f64 - lse) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn key() -> Arc<WatermarkKey> {
        let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(53) ^ 0x5a).collect();
        Arc::new(WatermarkKey::new("test-key", &secret).expect("key"))
    }

    fn sampling(temperature: f32) -> SamplingParams {
        SamplingParams {
            temperature,
            top_p: 1.0,
            seed: 42,
        }
    }

    fn random_logits(seed: u64, n: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n).map(|_| rng.gen_range(-8.0..8.0)).collect()
    }

    fn spec(top: usize) -> Option<LogprobSpec> {
        Some(LogprobSpec {
            top,
            rounding: None,
            noise: None,
        })
    }

    #[test]
    fn logprobs_are_log_softmax_of_raw_logits() {
        let raw = random_logits(1, 1000);
        let want = log_softmax(&raw);
        let mut p = LogitsPipeline::new(
            sampling(1.0),
            PipelineParams {
                logprobs: spec(5),
                ..Default::default()
            },
            &[1, 2, 3],
        );
        let step = p.step(&mut raw.clone());
        let lp = step.logprob.expect("logprobs");
        assert_eq!(lp.token, step.token);
        assert!((lp.logprob - want[step.token as usize]).abs() < 1e-5);
        assert_eq!(lp.top.len(), 5);
        let mut sorted: Vec<(usize, f32)> = want.iter().copied().enumerate().collect();
        sorted.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (got, exp) in lp.top.iter().zip(&sorted) {
            assert_eq!(got.0 as usize, exp.0);
            assert!((got.1 - exp.1).abs() < 1e-5);
        }
        let total: f64 = want.iter().map(|&l| (l as f64).exp()).sum();
        assert!((total - 1.0).abs() < 1e-4);
    }

    /// The pipeline order: neither `logit_bias`, penalties nor the watermark changes the
    /// returned logprobs, while they do change what is sampled.
    #[test]
    fn logprobs_unchanged_by_logit_bias_penalties_and_watermark() {
        let prompt = [7u32, 8, 9, 10];
        let steps = 40;
        let run = |params: PipelineParams| {
            let mut p = LogitsPipeline::new(sampling(1.0), params, &prompt);
            (0..steps)
                .map(|i| p.step(&mut random_logits(100 + i, 2000)))
                .collect::<Vec<_>>()
        };
        let plain = run(PipelineParams {
            logprobs: spec(5),
            ..Default::default()
        });
        // Force token 3 with logit_bias: every sampled token changes, logprobs do not.
        let biased = run(PipelineParams {
            logprobs: spec(5),
            logit_bias: vec![(3, 100.0)],
            ..Default::default()
        });
        assert!(biased.iter().all(|s| s.token == 3));
        for (i, (a, b)) in plain.iter().zip(&biased).enumerate() {
            let want = log_softmax(&random_logits(100 + i as u64, 2000));
            let (la, lb) = (a.logprob.as_ref(), b.logprob.as_ref());
            let (la, lb) = (la.expect("lp"), lb.expect("lp"));
            assert_eq!(la.top, lb.top, "top alternatives are from the raw snapshot");
            assert!(
                (lb.logprob - want[3]).abs() < 1e-5,
                "raw logprob of the forced token"
            );
        }
        let watermarked = run(PipelineParams {
            logprobs: spec(5),
            watermark: Some(WatermarkSpec {
                key: key(),
                params: WatermarkParams::default(),
            }),
            ..Default::default()
        });
        let penalised = run(PipelineParams {
            logprobs: spec(5),
            frequency_penalty: 2.0,
            presence_penalty: 2.0,
            ..Default::default()
        });
        for other in [&watermarked, &penalised] {
            assert_ne!(
                plain.iter().map(|s| s.token).collect::<Vec<_>>(),
                other.iter().map(|s| s.token).collect::<Vec<_>>()
            );
            for (i, s) in other.iter().enumerate() {
                let want = log_softmax(&random_logits(100 + i as u64, 2000));
                let lp = s.logprob.as_ref().expect("lp");
                assert_eq!(lp.top, plain[i].logprob.as_ref().expect("lp").top);
                assert!((lp.logprob - want[s.token as usize]).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn penalties_follow_openai_semantics() {
        // Greedy over two tokens; token 0 leads by 1.5. After c uses it is worth
        // 1.5 − c·1.0 − 0.25: 0.25 after one use (still wins), −0.75 after two (loses).
        let mut p = LogitsPipeline::new(
            sampling(0.0),
            PipelineParams {
                frequency_penalty: 1.0,
                presence_penalty: 0.25,
                ..Default::default()
            },
            &[],
        );
        let logits = [1.5f32, 0.0];
        let mut l = logits;
        assert_eq!(p.step(&mut l).token, 0);
        assert_eq!(l, logits, "nothing generated yet: no penalty");
        let mut l = logits;
        assert_eq!(p.step(&mut l).token, 0);
        assert_eq!(l, [0.25, 0.0]);
        let mut l = logits;
        assert_eq!(p.step(&mut l).token, 1);
        assert_eq!(l, [-0.75, 0.0]);
        // Token 1 now carries its own penalty; token 0 keeps its count.
        let mut l = logits;
        p.step(&mut l);
        assert_eq!(l, [-0.75, -1.25]);
    }

    #[test]
    fn rounding_and_top_zero() {
        let raw = random_logits(3, 500);
        let mut p = LogitsPipeline::new(
            sampling(0.0),
            PipelineParams {
                logprobs: Some(LogprobSpec {
                    top: 0,
                    rounding: Some(0.1),
                    noise: None,
                }),
                ..Default::default()
            },
            &[],
        );
        let lp = p.step(&mut raw.clone()).logprob.expect("lp");
        assert!(lp.top.is_empty());
        let tenths = lp.logprob * 10.0;
        assert!((tenths - tenths.round()).abs() < 1e-3, "{}", lp.logprob);
        assert!(lp.logprob <= 0.0);
    }

    #[test]
    fn greedy_is_not_watermarked_but_sampling_is() {
        let wm = PipelineParams {
            watermark: Some(WatermarkSpec {
                key: key(),
                params: WatermarkParams::default(),
            }),
            ..Default::default()
        };
        let greedy = LogitsPipeline::new(sampling(0.0), wm.clone(), &[]);
        assert!(!greedy.watermarked());
        let mut greedy = greedy;
        let raw = random_logits(5, 1000);
        assert_eq!(
            greedy.step(&mut raw.clone()).token,
            crate::sampling::argmax(&raw)
        );
        assert!(LogitsPipeline::new(sampling(0.7), wm, &[]).watermarked());
    }

    #[test]
    fn noise_moves_returned_logprobs_deterministically_and_keeps_the_grid() {
        let raw = random_logits(8, 1000);
        let exact = log_softmax(&raw);
        let secret = crate::sampling::NoiseSecret::new([3; 32]);
        let run = |tenant: &str| {
            let mut p = LogitsPipeline::new(
                sampling(0.0),
                PipelineParams {
                    logprobs: Some(LogprobSpec {
                        top: 5,
                        rounding: Some(0.1),
                        noise: Some(0.5),
                    }),
                    noise_key: Some(secret.key_for(tenant, &[1, 2])),
                    ..Default::default()
                },
                &[1, 2],
            );
            (0..4)
                .map(|_| p.step(&mut raw.clone()).logprob.expect("lp"))
                .collect::<Vec<_>>()
        };
        let a = run("acme");
        assert_eq!(a, run("acme"), "same request, same noise");
        assert_ne!(a, run("demo"), "other key, other noise");
        let mut moved = 0;
        for lp in &a {
            for &(id, v) in &lp.top {
                let tenths = v * 10.0;
                assert!((tenths - tenths.round()).abs() < 1e-3 && v <= 0.0, "{v}");
                if (v - exact[id as usize]).abs() > 0.05 {
                    moved += 1;
                }
            }
        }
        // Laplace(0.5) moves a value by more than half a rounding step with probability
        // e^(-0.1) ≈ 0.9; 20 values that all stayed put would mean no noise was added.
        assert!(moved >= 10, "only {moved} of 20 values moved");
        // Positions differ: the same raw logits at two steps get different noise.
        assert_ne!(a[0].top, a[1].top);
    }
}
