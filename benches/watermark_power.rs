//! Watermark evaluation (issue "Output protections", DESIGN P7), on the real demo model in
//! process, with a fresh random key per run:
//!
//! - **power**: 50 chat completions of 200 tokens at temperature 1 (top_p 1), watermarked with
//!   the default scheme (SelfHash, h = 4, γ = 0.25, δ = 2): share detected at p ≤ 1e-5
//!   (goal ≥ 95 %);
//! - **false positives**: the same 50 prompts generated with the watermark off, and 60
//!   human-written public-domain passages (`tests/data/human_corpus.txt`,
//!   `tests/data/kjv_passages.txt`): detections at p ≤ 1e-5 (goal 0);
//! - **quality cost**: perplexity of the watermarked and unwatermarked samples under the model
//!   (the raw distribution at temperature 1, read off the same forward passes that generated
//!   them).
//!
//! Reading the perplexity: the bias only ever raises green tokens among the 40 most likely
//! candidates (`SELFHASH_CANDIDATES`), so it moves probability from the long tail towards the
//! head. At temperature 1 without truncation, unwatermarked samples draw many tail tokens and
//! score a *higher* perplexity than watermarked ones; the watermark's quality cost here is a
//! shift in which likely tokens are chosen, not a drift into unlikely ones. (Measured on
//! 2026-11-26: PPL 14.9 watermarked vs 30.1 unwatermarked, 50/50 detected, 0/110 false alarms.)
//!
//! Detection goes the way `POST /v1/watermark/detect` does: the completion is decoded to text
//! and re-tokenized, so tokenization round trips are part of what is measured. End-of-text and
//! the other special tokens are suppressed (`logit_bias` −100) so every sample is the full 200
//! tokens: power depends on length, and this measures it at the stated length.
//!
//! Run: `cargo bench --bench watermark_power` (a few minutes on 2 cores). Prints the table and
//! exits non-zero when a goal is missed.

#[path = "support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Instant;

use cloister::engine::{LlamaModel, SeqCache};
use cloister::model;
use cloister::sampling::{
    log_softmax, LogitsPipeline, PipelineParams, SamplingParams, WatermarkSpec,
};
use cloister::securemem::LockPolicy;
use cloister::tokenizer::{ChatMessage, ChatTemplate, ModelTokenizer, Role};
use cloister::watermark::{
    detect, Detection, WatermarkKeyring, WatermarkParams, DEFAULT_THRESHOLD,
};

const SAMPLES: usize = 50;
const TOKENS: usize = 200;
/// Sequences decoded together (one batched forward pass per step).
const BATCH: usize = 10;

const TOPICS: [&str; 10] = [
    "a lighthouse keeper",
    "the history of bread",
    "how volcanoes form",
    "a robot learning to paint",
    "the migration of birds",
    "a small town library",
    "why the sky is blue",
    "a chess tournament",
    "the first day of winter",
    "an old sailing ship",
];
const TASKS: [&str; 5] = [
    "Write a short story about",
    "Write a poem about",
    "Explain to a child",
    "Write a news report about",
    "Write a diary entry about",
];

/// One generated sample: completion ids and the model's mean negative log-likelihood of them.
struct Sample {
    ids: Vec<u32>,
    nll: f64,
}

fn generate(
    model: &LlamaModel,
    prompts: &[Vec<u32>],
    params: &PipelineParams,
    seed: u64,
) -> Vec<Sample> {
    let mut out = Vec::with_capacity(prompts.len());
    for (b, group) in prompts.chunks(BATCH).enumerate() {
        let mut caches: Vec<SeqCache> = group.iter().map(|_| SeqCache::default()).collect();
        let mut pipes: Vec<LogitsPipeline> = group
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let sampling = SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    seed: seed + (b * BATCH + i) as u64,
                };
                LogitsPipeline::new(sampling, params.clone(), p)
            })
            .collect();
        let mut logits: Vec<Vec<f32>> = group
            .iter()
            .zip(caches.iter_mut())
            .map(|(p, c)| model.forward(p, c).expect("prefill"))
            .collect();
        let mut samples: Vec<Sample> = group
            .iter()
            .map(|_| Sample {
                ids: Vec::with_capacity(TOKENS),
                nll: 0.0,
            })
            .collect();
        for step in 0..TOKENS {
            let mut next = Vec::with_capacity(group.len());
            for ((l, pipe), s) in logits.iter_mut().zip(&mut pipes).zip(&mut samples) {
                let raw = log_softmax(l);
                let token = pipe.step(l).token;
                s.nll -= f64::from(raw[token as usize]);
                s.ids.push(token);
                next.push([token]);
            }
            if step + 1 == TOKENS {
                break;
            }
            let mut items: Vec<(&[u32], &mut SeqCache)> = next
                .iter()
                .zip(caches.iter_mut())
                .map(|(n, c)| (&n[..], c))
                .collect();
            logits = model.forward_batch(&mut items).expect("decode");
        }
        for s in &mut samples {
            s.nll /= TOKENS as f64;
        }
        out.extend(samples);
    }
    out
}

/// Detection of `text` as the API does it: re-tokenize, then test the key.
fn detect_text(tok: &ModelTokenizer, keyring: &WatermarkKeyring, text: &str) -> Detection {
    let ids = tok.encode_text(text).expect("encode");
    detect(keyring.active(), &WatermarkParams::default(), &ids)
}

