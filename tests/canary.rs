//! P1, the canary test: plaintext weights live only in the locked weight region while a model is
//! loaded, and nowhere once it is dropped.
//!
//! We seal a copy of the demo model whose tensor data holds a fresh random 64-byte canary, then
//! scan every readable mapping of a process (`/proc/<pid>/maps` + `/proc/<pid>/mem`):
//! - [`served_model_keeps_the_canary_only_in_the_locked_region`]: a real `cloister serve`
//!   process that has served requests holds the canary exactly once, inside a mapping that is
//!   mlocked (`lo`, `Locked:` > 0), excluded from core dumps (`dd`) and wiped on fork (`wf`);
//! - [`dropped_model_leaves_no_canary_in_this_process`]: the same model loaded with the library
//!   API in this process holds it exactly once (inside `LoadedModel::weights`) and, after the
//!   model is dropped, zero times. (Dropping unmaps the region, so this shows that no copy
//!   outlives the model; the wipe before `munmap` cannot be observed from inside the process.)
//!
//! # Keeping the test's own hands clean
//! The second test scans its own process, so the test must never hold the canary in plain form
//! anywhere the scan could find it, or the count would be wrong for reasons that have nothing to
//! do with the loader. How:
//! - The canary is never materialized. It is defined as `masked ^ mask` of two independent random
//!   64-byte arrays; neither array is the canary, and matching tests `byte ^ mask[i] ==
//!   masked[i]`, which never computes a canary byte at all.
//! - It reaches the model file one byte at a time: the demo GGUF is copied by the kernel
//!   (`std::fs::copy`), then each canary byte is computed into a one-byte buffer and `pwrite`n to
//!   its offset. No 64-byte run of it exists in user memory.
//! - Sealing runs in a child process (`cloister seal`, the project's own sealing code): the
//!   sealer reads the plaintext through buffers of its own, which would otherwise linger in this
//!   process's freed heap. The plaintext copy is deleted as soon as it is sealed.
//! - The scanner's own buffer is skipped when scanning this process (it holds what it just read)
//!   and wiped after every scan, so a scan of the server cannot leave a copy behind either.
//! - Both tests hold one lock: libtest runs tests on parallel threads, and a server scan's
//!   buffer would otherwise be visible to the self-scan.
//! - Nothing canary-related is on the server's command line or environment: it reads the sealed
//!   file named in its config, like in production.
//!
//! # Where the canary sits
//! Inside the embedding row of the last token id (the embedding is Q8_0 and, tied, also the
//! output projection, so every forward pass reads it). A Q8_0 block is an f16 scale and 32 int8
//! quants; 64 contiguous bytes always cover one scale, so the canary is drawn again until the
//! two bytes landing on that scale make a small finite f16 — arbitrary bytes there could give an
//! inf/NaN logit. That conditions 2 bytes out of 64; the rest stay uniformly random.
//!
//! # Permissions
//! The server is non-dumpable, so reading its memory needs root or `CAP_SYS_PTRACE`. Without it
//! the server test prints a loud SKIPPED message and returns instead of asserting anything.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use candle_core::quantized::{gguf_file, GgmlDType};
use cloister::auth::Scope;
use cloister::engine::SeqCache;
use cloister::model::open_sealed;
use cloister::securemem::LockPolicy;
use common::memscan::{scan_file, scan_process, MaskedCanary, CANARY_LEN};
use common::{figure, fixture, skipped, ServeProcess, MODEL_ID};
use serde_json::{json, Value};
use zeroize::Zeroize;

/// Canary byte that lands on the f16 scale of the second Q8_0 block it covers.
const SCALE_AT: usize = 32;

/// A fresh random canary whose bytes `SCALE_AT..SCALE_AT + 2`, read as a little-endian f16, have
/// |x| < 2^-6 (exponent field ≤ 8): a plausible quantization scale.
fn generate_canary() -> MaskedCanary {
    loop {
        let c = MaskedCanary::random();
        let hi = c.byte(SCALE_AT + 1);
        if (hi >> 2) & 0x1f <= 8 {
            return c;
        }
    }
}

/// The sealed canary model, made once per test binary.
struct CanaryModel {
    canary: MaskedCanary,
    sealed: PathBuf,
    config: PathBuf,
    /// Token whose embedding row holds the canary.
    token: u32,
}

