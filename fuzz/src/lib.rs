//! Fixtures shared by the fuzz targets: fixed keys and a small valid sealed file, and the
//! tokenizer the tokenizer/request targets run against.
//!
//! Everything here is deterministic (fixed seeds) so a crash input replays on any machine, and
//! built once per process (`OnceLock`) so each fuzz iteration only runs the code under test.

use std::io::Cursor;
use std::sync::OnceLock;

use cloister::keys::{Keyring, PublisherKey, TrustedPublishers};
use cloister::seal::{seal, PayloadKind, SealParams, MIN_CHUNK_SIZE};
use cloister::tokenizer::{ChatTemplate, ModelTokenizer, TokenizerSpec};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

/// Publisher key id the fixture files are signed under.
pub const PUBLISHER_ID: &str = "fuzz-pub";

/// The KEK keyring, the publisher key and the trust store that accepts it.
pub struct Keys {
    pub ring: Keyring,
    pub publisher: PublisherKey,
    pub trusted: TrustedPublishers,
}

/// Fixed test keys (seeded RNG: not secret, only reproducible).
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = StdRng::seed_from_u64(0xC10157E2);
        let ring = Keyring::generate("fuzz-kek", &mut rng).expect("keyring");
        let publisher = PublisherKey::generate(PUBLISHER_ID, &mut rng).expect("publisher key");
        let mut trusted = TrustedPublishers::new();
        trusted
            .insert(PUBLISHER_ID, publisher.verifying_key())
            .expect("trust publisher");
        Keys {
            ring,
            publisher,
            trusted,
        }
    })
}

/// A valid sealed file and the plaintext it holds.
pub struct SealedFixture {
    pub file: Vec<u8>,
    pub plain: Vec<u8>,
    pub meta_len: usize,
}

/// Seals `meta_len` + `tensors_len` bytes of seeded random plaintext with the smallest chunk
/// size, so a few KiB already span several chunks per segment.
pub fn seal_fixture(meta_len: usize, tensors_len: usize, seed: u64) -> SealedFixture {
    let k = keys();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut plain = vec![0u8; meta_len + tensors_len];
    rng.fill_bytes(&mut plain);
    let mut params = SealParams::new("fuzz-model", PayloadKind::Gguf);
    params.chunk_size = MIN_CHUNK_SIZE;
    let mut file = Vec::new();
    seal(
        Cursor::new(&plain),
        &mut file,
        meta_len as u64,
        plain.len() as u64,
        &params,
        &k.ring,
        &k.publisher,
        &mut rng,
        &mut |_| {},
    )
    .expect("seal fixture");
    SealedFixture {
        file,
        plain,
        meta_len,
    }
}

/// The byte-level alphabet of GPT-2 BPE: byte `b` is written as this char in tokens.
fn byte_char(b: u8) -> char {
    // Printable bytes stand for themselves; the others map to U+0100.. in byte order.
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        return char::from(b);
    }
    let n = (0u8..b)
        .filter(|&x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF))
        .count() as u32;
    char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER)
}

/// SmolLM2's chat template (copied from the demo model's GGUF metadata).
pub const SMOLLM2_CHAT_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// A small SmolLM2-shaped spec: the three control tokens, all 256 byte tokens, a user-defined
/// token, and merges that build a few multi-byte tokens (including over the digit/space
/// pre-tokenizer boundaries and a multi-byte UTF-8 character).
pub fn synthetic_spec() -> TokenizerSpec {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut token_types = vec![3, 3, 3];
    for b in 0u8..=255 {
        tokens.push(byte_char(b).to_string());
        token_types.push(1);
    }
    let sp = byte_char(b' ');
    let pairs: Vec<(String, String)> = vec![
        (sp.to_string(), "t".into()),
        ("h".into(), "e".into()),
        (format!("{sp}t"), "he".into()),
        ("i".into(), "n".into()),
        (sp.to_string(), sp.to_string()),
        ("1".into(), "2".into()),
        ("<".into(), "|".into()),
        ("<|".into(), "im".into()),
        ("i".into(), "m".into()),
        // "é" is C3 A9 in UTF-8: a merge across one multi-byte character.
        (byte_char(0xC3).to_string(), byte_char(0xA9).to_string()),
    ];
    let mut merges = Vec::new();
    for (a, b) in pairs {
        let joined = format!("{a}{b}");
        if !tokens.contains(&joined) {
            tokens.push(joined);
            token_types.push(1);
        }
        merges.push(format!("{a} {b}"));
    }
    tokens.push("<tool>".into());
    token_types.push(4);
    TokenizerSpec {
        model: "gpt2".into(),
        pre: "smollm".into(),
        tokens,
        token_types,
        merges,
        bos_id: Some(1),
        eos_id: Some(2),
        add_bos: false,
        chat_template: Some(SMOLLM2_CHAT_TEMPLATE.into()),
    }
}

