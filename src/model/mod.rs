//! The model adapter: fetching the demo model, sealing GGUF files, and loading a sealed model
//! into locked memory.

pub mod fetch;
mod gguf_header;
pub(crate) mod load;
mod rewrap;
mod seal_gguf;

pub use load::{
    build_model, key_provider, load_key_material, load_sealed_model, load_trusted, open_pkcs11,
    open_sealed, read_meta, sealed_kek, verify_sealed_file, BuiltModel, LoadError, LoadedModel,
};
pub use rewrap::{rewrap_sealed_file, RewrapError, RewrapReport};
pub use seal_gguf::{gguf_meta_len, seal_gguf_file, SealGgufError};

use candle_core::quantized::gguf_file;

use crate::tokenizer::TokenizerSpec;

/// Reads the tokenizer description out of GGUF metadata.
pub fn tokenizer_spec(ct: &gguf_file::Content) -> Result<TokenizerSpec, String> {
    let md = &ct.metadata;
    let string = |k: &str| -> Result<String, String> {
        md.get(k)
            .ok_or_else(|| format!("missing {k}"))?
            .to_string()
            .cloned()
            .map_err(|e| format!("{k}: {e}"))
    };
    let strings = |k: &str| -> Result<Vec<String>, String> {
        md.get(k)
            .ok_or_else(|| format!("missing {k}"))?
            .to_vec()
            .map_err(|e| format!("{k}: {e}"))?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|e| format!("{k}: {e}")))
            .collect()
    };
    let opt_u32 = |k: &str| md.get(k).and_then(|v| v.to_u32().ok());
    let token_types = match md.get("tokenizer.ggml.token_type") {
        Some(v) => v
            .to_vec()
            .map_err(|e| format!("token_type: {e}"))?
            .iter()
            .map(|t| t.to_i32().map_err(|e| format!("token_type: {e}")))
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(TokenizerSpec {
        model: string("tokenizer.ggml.model")?,
        pre: string("tokenizer.ggml.pre").unwrap_or_else(|_| "default".into()),
        tokens: strings("tokenizer.ggml.tokens")?,
        token_types,
        merges: strings("tokenizer.ggml.merges")?,
        bos_id: opt_u32("tokenizer.ggml.bos_token_id"),
        eos_id: opt_u32("tokenizer.ggml.eos_token_id"),
        add_bos: md
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(false),
        chat_template: string("tokenizer.chat_template").ok(),
    })
}
