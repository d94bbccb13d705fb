//! Per-token cost of the logits pipeline (logprob snapshot + `logit_bias` + penalties +
//! watermark + temperature/top-p sampling) as a fraction of one decode step of the demo model,
//! both measured in this run on the same machine. Goal: ≤ 2 %.
//!
//! Run: `cargo bench --bench pipeline`

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use cloister::engine::{LlamaModel, SeqCache};
use cloister::sampling::{
    LogitsPipeline, LogprobSpec, NoiseSecret, PipelineParams, SamplingParams, WatermarkSpec,
};
use cloister::securemem::LockPolicy;
use cloister::watermark::{WatermarkKey, WatermarkParams};

const STEPS: usize = 64;

fn load() -> LlamaModel {
    support::plaintext::load_plaintext(&support::demo_gguf(), LockPolicy::Required, None).1
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let model = load();
    let secret: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(91) ^ 0x3c).collect();
    let key = Arc::new(WatermarkKey::new("bench", &secret).expect("key"));
    let sampling = SamplingParams {
        temperature: 1.0,
        top_p: 0.95,
        seed: 1,
    };
    let prompt = [1u32, 504, 3458, 314, 4649, 314];
    // Decode steps, keeping each step's logits for the pipeline runs.
    let mut cache = SeqCache::default();
    let mut logits = model.forward(&prompt, &mut cache).expect("prefill");
    let mut decode = Vec::new();
    let mut all_logits = Vec::new();
    let mut plain = LogitsPipeline::new(sampling, PipelineParams::default(), &prompt);
    for _ in 0..STEPS {
        all_logits.push(logits.clone());
        let next = plain.step(&mut logits.clone()).token;
        let t = Instant::now();
        logits = model.forward(&[next], &mut cache).expect("decode");
        decode.push(t.elapsed().as_secs_f64());
    }
    let decode = median(decode);
    let configs: [(&str, PipelineParams); 3] = [
        ("sampling only", PipelineParams::default()),
        (
            "watermark + penalties + logit_bias",
            PipelineParams {
                logit_bias: vec![(42, -5.0), (7, 3.0)],
                frequency_penalty: 0.5,
                presence_penalty: 0.5,
                watermark: Some(WatermarkSpec {
                    key: key.clone(),
                    params: WatermarkParams::default(),
                }),
                logprobs: None,
                noise_key: None,
            },
        ),
        (
            "all + logprobs (top 20, noise)",
            PipelineParams {
                logit_bias: vec![(42, -5.0), (7, 3.0)],
                frequency_penalty: 0.5,
                presence_penalty: 0.5,
                watermark: Some(WatermarkSpec {
                    key: key.clone(),
                    params: WatermarkParams::default(),
                }),
                logprobs: Some(LogprobSpec {
                    top: 20,
                    rounding: Some(0.1),
                    noise: Some(0.2),
                }),
                noise_key: Some(NoiseSecret::new([9; 32]).key_for("bench", &prompt)),
            },
        ),
    ];
    println!("decode step (median of {STEPS}): {:.3} ms", decode * 1e3);
    println!(
        "{:<38} {:>7} {:>10} {:>12}",
        "pipeline", "top_p", "ms/token", "% of decode"
    );
    for (name, params) in configs {
        // top_p 1 is the API default (no nucleus cut); 0.95 adds the nucleus selection.
        for top_p in [1.0, 0.95] {
            let sampling = SamplingParams { top_p, ..sampling };
            let mut p = LogitsPipeline::new(sampling, params.clone(), &prompt);
            let mut times = Vec::new();
            for l in &all_logits {
                let mut l = l.clone();
                let t = Instant::now();
                std::hint::black_box(p.step(&mut l));
                times.push(t.elapsed().as_secs_f64());
            }
            let m = median(times);
            println!(
                "{name:<38} {top_p:>7} {:>10.4} {:>11.2}%",
                m * 1e3,
                100.0 * m / decode
            );
        }
    }
}
