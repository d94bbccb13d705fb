//! Sealed-model load cost, as ratios measured in one run (these machines are noisy):
//! - sealed-load time / plaintext-load time for the demo model (goal <= 1.2);
//! - seal and unseal (verify + decrypt) throughput in MB/s;
//! - rewrap time after a KEK rotation (header only; goal < 50 ms).
//!
//! Both loads end in the same place: tensor data in a locked region, model and tokenizer built.
//! The plaintext path reads the GGUF file directly (what an unsealed server would do).
//!
//! Run: `cargo bench --bench sealed_load`

#[path = "support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{BufReader, Cursor};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister::engine::LlamaModel;
use cloister::model::{self, open_sealed};
use cloister::seal::SealedFile;
use cloister::securemem::{LockPolicy, LockedRegion};
use cloister::tokenizer::{ChatTemplate, ModelTokenizer};

const ROUNDS: usize = 5;

fn plaintext_load(path: &std::path::Path) -> Arc<LlamaModel> {
    let (ct, model) = support::plaintext::load_plaintext(path, LockPolicy::Required, None);
    // The sealed path builds the tokenizer and chat template too: same work on both sides.
    let spec = model::tokenizer_spec(&ct).expect("spec");
    let _tok = ModelTokenizer::from_spec(&spec).expect("tokenizer");
    let _chat = ChatTemplate::from_spec(&spec).expect("chat");
    Arc::new(model)
}

fn best(times: &[Duration]) -> f64 {
    times
        .iter()
        .map(Duration::as_secs_f64)
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let gguf = support::demo_gguf();
    let dir = tempfile::tempdir().expect("tempdir");
    let support::DevKeys {
        keyring,
        publisher,
        trusted,
    } = support::dev_keys(dir.path());
    let bytes = std::fs::metadata(&gguf).expect("meta").len() as f64;

    let mut seal_times = Vec::new();
    let mut plain_times = Vec::new();
    let mut sealed_times = Vec::new();
    let mut unseal_times = Vec::new();
    let sealed = dir.path().join("bench.sealed");
    for round in 0..ROUNDS {
        let _ = std::fs::remove_file(&sealed);
        let t = Instant::now();
        model::seal_gguf_file(
            &gguf,
            &sealed,
            "bench",
            &keyring,
            &publisher,
            &mut |_, _| {},
        )
        .expect("seal");
        seal_times.push(t.elapsed());

        // Alternate the order so neither side always runs with a warmer page cache.
        let mut run_plain = || {
            let t = Instant::now();
            std::hint::black_box(plaintext_load(&gguf));
            plain_times.push(t.elapsed());
        };
        let mut run_sealed = || {
            let t = Instant::now();
            std::hint::black_box(
                open_sealed(&sealed, &keyring, &trusted, LockPolicy::Required).expect("load"),
            );
            sealed_times.push(t.elapsed());
        };
        if round % 2 == 0 {
            run_plain();
            run_sealed();
        } else {
            run_sealed();
            run_plain();
        }

        // Unseal alone: signature check + decrypt of both segments into locked memory.
        let t = Instant::now();
        let mut sf = SealedFile::open(
            BufReader::with_capacity(1 << 20, File::open(&sealed).expect("open")),
            &trusted,
            &keyring,
        )
        .expect("open sealed");
        let mut meta = zeroize::Zeroizing::new(vec![0u8; sf.header().meta_len() as usize]);
        sf.decrypt_meta_into(&mut meta).expect("meta");
        let mut region =
            LockedRegion::new(sf.header().tensors_len() as usize, LockPolicy::Required)
                .expect("lock");
        sf.decrypt_tensors_into(region.as_mut_slice())
            .expect("tensors");
        unseal_times.push(t.elapsed());
        std::hint::black_box(Cursor::new(&meta[..]));
    }
    // KEK rotation: rewrap the sealed file's envelope (header only).
    let mut rewrap_times = Vec::new();
    let mut keyring = keyring;
    for _ in 0..ROUNDS {
        keyring.rotate(&mut rand::rngs::OsRng).expect("rotate");
        let t = Instant::now();
        let r = model::rewrap_sealed_file(&sealed, &keyring, &trusted).expect("rewrap");
        rewrap_times.push(t.elapsed());
        assert!(r.in_place);
    }
    let (plain, sealed_load) = (best(&plain_times), best(&sealed_times));
    println!("demo model: {:.1} MB, best of {ROUNDS} rounds", bytes / 1e6);
    println!("plaintext load       {:8.1} ms", plain * 1e3);
    println!("sealed load          {:8.1} ms", sealed_load * 1e3);
    println!(
        "sealed/plaintext     {:8.3}  (goal <= 1.2)",
        sealed_load / plain
    );
    println!(
        "seal throughput      {:8.1} MB/s",
        bytes / best(&seal_times) / 1e6
    );
    println!(
        "unseal throughput    {:8.1} MB/s",
        bytes / best(&unseal_times) / 1e6
    );
    println!(
        "rewrap after rotation{:8.2} ms  (goal < 50 ms; header only)",
        best(&rewrap_times) * 1e3
    );
}
