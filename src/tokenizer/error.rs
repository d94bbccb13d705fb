//! Error type shared by the tokenizer and chat-template code.

/// Everything that can go wrong while building or using the model tokenizer.
///
/// Backend errors from `tokenizers` and `minijinja` are flattened to strings so
/// that the type stays `Send + Sync + 'static` and cheap to pass across tasks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenizerError {
    /// The GGUF `tokenizer.ggml.model` is not one we can reproduce exactly.
    #[error("unsupported tokenizer model {0:?}: only \"gpt2\" (byte-level BPE) is supported")]
    UnsupportedModel(String),
    /// The GGUF `tokenizer.ggml.pre` names a pre-tokenizer we do not implement;
    /// guessing would silently change token ids, so we refuse instead.
    #[error(
        "unsupported pre-tokenizer {0:?}: supported are \"smollm\", \"gpt2\", \"default\", \"llama-bpe\""
    )]
    UnsupportedPreTokenizer(String),
    /// The metadata is internally inconsistent (lengths, ids, merges, duplicates).
    #[error("invalid tokenizer spec: {0}")]
    InvalidSpec(String),
    /// The `tokenizers` backend failed (construction or encoding).
    #[error("tokenizer backend error: {0}")]
    Backend(String),
    /// Plain-text encoding produced a control token. This must never happen;
    /// it is reported instead of being passed on to the model.
    #[error("plain-text encoding produced control token id {0}; refusing")]
    ControlTokenInText(u32),
    /// The model has no `tokenizer.chat_template`.
    #[error("the model metadata has no chat template")]
    NoChatTemplate,
    /// The chat template failed to parse/compile.
    #[error("chat template does not compile: {0}")]
    TemplateCompile(String),
    /// The chat template failed while rendering (e.g. `raise_exception`).
    #[error("chat template rendering failed: {0}")]
    TemplateRender(String),
}

/// Convenience alias used throughout the tokenizer module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