fn canary_model() -> &'static CanaryModel {
    static M: OnceLock<CanaryModel> = OnceLock::new();
    M.get_or_init(|| {
        let f = fixture();
        let canary = generate_canary();
        let plain = f.dir.path().join("canary.gguf");
        std::fs::copy(&f.gguf, &plain).expect("copy demo model");
        let (offset, token) = canary_offset(&plain);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&plain)
            .expect("open copy");
        for i in 0..CANARY_LEN {
            let mut one = [canary.byte(i)];
            file.write_all_at(&one, offset + i as u64)
                .expect("write canary byte");
            one.zeroize();
        }
        file.sync_all().expect("sync");
        drop(file);
        // Positive control for the matcher and the offset: the plaintext file holds it once.
        let on_disk = scan_file(&plain, &canary);
        assert_eq!(
            on_disk.hits,
            vec![offset as usize],
            "canary in the GGUF copy"
        );

        let sealed = f.dir.path().join("canary.sealed");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_cloister"))
            .args(["seal", "--model-id", MODEL_ID, "--input"])
            .arg(&plain)
            .arg("--output")
            .arg(&sealed)
            .arg("--keyring")
            .arg(f.state.keyring())
            .arg("--publisher-key")
            .arg(f.state.publisher_key())
            .output()
            .expect("run cloister seal");
        assert!(
            out.status.success(),
            "cloister seal failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&plain).expect("remove plaintext copy");
        assert!(
            scan_file(&sealed, &canary).hits.is_empty(),
            "the sealed file holds the canary in plaintext"
        );
        let config = f.config_serving(&sealed, "canary.toml");
        CanaryModel {
            canary,
            sealed,
            config,
            token,
        }
    })
}

/// File offset of the canary: in the embedding row of the last token, starting at the quants of
/// the row's first Q8_0 block, so byte `SCALE_AT` is the next block's scale.
fn canary_offset(gguf: &Path) -> (u64, u32) {
    let mut file = File::open(gguf).expect("open gguf");
    let ct = gguf_file::Content::read(&mut file).expect("gguf header");
    let emb = &ct.tensor_infos["token_embd.weight"];
    assert_eq!(emb.ggml_dtype, GgmlDType::Q8_0, "demo model embedding type");
    let (rows, cols) = emb.shape.dims2().expect("2-d embedding");
    let block = GgmlDType::Q8_0.type_size(); // 2-byte f16 scale + 32 int8 quants
    assert_eq!(block, 2 + SCALE_AT);
    assert_eq!(cols % 32, 0);
    let row_bytes = cols / 32 * block;
    assert!(row_bytes >= block + CANARY_LEN);
    let last = rows - 1;
    let offset = ct.tensor_data_offset + emb.offset + (last * row_bytes) as u64 + 2;
    (offset, u32::try_from(last).expect("token id"))
}

/// The `/proc/<pid>/smaps` block of the mapping containing `addr`.
fn smaps_entry(pid: u32, addr: usize) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("smaps");
    let range_of = |line: &str| {
        let (s, e) = line.split_whitespace().next()?.split_once('-')?;
        Some(usize::from_str_radix(s, 16).ok()?..usize::from_str_radix(e, 16).ok()?)
    };
    let mut found: Option<String> = None;
    for line in text.lines() {
        match (range_of(line), found.as_mut()) {
            // The next mapping's header ends the block we want.
            (Some(_), Some(_)) => break,
            (Some(range), None) if range.contains(&addr) => found = Some(line.to_string()),
            (None, Some(entry)) => {
                entry.push('\n');
                entry.push_str(line);
            }
            _ => {}
        }
    }
    found.unwrap_or_else(|| panic!("no mapping contains {addr:#x}"))
}

fn smaps_field(entry: &str, field: &str) -> String {
    entry
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap_or_else(|| panic!("{field} missing in\n{entry}"))
        .trim()
        .to_string()
}

/// The two tests must not scan while the other holds canary bytes in a buffer.
static SCAN_LOCK: Mutex<()> = Mutex::new(());

