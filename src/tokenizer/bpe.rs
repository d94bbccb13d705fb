//! Byte-level BPE tokenizer built on the HF `tokenizers` crate.
//!
//! Two `tokenizers` instances share one configuration and differ only in how
//! control-token markup in the input is treated:
//!
//! * `plain` has `encode_special_tokens = true`, so `<|im_start|>` written in a
//!   user message is tokenized as ordinary text (`<`, `|`, `im`, ...). This is
//!   what every untrusted string goes through.
//! * `special` parses control-token markup into control ids. Only trusted text
//!   produced by the chat template may use it.

use std::collections::HashMap;
use std::sync::Arc;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::tokenizer::error::{Result, TokenizerError};
use crate::tokenizer::spec::{
    PreTokenizerKind, TokenizerSpec, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED,
};

/// The Llama-3 (`llama-bpe`) split regex, as in Meta's HF `tokenizer.json`.
const LLAMA3_SPLIT_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Per-id raw bytes plus control flags, shared (via `Arc`) with every
/// [`StreamDecoder`] so that streams are `'static` and need no borrow of the
/// tokenizer.
#[derive(Debug)]
struct TokenTable {
    /// The bytes each token stands for (byte-level alphabet reversed).
    bytes: Vec<Box<[u8]>>,
    /// `true` for control tokens, which are never rendered as text.
    control: Vec<bool>,
}

impl TokenTable {
    fn is_control(&self, id: u32) -> bool {
        self.control.get(id as usize).copied().unwrap_or(false)
    }
}

/// A piece of trusted (template) text: either literal text or a control token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TrustedSegment<'a> {
    Text(&'a str),
    Control(u32),
}

/// The model's tokenizer. `Send + Sync`; share it behind an `Arc`.
#[derive(Debug)]
pub struct ModelTokenizer {
    plain: Tokenizer,
    special: Tokenizer,
    table: Arc<TokenTable>,
    /// Control tokens as (text, id), longest first, for splitting trusted text.
    control_tokens: Vec<(String, u32)>,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    add_bos: bool,
}

/// GPT-2's reversible byte <-> printable-char mapping, reversed (char -> byte).
fn byte_level_char_to_byte() -> HashMap<char, u8> {
    let mut map = HashMap::with_capacity(256);
    let mut n = 0u32;
    for b in 0u8..=255 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(256 + n).unwrap_or(char::REPLACEMENT_CHARACTER);
            n += 1;
            c
        };
        map.insert(c, b);
    }
    map
}

/// Bytes of one token exactly as HF's `ByteLevel` decoder produces them: if any
/// char is outside the byte-level alphabet the token's UTF-8 is used verbatim.
fn token_bytes(piece: &str, map: &HashMap<char, u8>) -> Box<[u8]> {
    piece
        .chars()
        .map(|c| map.get(&c).copied())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| piece.as_bytes().to_vec())
        .into_boxed_slice()
}

fn backend(context: &str) -> impl FnOnce(tokenizers::Error) -> TokenizerError + '_ {
    move |e| TokenizerError::Backend(format!("{context}: {e}"))
}

