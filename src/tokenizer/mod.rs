//! Tokenizer and chat template for the served model (SmolLM2: GGUF "gpt2"
//! byte-level BPE, pre-tokenizer "smollm").
//!
//! Why this module exists rather than a generic GGUF helper:
//!
//! * **Exact parity.** Token ids must match the model's training-time
//!   tokenizer (checked against llama.cpp reference ids). The BPE, the
//!   pre-tokenizer sequence and the byte-level decoder come from HF
//!   `tokenizers`; we only select the configuration the GGUF `pre` name
//!   means, and refuse names we cannot reproduce exactly.
//! * **No special tokens from user content.** Control tokens
//!   (`<|im_start|>`, `<|im_end|>`, ...) delimit roles; if a user could emit
//!   them they could forge system turns. Untrusted text is therefore always
//!   encoded with control-token parsing disabled
//!   ([`ModelTokenizer::encode_text`]), and the chat template
//!   ([`ChatTemplate::render_ids`]) keeps message content out of the trusted
//!   path entirely.
//!
//! The module does no I/O: callers build a [`TokenizerSpec`] from GGUF metadata.

mod bpe;
mod chat;
mod error;
mod spec;

#[cfg(test)]
mod tests;

pub use bpe::{ModelTokenizer, StreamDecoder};
pub use chat::{ChatMessage, ChatTemplate, Role};
pub use error::{Result, TokenizerError};
pub use spec::{
    PreTokenizerKind, TokenizerSpec, ValidTokenizerSpec, TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL,
    TOKEN_TYPE_USER_DEFINED,
};
