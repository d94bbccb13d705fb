//! Plain-data description of the tokenizer, as found in GGUF metadata.
//!
//! The integrator fills [`TokenizerSpec`] from candle's GGUF reader; this module
//! performs no I/O. [`TokenizerSpec::validate`] checks everything that would
//! otherwise surface later as wrong token ids.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::tokenizer::error::{Result, TokenizerError};

/// GGUF `token_type` value for an ordinary vocabulary entry.
pub const TOKEN_TYPE_NORMAL: i32 = 1;
/// GGUF `token_type` value for control tokens (`<|im_start|>` etc.).
pub const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `token_type` value for user-defined tokens (matched verbatim, not special).
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// Tokenizer metadata copied out of the GGUF file (`tokenizer.ggml.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerSpec {
    /// `tokenizer.ggml.model`, e.g. `"gpt2"`.
    pub model: String,
    /// `tokenizer.ggml.pre`, e.g. `"smollm"`.
    pub pre: String,
    /// `tokenizer.ggml.tokens`, indexed by token id (byte-level encoded pieces).
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type`, same length as `tokens`.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.merges`, each `"left right"` in priority order.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false for SmolLM2).
    pub add_bos: bool,
    /// `tokenizer.chat_template` (Jinja source).
    pub chat_template: Option<String>,
}

/// The pre-tokenization schemes we reproduce, keyed by llama.cpp's `pre` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// `smollm`: every digit isolated, then GPT-2 byte-level regex, no prefix space.
    SmolLm,
    /// `gpt2` / `default`: GPT-2 byte-level regex, no prefix space.
    ///
    /// Note: llama.cpp's `default` uses a slightly different regex set; we
    /// treat it as GPT-2, which matches HF's `ByteLevel` default.
    Gpt2,
    /// `llama-bpe`: the Llama-3 split regex, then byte-level without regex.
    LlamaBpe,
}

impl PreTokenizerKind {
    /// Maps a GGUF `tokenizer.ggml.pre` value to a supported scheme.
    pub fn from_gguf_name(name: &str) -> Result<Self> {
        match name {
            "smollm" => Ok(Self::SmolLm),
            "gpt2" | "default" => Ok(Self::Gpt2),
            "llama-bpe" | "llama3" => Ok(Self::LlamaBpe),
            other => Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
        }
    }
}

/// A [`TokenizerSpec`] whose invariants have been checked.
#[derive(Debug, Clone, Copy)]
pub struct ValidTokenizerSpec<'a> {
    spec: &'a TokenizerSpec,
    pre: PreTokenizerKind,
}

impl<'a> ValidTokenizerSpec<'a> {
    /// The underlying metadata.
    pub fn spec(&self) -> &'a TokenizerSpec {
        self.spec
    }

    /// The resolved pre-tokenizer scheme.
    pub fn pre(&self) -> PreTokenizerKind {
        self.pre
    }
}

impl TokenizerSpec {
    /// Checks the metadata so that construction can't produce a tokenizer that
    /// silently disagrees with the model's training-time tokenizer.
    pub fn validate(&self) -> Result<ValidTokenizerSpec<'_>> {
        if self.model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(self.model.clone()));
        }
        let pre = PreTokenizerKind::from_gguf_name(&self.pre)?;
        let invalid = |msg: String| Err(TokenizerError::InvalidSpec(msg));
        if self.tokens.is_empty() {
            return invalid("empty vocabulary".into());
        }
        if u32::try_from(self.tokens.len()).is_err() {
            return invalid("vocabulary larger than u32 ids".into());
        }
        if self.token_types.len() != self.tokens.len() {
            return invalid(format!(
                "{} token types for {} tokens",
                self.token_types.len(),
                self.tokens.len()
            ));
        }
        let mut seen = HashSet::with_capacity(self.tokens.len());
        for (id, tok) in self.tokens.iter().enumerate() {
            if tok.is_empty() {
                return invalid(format!("token {id} is empty"));
            }
            if !seen.insert(tok.as_str()) {
                return invalid(format!("duplicate token {tok:?} (id {id})"));
            }
        }
        for (i, merge) in self.merges.iter().enumerate() {
            let ok = merge
                .split_once(' ')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains(' '));
            if !ok {
                return invalid(format!("merge {i} ({merge:?}) is not \"left right\""));
            }
        }
        for (name, id) in [("bos", self.bos_id), ("eos", self.eos_id)] {
            if let Some(id) = id {
                if id as usize >= self.tokens.len() {
                    return invalid(format!("{name} id {id} out of range"));
                }
            }
        }
        if self.add_bos && self.bos_id.is_none() {
            return invalid("add_bos is set but there is no bos id".into());
        }
        Ok(ValidTokenizerSpec { spec: self, pre })
    }
}