struct Row {
    name: &'static str,
    detections: Vec<Detection>,
    ppl: Option<(f64, f64)>,
}

impl Row {
    fn detected(&self) -> usize {
        self.detections
            .iter()
            .filter(|d| d.is_watermarked(DEFAULT_THRESHOLD))
            .count()
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (mean, median) perplexity of the samples.
fn perplexity(samples: &[Sample]) -> (f64, f64) {
    let ppl: Vec<f64> = samples.iter().map(|s| s.nll.exp()).collect();
    (ppl.iter().sum::<f64>() / ppl.len() as f64, median(ppl))
}

fn human_passages() -> Vec<String> {
    let mut out = Vec::new();
    for file in ["human_corpus.txt", "kjv_passages.txt"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(file);
        let text = std::fs::read_to_string(&path).expect("corpus");
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        out.extend(
            body.split("\n\n")
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned),
        );
    }
    out
}

fn main() {
    let (ct, model) =
        support::plaintext::load_plaintext(&support::demo_gguf(), LockPolicy::BestEffort, None);
    let spec = model::tokenizer_spec(&ct).expect("tokenizer spec");
    let tok = ModelTokenizer::from_spec(&spec).expect("tokenizer");
    let chat = ChatTemplate::from_spec(&spec).expect("chat template");
    let keyring = WatermarkKeyring::generate("eval", &mut rand::rngs::OsRng).expect("key");

    let prompts: Vec<Vec<u32>> = TASKS
        .iter()
        .flat_map(|task| TOPICS.iter().map(move |topic| format!("{task} {topic}.")))
        .take(SAMPLES)
        .map(|q| {
            chat.render_ids(&tok, &[ChatMessage::new(Role::User, q)], true)
                .expect("render")
        })
        .collect();
    // Suppress every special token (end-of-text, turn markers): full-length samples.
    let banned: Vec<(u32, f32)> = (0..tok.vocab_size() as u32)
        .filter(|&id| tok.is_special(id))
        .map(|id| (id, -100.0))
        .collect();
    let plain = PipelineParams {
        logit_bias: banned,
        ..Default::default()
    };
    let marked = PipelineParams {
        watermark: Some(WatermarkSpec {
            key: Arc::new(keyring.active().clone()),
            params: WatermarkParams::default(),
        }),
        ..plain.clone()
    };

    let t = Instant::now();
    let wm = generate(&model, &prompts, &marked, 1_000);
    let off = generate(&model, &prompts, &plain, 1_000);
    let gen_s = t.elapsed().as_secs_f64();
    let scored = |samples: &[Sample]| -> Vec<Detection> {
        samples
            .iter()
            .map(|s| detect_text(&tok, &keyring, &tok.decode(&s.ids)))
            .collect()
    };
    let human = human_passages();
    let (wm_ppl, off_ppl) = (perplexity(&wm), perplexity(&off));
    let rows = [
        Row {
            name: "watermarked, T=1",
            detections: scored(&wm),
            ppl: Some(wm_ppl),
        },
        Row {
            name: "watermark off, T=1",
            detections: scored(&off),
            ppl: Some(off_ppl),
        },
        Row {
            name: "human (public domain)",
            detections: human
                .iter()
                .map(|t| detect_text(&tok, &keyring, t))
                .collect(),
            ppl: None,
        },
    ];

    println!(
        "watermark evaluation: SmolLM2-135M Q4_1, {TOKENS} tokens per sample, SelfHash h=4 \
         γ=0.25 δ=2, threshold p ≤ {DEFAULT_THRESHOLD:e} ({:.0} s generating)",
        gen_s
    );
    println!(
        "{:<24} {:>5} {:>9} {:>9} {:>12} {:>10} {:>9} {:>10}",
        "texts", "n", "detected", "share", "median p", "median z", "scored", "ppl (mean/median)"
    );
    for r in &rows {
        let n = r.detections.len();
        let p = median(r.detections.iter().map(|d| d.p_value).collect());
        let z = median(r.detections.iter().map(|d| d.z).collect());
        let scored = median(r.detections.iter().map(|d| d.scored as f64).collect());
        let ppl = r
            .ppl
            .map_or_else(|| "-".to_owned(), |(m, md)| format!("{m:.2} / {md:.2}"));
        println!(
            "{:<24} {:>5} {:>9} {:>8.1}% {:>12.2e} {:>10.2} {:>9.0} {:>10}",
            r.name,
            n,
            r.detected(),
            100.0 * r.detected() as f64 / n as f64,
            p,
            z,
            scored,
            ppl
        );
    }
    let (wm_mean, off_mean) = (wm_ppl.0, off_ppl.0);
    println!(
        "quality cost: mean perplexity ×{:.3} with the watermark ({wm_mean:.2} vs {off_mean:.2})",
        wm_mean / off_mean
    );

    let power = rows[0].detected() as f64 / rows[0].detections.len() as f64;
    let mut failed = Vec::new();
    if power < 0.95 {
        failed.push(format!("power {:.1}% < 95%", 100.0 * power));
    }
    for r in &rows[1..] {
        if r.detected() > 0 {
            failed.push(format!("{}: {} false positives", r.name, r.detected()));
        }
    }
    if human.len() < 50 {
        failed.push(format!("only {} human texts", human.len()));
    }
    if failed.is_empty() {
        println!("PASS: power ≥ 95 %, no false positives");
    } else {
        println!("FAIL: {}", failed.join("; "));
        std::process::exit(1);
    }
}
