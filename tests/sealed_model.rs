//! The real demo model through the sealed container: round trip, tampering, and greedy decoding
//! against the llama.cpp reference, token for token.

mod common;

use std::fs;

use cloister::engine::SeqCache;
use cloister::model::{open_sealed, LoadError};
use cloister::sampling::argmax;
use cloister::securemem::LockPolicy;
use common::{fixture, reference};

fn trusted() -> cloister::keys::TrustedPublishers {
    let f = fixture();
    let (_, trusted) = cloister::model::load_key_material(&f.cfg).expect("key material");
    trusted
}

#[test]
fn sealed_load_is_byte_exact_and_greedy_matches_reference() {
    let f = fixture();
    let loaded = open_sealed(
        &f.cfg.sealed_model,
        &f.keyring(),
        &trusted(),
        LockPolicy::Required,
    )
    .expect("load sealed model");
    assert!(loaded.weights_locked, "weights must be mlocked");
    // Byte-exact: the locked region equals the plaintext tensor data of the original GGUF.
    let plain = fs::read(&f.gguf).expect("read gguf");
    let (meta_len, total) = cloister::model::gguf_meta_len(&f.gguf).expect("meta len");
    assert_eq!(total as usize, plain.len());
    assert!(
        loaded.weights.as_slice() == &plain[meta_len as usize..],
        "tensor bytes differ"
    );

    let refs = reference("greedy.json");
    for case in refs["greedy"].as_array().expect("cases") {
        let prompt: Vec<u32> = case["prompt_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        assert_eq!(
            loaded
                .tokenizer
                .encode_text(case["prompt"].as_str().expect("prompt"))
                .expect("encode"),
            prompt
        );
        let want: Vec<u32> = case["output_ids"]
            .as_array()
            .expect("ids")
            .iter()
            .map(|v| v.as_u64().expect("id") as u32)
            .collect();
        let mut cache = SeqCache::default();
        let mut logits = loaded.model.forward(&prompt, &mut cache).expect("prefill");
        let mut got = Vec::new();
        for _ in 0..want.len() {
            let t = argmax(&logits);
            got.push(t);
            logits = loaded.model.forward(&[t], &mut cache).expect("decode");
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        assert!(
            same == want.len(),
            "prompt {:?}: only {same} of 32 tokens match\n got {got:?}\nwant {want:?}",
            case["prompt"]
        );
    }
}

/// Copies the sealed file, applies `mutate`, and expects the one opaque refusal.
fn assert_refused(name: &str, mutate: impl FnOnce(&mut Vec<u8>)) -> String {
    let f = fixture();
    let mut bytes = fs::read(&f.cfg.sealed_model).expect("read sealed");
    mutate(&mut bytes);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tampered.sealed");
    fs::write(&path, &bytes).expect("write");
    match open_sealed(&path, &f.keyring(), &trusted(), LockPolicy::BestEffort) {
        Err(LoadError::Rejected { .. }) => {}
        Err(other) => panic!("{name}: refused with a revealing error: {other}"),
        Ok(_) => panic!("{name}: tampered model was accepted"),
    }
    let err =
        open_sealed(&path, &f.keyring(), &trusted(), LockPolicy::BestEffort).expect_err("refused");
    err.to_string()
        .replace(&path.display().to_string(), "<path>")
}

#[test]
fn tampering_anywhere_is_refused_with_one_opaque_error() {
    let f = fixture();
    let bytes = fs::read(&f.cfg.sealed_model).expect("read");
    let sealed =
        cloister::seal::SealedFile::open(std::io::Cursor::new(&bytes), &trusted(), &f.keyring())
            .expect("open");
    let layout = *sealed.layout();
    let header_offset = cloister::seal::format::FIXED_PREFIX_LEN;
    let meta = layout.meta.offset as usize;
    let tensors = layout.tensors.offset as usize;
    let first = layout.tensors.chunk(0).expect("first chunk");
    let second = layout.tensors.chunk(1).expect("second chunk");
    let last = layout
        .tensors
        .chunk(layout.tensors.chunk_count - 1)
        .expect("last chunk");
    let stride = (second.offset - first.offset) as usize;
    let flip = |at: usize| move |b: &mut Vec<u8>| b[at] ^= 0x01;
    let mut messages = vec![
        assert_refused("header bit", flip(header_offset + 3)),
        assert_refused("meta chunk bit", flip(meta + 100)),
        assert_refused("tensors chunk bit", flip(tensors + 5000)),
        assert_refused("tag bit", flip(first.offset as usize + first.len)),
        assert_refused("signature bit", flip(layout.trailer_offset as usize + 1)),
        assert_refused("truncate last chunk", |b| b.truncate(last.offset as usize)),
        assert_refused("swap two chunks", |b| {
            let (a, c, n) = (first.offset as usize, second.offset as usize, stride);
            let first = b[a..a + n].to_vec();
            let second = b[c..c + n].to_vec();
            b[a..a + n].copy_from_slice(&second);
            b[c..c + n].copy_from_slice(&first);
        }),
    ];
    messages.dedup();
    assert_eq!(
        messages.len(),
        1,
        "errors differ, which is an oracle: {messages:?}"
    );
}

#[test]
fn wrong_kek_is_refused_the_same_way() {
    let f = fixture();
    let other = cloister::keys::Keyring::generate(
        cloister::devstate::DEV_KEYRING_ID,
        &mut rand::rngs::OsRng,
    )
    .expect("keyring");
    let err = open_sealed(
        &f.cfg.sealed_model,
        &other,
        &trusted(),
        LockPolicy::BestEffort,
    )
    .expect_err("wrong KEK");
    assert!(matches!(err, LoadError::Rejected { .. }), "{err}");
}

#[test]
fn untrusted_publisher_is_refused() {
    let f = fixture();
    let stranger = cloister::keys::PublisherKey::generate(
        cloister::devstate::DEV_PUBLISHER_ID,
        &mut rand::rngs::OsRng,
    )
    .expect("key");
    let mut trusted = cloister::keys::TrustedPublishers::new();
    trusted
        .insert(
            cloister::devstate::DEV_PUBLISHER_ID,
            stranger.verifying_key(),
        )
        .expect("insert");
    let err = open_sealed(
        &f.cfg.sealed_model,
        &f.keyring(),
        &trusted,
        LockPolicy::BestEffort,
    )
    .expect_err("untrusted");
    assert!(matches!(err, LoadError::Rejected { .. }), "{err}");
}

#[test]
fn verify_checks_every_tag_without_plaintext() {
    let f = fixture();
    let ok = cloister::model::verify_sealed_file(&f.cfg.sealed_model, &f.keyring(), &trusted())
        .expect("verify");
    assert!(ok.contains("dev-publisher"), "{ok}");
    let mut bytes = fs::read(&f.cfg.sealed_model).expect("read");
    let n = bytes.len();
    bytes[n / 2] ^= 0x80;
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("bad.sealed");
    fs::write(&p, bytes).expect("write");
    assert!(cloister::model::verify_sealed_file(&p, &f.keyring(), &trusted()).is_err());
}