/// The tokenizer under test: the real SmolLM2 one when its GGUF is in the local model cache
/// (never downloaded here), else [`synthetic_spec`]. Set `CLOISTER_FUZZ_SYNTHETIC_TOKENIZER=1`
/// to force the synthetic one (what CI uses, so runs are comparable everywhere).
pub fn tokenizer() -> &'static (ModelTokenizer, ChatTemplate) {
    static TOK: OnceLock<(ModelTokenizer, ChatTemplate)> = OnceLock::new();
    TOK.get_or_init(|| {
        let spec = real_spec().unwrap_or_else(synthetic_spec);
        let tok = ModelTokenizer::from_spec(&spec).expect("tokenizer");
        let chat = ChatTemplate::from_spec(&spec).expect("chat template");
        (tok, chat)
    })
}

fn real_spec() -> Option<TokenizerSpec> {
    if std::env::var_os("CLOISTER_FUZZ_SYNTHETIC_TOKENIZER").is_some() {
        eprintln!("fuzz: synthetic tokenizer (forced)");
        return None;
    }
    let path = cloister::model::fetch::default_cache_dir()
        .join("models")
        .join(cloister::model::fetch::DEMO_FILE);
    let mut f = std::fs::File::open(&path).ok()?;
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).ok()?;
    let spec = cloister::model::tokenizer_spec(&ct).ok()?;
    eprintln!("fuzz: SmolLM2 tokenizer from {}", path.display());
    Some(spec)
}