impl ModelTokenizer {
    /// Builds the tokenizer from GGUF metadata, validating it first.
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Self> {
        let valid = spec.validate()?;

        let vocab: Vocab = spec
            .tokens
            .iter()
            .enumerate()
            .map(|(id, t)| (t.clone(), id as u32))
            .collect();
        let merges: Merges = spec
            .merges
            .iter()
            .filter_map(|m| m.split_once(' '))
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect();
        // Same settings as SmolLM2's HF tokenizer.json: no unk, no dropout, no
        // byte fallback, merges always applied.
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(backend("building BPE model"))?;

        let pre: PreTokenizerWrapper = match valid.pre() {
            PreTokenizerKind::SmolLm => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            PreTokenizerKind::Gpt2 => ByteLevel::new(false, true, true).into(),
            PreTokenizerKind::LlamaBpe => Sequence::new(vec![
                Split::new(
                    SplitPattern::Regex(LLAMA3_SPLIT_REGEX.to_owned()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(backend("compiling llama-bpe regex"))?
                .into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into(),
        };

        let mut base = Tokenizer::new(bpe);
        base.with_pre_tokenizer(Some(pre));
        base.with_decoder(Some(ByteLevelDecoder::default()));

        let mut control_tokens = Vec::new();
        let mut special_added = Vec::new();
        let mut user_added = Vec::new();
        for (id, (tok, ty)) in spec.tokens.iter().zip(&spec.token_types).enumerate() {
            match *ty {
                TOKEN_TYPE_CONTROL => {
                    control_tokens.push((tok.clone(), id as u32));
                    special_added.push(AddedToken::from(tok.clone(), true).normalized(false));
                }
                TOKEN_TYPE_USER_DEFINED => {
                    user_added.push(AddedToken::from(tok.clone(), false).normalized(false));
                }
                _ => {}
            }
        }
        base.add_special_tokens(special_added)
            .map_err(backend("adding control tokens"))?;
        base.add_tokens(user_added)
            .map_err(backend("adding user-defined tokens"))?;
        control_tokens.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));

        let mut plain = base.clone();
        plain.set_encode_special_tokens(true);

        let map = byte_level_char_to_byte();
        let table = TokenTable {
            bytes: spec.tokens.iter().map(|t| token_bytes(t, &map)).collect(),
            control: spec
                .token_types
                .iter()
                .map(|&t| t == TOKEN_TYPE_CONTROL)
                .collect(),
        };

        Ok(Self {
            plain,
            special: base,
            table: Arc::new(table),
            control_tokens,
            bos_id: spec.bos_id,
            eos_id: spec.eos_id,
            add_bos: spec.add_bos,
        })
    }

    /// Encodes untrusted text. Control-token markup is tokenized as ordinary
    /// characters, so user input can never smuggle in `<|im_start|>` etc.
    /// No BOS is added.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .plain
            .encode_fast(text, false)
            .map_err(backend("encoding text"))?;
        let ids = enc.get_ids();
        // Defence in depth: BPE merges could in theory reach a control piece.
        if let Some(&id) = ids.iter().find(|&&id| self.table.is_control(id)) {
            return Err(TokenizerError::ControlTokenInText(id));
        }
        Ok(ids.to_vec())
    }

    /// Encodes trusted text, turning control-token markup into control ids.
    /// Never call this on user-provided content. No BOS is added.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .special
            .encode_fast(text, false)
            .map_err(backend("encoding trusted text"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, skipping control tokens. Invalid UTF-8 becomes
    /// U+FFFD; unknown ids are ignored.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self.plain.decode(ids, true) {
            Ok(s) => s,
            // The byte-level decoder is infallible; keep a lossless fallback
            // anyway rather than panicking on a request path.
            Err(_) => {
                let bytes: Vec<u8> = ids
                    .iter()
                    .filter(|&&id| !self.table.is_control(id))
                    .filter_map(|&id| self.table.bytes.get(id as usize))
                    .flat_map(|b| b.iter().copied())
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// Text of a single token (control tokens as their markup), lossily
    /// decoded. `None` for ids outside the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.table
            .bytes
            .get(id as usize)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }

    /// Raw bytes of a single token (OpenAI's logprob `bytes`). `None` outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.table.bytes.get(id as usize).map(|b| b.as_ref())
    }

    /// End-of-sequence id (`<|im_end|>` for SmolLM2).
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Beginning-of-sequence id (`<|im_start|>` for SmolLM2).
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// Whether prompts should start with BOS (`add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of ids in the vocabulary (size of the model's logits).
    pub fn vocab_size(&self) -> usize {
        self.table.bytes.len()
    }

    /// Whether `id` is a control token (never produced from user text, never
    /// rendered by [`decode`](Self::decode)).
    pub fn is_special(&self, id: u32) -> bool {
        self.table.is_control(id)
    }

    /// Starts an incremental decoder for streaming a generation.
    pub fn stream_decoder(&self) -> StreamDecoder {
        StreamDecoder {
            table: Arc::clone(&self.table),
            pending: Vec::new(),
        }
    }

    /// Splits trusted text at control-token markup (leftmost, longest match),
    /// mirroring how `encode_with_special` isolates added tokens.
    pub(crate) fn split_trusted<'a>(&self, text: &'a str) -> Vec<TrustedSegment<'a>> {
        let mut out = Vec::new();
        let mut text_start = 0;
        let mut pos = 0;
        while pos < text.len() {
            let rest = &text[pos..];
            let hit = self
                .control_tokens
                .iter()
                .find(|(tok, _)| rest.starts_with(tok.as_str()));
            if let Some((tok, id)) = hit {
                if text_start < pos {
                    out.push(TrustedSegment::Text(&text[text_start..pos]));
                }
                out.push(TrustedSegment::Control(*id));
                pos += tok.len();
                text_start = pos;
            } else {
                pos += rest.chars().next().map_or(1, char::len_utf8);
            }
        }
        if text_start < text.len() {
            out.push(TrustedSegment::Text(&text[text_start..]));
        }
        out
    }
}

/// Incremental detokenizer for streaming.
///
/// Byte-level BPE tokens may end mid-character (emoji, CJK), so bytes are
/// buffered until they form complete UTF-8. Because decoding is a plain byte
/// concatenation, text once emitted can never be changed by a later token, and
/// the concatenation of all pieces plus [`finish`](Self::finish) equals
/// [`ModelTokenizer::decode`] of the whole sequence.
#[derive(Debug, Clone)]
pub struct StreamDecoder {
    table: Arc<TokenTable>,
    pending: Vec<u8>,
}

impl StreamDecoder {
    /// Feeds one generated id; returns newly completed text, if any.
    /// Control tokens and unknown ids produce no text.
    pub fn push(&mut self, id: u32) -> Option<String> {
        if self.table.is_control(id) {
            return None;
        }
        let bytes = self.table.bytes.get(id as usize)?;
        self.pending.extend_from_slice(bytes);
        let out = self.drain_complete();
        (!out.is_empty()).then_some(out)
    }

    /// Flushes whatever is left (an incomplete trailing sequence becomes
    /// U+FFFD, exactly as a lossy full decode would render it).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Emits all complete characters; invalid sequences become U+FFFD (same
    /// maximal-subpart rule as `String::from_utf8_lossy`), an incomplete tail
    /// stays buffered.
    fn drain_complete(&mut self) -> String {
        let mut out = String::new();
        let mut start = 0;
        while start < self.pending.len() {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(
                        &self.pending[start..start + valid],
                    ));
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += valid + bad;
                        }
                        None => {
                            start += valid;
                            break;
                        }
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }
}