#[test]
fn served_model_keeps_the_canary_only_in_the_locked_region() {
    let _serial = SCAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let m = canary_model();
    let mut server = ServeProcess::start_with(&m.config, "info");
    let pid = server.pid();

    // Serve a few requests so the scan sees a process that has run forward passes, tokenized,
    // sampled and answered over TLS — not just one that loaded the file.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = common::https_client(&[&common::dev_ca()]);
        let token = fixture().token("demo", &[Scope::Inference]);
        let requests = [
            (
                "/v1/completions",
                json!({"model": MODEL_ID, "prompt": "The capital of France is",
                       "max_tokens": 8}),
            ),
            (
                "/v1/chat/completions",
                json!({"model": MODEL_ID, "max_tokens": 8,
                       "messages": [{"role": "user", "content": "Name a colour."}]}),
            ),
            (
                "/v1/completions",
                json!({"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 8,
                       "stream": true}),
            ),
        ];
        for (path, body) in requests {
            let r = client
                .post(format!("{}{path}", server.url()))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await
                .expect("send");
            let status = r.status();
            let text = r.text().await.expect("body");
            assert_eq!(status, 200, "{path}: {text}");
            if !body["stream"].as_bool().unwrap_or(false) {
                let v: Value = serde_json::from_str(&text).expect("json");
                assert!(v["usage"]["completion_tokens"].as_u64() > Some(0), "{v}");
            }
        }
    });
    drop(rt);

    let scan = match scan_process(&pid.to_string(), &m.canary) {
        Ok(scan) => scan,
        Err(e) => {
            skipped(
                "canary.served.hits",
                format_args!(
                    "cannot read /proc/{pid}/mem ({e}); the server is non-dumpable, scanning it \
                     needs root or CAP_SYS_PTRACE"
                ),
                "P1 for the server process",
            );
            return;
        }
    };
    assert!(
        scan.bytes_read > 50 << 20,
        "scanned only {} bytes",
        scan.bytes_read
    );
    assert!(
        scan.unreadable.is_empty(),
        "parts of the server could not be scanned: {:?}",
        scan.unreadable
    );
    figure("canary.served.hits", scan.hits.len());
    figure("canary.served.scanned_mib", scan.bytes_read >> 20);
    assert_eq!(
        scan.hits.len(),
        1,
        "the served canary must be in memory exactly once; found at {:x?}",
        scan.hits
    );
    let entry = smaps_entry(pid, scan.hits[0]);
    let flags = smaps_field(&entry, "VmFlags:");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    for (flag, what) in [
        ("lo", "mlocked"),
        ("dd", "MADV_DONTDUMP"),
        ("wf", "MADV_WIPEONFORK"),
    ] {
        assert!(
            flags.contains(&flag),
            "the canary's mapping is not {what}:\n{entry}"
        );
    }
    let locked_kb: u64 = smaps_field(&entry, "Locked:")
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("Locked kB");
    // Reached only when the flag assertions above held.
    figure(
        "canary.served.mapping",
        format!("mlocked, dontdump, wipeonfork; {locked_kb} kB locked"),
    );
    assert!(locked_kb > 0, "no locked pages:\n{entry}");
    eprintln!(
        "server {pid}: scanned {} MiB ({} KiB freed while scanning); canary once, in a locked \
         region ({locked_kb} kB locked)",
        scan.bytes_read >> 20,
        scan.vanished_bytes >> 10
    );

    let (status, _) = server.stop_and_collect_log();
    assert!(status.success(), "server exit: {status}");
}

#[test]
fn dropped_model_leaves_no_canary_in_this_process() {
    let _serial = SCAN_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let m = canary_model();
    let f = fixture();
    let (_, trusted) = cloister::model::load_key_material(&f.cfg).expect("key material");
    let before = scan_process("self", &m.canary).expect("scan self");
    assert!(
        before.hits.is_empty(),
        "the test process holds the canary before loading: {:x?}",
        before.hits
    );

    let loaded = open_sealed(&m.sealed, &f.keyring(), &trusted, LockPolicy::Required)
        .expect("load the sealed canary model");
    assert!(loaded.weights_locked);
    // One forward pass that looks up the canary's own embedding row (and, tied, projects
    // through it), so any copy the forward path made would show.
    let mut cache = SeqCache::default();
    let logits = loaded
        .model
        .forward(&[1, 504, m.token], &mut cache)
        .expect("forward");
    assert!(logits.iter().all(|x| x.is_finite()), "logits not finite");
    drop((logits, cache));

    let region = loaded.weights.address_range();
    let loaded_scan = scan_process("self", &m.canary).expect("scan self");
    figure("canary.loaded.hits", loaded_scan.hits.len());
    assert_eq!(
        loaded_scan.hits.len(),
        1,
        "loaded: the canary must be in memory exactly once; found at {:x?}",
        loaded_scan.hits
    );
    assert!(
        region.contains(&loaded_scan.hits[0]),
        "the canary is outside the locked region {region:x?}: {:x?}",
        loaded_scan.hits
    );

    drop(loaded);
    let after = scan_process("self", &m.canary).expect("scan self");
    figure("canary.dropped.hits", after.hits.len());
    assert_eq!(
        after.hits.len(),
        0,
        "dropped: the canary must be gone; found at {:x?} (region was {region:x?})",
        after.hits
    );
    eprintln!(
        "self: scanned {} MiB loaded, {} MiB after drop; unreadable: {:?}",
        loaded_scan.bytes_read >> 20,
        after.bytes_read >> 20,
        after.unreadable
    );
}