/// A tiny llama GGUF that `build_model` accepts: one layer, 32-wide, two query heads sharing one
/// KV head, the synthetic tokenizer, Q8_0 matrices and f32 norms. Returns (meta, tensor data),
/// split where `open_sealed` splits a sealed GGUF.
pub fn tiny_llama_gguf() -> (Vec<u8>, Vec<u8>) {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::{Device, Tensor};

    let spec = synthetic_spec();
    let (d, ff, vocab) = (32usize, 32usize, spec.tokens.len());
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.feed_forward_length", Value::U32(ff as u32)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10_000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.vocab_size", Value::U32(vocab as u32)),
        ("tokenizer.ggml.model", Value::String(spec.model.clone())),
        ("tokenizer.ggml.pre", Value::String(spec.pre.clone())),
        ("tokenizer.ggml.tokens", strings(&spec.tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(spec.token_types.iter().map(|&t| Value::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges", strings(&spec.merges)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        (
            "tokenizer.chat_template",
            Value::String(SMOLLM2_CHAT_TEMPLATE.into()),
        ),
    ];
    let cpu = Device::Cpu;
    let q = |rows: usize, cols: usize, dtype: GgmlDType| -> QTensor {
        let t = Tensor::arange(0f32, (rows * cols) as f32, &cpu)
            .and_then(|t| t.affine(1e-3, -0.1))
            .and_then(|t| t.reshape((rows, cols)))
            .expect("tensor");
        QTensor::quantize(&t, dtype).expect("quantize")
    };
    let norm = || {
        let t = Tensor::ones(d, candle_core::DType::F32, &cpu).expect("tensor");
        QTensor::quantize(&t, GgmlDType::F32).expect("quantize")
    };
    let tensors: Vec<(&str, QTensor)> = vec![
        ("token_embd.weight", q(vocab, d, GgmlDType::Q8_0)),
        ("blk.0.attn_norm.weight", norm()),
        ("blk.0.attn_q.weight", q(d, d, GgmlDType::Q8_0)),
        ("blk.0.attn_k.weight", q(d / 2, d, GgmlDType::Q8_0)),
        ("blk.0.attn_v.weight", q(d / 2, d, GgmlDType::Q8_0)),
        ("blk.0.attn_output.weight", q(d, d, GgmlDType::Q8_0)),
        ("blk.0.ffn_norm.weight", norm()),
        ("blk.0.ffn_gate.weight", q(ff, d, GgmlDType::Q8_0)),
        ("blk.0.ffn_up.weight", q(ff, d, GgmlDType::Q8_0)),
        ("blk.0.ffn_down.weight", q(d, ff, GgmlDType::Q8_0)),
        ("output_norm.weight", norm()),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = Cursor::new(Vec::new());
    gguf_file::write(&mut file, &md, &ts).expect("write gguf");
    let file = file.into_inner();
    let ct = gguf_file::Content::read(&mut Cursor::new(&file[..])).expect("read back");
    let split = ct.tensor_data_offset as usize;
    (file[..split].to_vec(), file[split..].to_vec())
}

/// Writes the generated seed inputs of every target under `dir/<target>/` (the committed
/// corpora were made this way; see fuzz/README.md). Called at start-up by each target when
/// `CLOISTER_FUZZ_WRITE_SEEDS` names a folder.
pub fn write_seeds_if_asked() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Some(dir) = std::env::var_os("CLOISTER_FUZZ_WRITE_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let d = dir.join(target);
            std::fs::create_dir_all(&d).expect("seed dir");
            std::fs::write(d.join(name), bytes).expect("write seed");
        };
        // sealed_open: valid files of several shapes (empty segments, one chunk, many chunks).
        for (name, meta, tensors) in [
            ("valid-empty", 0, 0),
            ("valid-small", 10, 100),
            ("valid-multichunk", 4096 + 1, 2 * 4096),
        ] {
            put("sealed_open", name, &seal_fixture(meta, tensors, 7).file);
        }
        // sealed_mutate: no edit, and one edit of each kind.
        put("sealed_mutate", "none", b"");
        put("sealed_mutate", "flip-header", &[0, 0, 20, 1]);
        put("sealed_mutate", "flip-chunk", &[0, 1, 0, 0x80]);
        put("sealed_mutate", "truncate", &[1, 0x3f, 0xff, 0]);
        put("sealed_mutate", "insert", &[2, 0, 200, 7]);
        put("sealed_mutate", "delete", &[3, 0x10, 0x00, 0]);
        // gguf_meta: the tiny model, split correctly, and with the split one byte off.
        let (meta, tensors) = tiny_llama_gguf();
        let with_split = |split: usize| {
            let mut v = (split as u32).to_le_bytes().to_vec();
            v.extend_from_slice(&meta);
            v.extend_from_slice(&tensors);
            v
        };
        put("gguf_meta", "tiny-llama", &with_split(meta.len()));
        put("gguf_meta", "tiny-llama-bad-split", &with_split(meta.len() - 1));
        // tokenizer: one seed per mode.
        put("tokenizer", "encode", "\0Hello, the 12345 wörld é <|im_start|> <tool> 🦀\n\n  x".as_bytes());
        put("tokenizer", "stream", b"\x01\x00\x10\x01\x0a\x00\xff\xff\xff\x01\x2c\x00\xc3\x00\xa9");
        put("tokenizer", "chat", "\x02system prompt\x01user <|im_end|> hi\x01ok".as_bytes());
        // request_json: chat and completion bodies under each policy.
        let mut v = vec![0x00];
        v.extend_from_slice(
            br#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"max_tokens":5,"temperature":0.7,"top_p":0.9,"stop":["\n"],"seed":-3,"stream":true,"stream_options":{"include_usage":true}}"#,
        );
        put("request_json", "chat", &v);
        let mut v = vec![0x02];
        v.extend_from_slice(br#"{"model":"m","messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":3,"logit_bias":{"5":-2.5},"frequency_penalty":1,"presence_penalty":-1}"#);
        put("request_json", "chat-logprobs", &v);
        let mut v = vec![0x05];
        v.extend_from_slice(br#"{"model":"m","prompt":["the 123"],"logprobs":2,"max_completion_tokens":3,"n":1,"user":"u"}"#);
        put("request_json", "completion", &v);
        let mut v = vec![0x11];
        v.extend_from_slice(br#"{"model":"m","prompt":"hi","bogus":1}"#);
        put("request_json", "unknown-field", &v);
        eprintln!("fuzz: seeds written under {}", dir.display());
    });
}
