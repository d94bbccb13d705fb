//! The tokenizer and chat template on arbitrary text (the first input byte picks the property).
//!
//! Properties that must hold for every input:
//! - `encode_text` (untrusted text) never yields a control id, and decodes back to the input
//!   minus the bytes that have no token (see below);
//! - streaming decode of any id sequence (unknown and control ids included) equals `decode`;
//! - chat rendering: the control ids of the prompt depend only on the roles, never on message
//!   content, so content cannot open or close a turn.

#![no_main]

use std::sync::OnceLock;

use cloister::tokenizer::{ChatMessage, Role};
use cloister_fuzz::tokenizer;
use libfuzzer_sys::fuzz_target;

/// Which bytes have a single-byte token in the vocabulary.
fn representable() -> &'static [bool; 256] {
    static R: OnceLock<[bool; 256]> = OnceLock::new();
    R.get_or_init(|| {
        let (tok, _) = tokenizer();
        let mut r = [false; 256];
        for id in 0..tok.vocab_size() as u32 {
            if let (Some(&[b]), false) = (tok.token_bytes(id), tok.is_special(id)) {
                r[usize::from(b)] = true;
            }
        }
        r
    })
}

fuzz_target!(|data: &[u8]| {
    cloister_fuzz::write_seeds_if_asked();
    let (tok, chat) = tokenizer();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            let ids = tok
                .encode_text(&text)
                .expect("untrusted text always encodes");
            assert!(ids.iter().all(|&id| (id as usize) < tok.vocab_size()));
            assert!(ids.iter().all(|&id| !tok.is_special(id)));
            // Round trip, except for bytes that have no token of their own: byte-level BPE
            // without byte fallback drops them (SmolLM2's vocabulary lacks 21 byte tokens,
            // e.g. 0x04, 0x16, 0xF1), exactly as the reference tokenizer does.
            let kept: Vec<u8> = text
                .bytes()
                .filter(|&b| representable()[usize::from(b)])
                .collect();
            assert_eq!(
                tok.decode(&ids),
                String::from_utf8_lossy(&kept),
                "encode/decode round trip"
            );
            // Trusted encoding must not panic either (its output may contain control ids).
            let _ = tok.encode_with_special(&text);
        }
        1 => {
            let vocab = tok.vocab_size() as u32;
            let ids: Vec<u32> = rest
                .chunks(2)
                .map(|c| {
                    let v = u32::from(c[0]) << 8 | u32::from(*c.get(1).unwrap_or(&0));
                    // Mostly in-vocabulary ids, some just past the end, some huge.
                    match v % 16 {
                        0 => vocab + v % 4,
                        1 => u32::MAX - v % 4,
                        _ => v % vocab,
                    }
                })
                .collect();
            let whole = tok.decode(&ids);
            let mut stream = tok.stream_decoder();
            let mut streamed = String::new();
            for &id in &ids {
                if let Some(piece) = stream.push(id) {
                    streamed.push_str(&piece);
                }
                let _ = tok.token_text(id);
                let _ = tok.token_bytes(id);
            }
            streamed.push_str(&stream.finish());
            assert_eq!(streamed, whole, "stream decode differs from decode");
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let roles = [Role::System, Role::User, Role::Assistant];
            let messages: Vec<ChatMessage> = text
                .split('\u{1}')
                .take(8)
                .enumerate()
                .map(|(i, part)| ChatMessage::new(roles[(i + part.len()) % 3], part))
                .collect();
            let blank: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage::new(m.role, "x"))
                .collect();
            let Ok(ids) = chat.render_ids(tok, &messages, true) else {
                return;
            };
            let control = |ids: &[u32]| -> Vec<u32> {
                ids.iter()
                    .copied()
                    .filter(|&id| tok.is_special(id))
                    .collect()
            };
            let reference = chat
                .render_ids(tok, &blank, true)
                .expect("blank messages render");
            assert_eq!(
                control(&ids),
                control(&reference),
                "content changed the turn structure"
            );
        }
    }
});
