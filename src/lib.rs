//! Cloister: a confidential multi-tenant LLM inference server.
//!
//! Model weights are sealed at rest (chunked AES-256-GCM, Ed25519-signed, DEK wrapped by a KEK),
//! decrypted only into locked, non-dumpable memory, and served over HTTPS with an
//! OpenAI-compatible API to JWT-authenticated tenants.
//!
//! # Layout
//!
//! Pure core (no I/O, no clocks, no async):
//! - [`seal`]: the sealed-model container: format, streaming AEAD, signatures, rewrap.
//! - [`keys`]: KEK/DEK types, the `KeyProvider` trait, the local keyring, publisher keys.
//! - [`auth`]: JWT verification against a JWKS, principals and scopes, dev token minting.
//! - [`tokenizer`]: byte-level BPE from GGUF metadata and the model's chat template.
//! - [`sampling`]: the logits pipeline (logprob snapshot, `logit_bias`, penalties, watermark,
//!   temperature/top-p), seeded sampling and stop sequences.
//! - [`watermark`]: the keyed SelfHash green-list watermark and its exact binomial detector.
//! - [`guard`]: prompt-injection detection and PII scanning/redaction (also on streams).
//! - [`tenant`]: tenants, plans and per-tenant queue slots.
//! - [`limits`]: plans and GCRA rate limits (requests/s, tokens/min) on an injected clock.
//!
//! Adapters:
//! - [`securemem`]: the locked, non-dumpable, zeroize-on-drop region for plaintext weights.
//! - [`gpu`]: the GPU path: kernel sources (AES-256-CTR decrypt into VRAM, zero-fill), the host
//!   key schedule, and (feature `cuda`) the cudarc device adapter.
//! - [`engine`]: the forward pass over the locked weights and the engine thread.
//! - [`model`]: fetching the demo model, sealing GGUF files, loading sealed models.
//! - [`api`]: axum routes, DTOs, validation and the one error-to-HTTP mapping.
//! - [`tls`]: rustls server configuration and development certificates.
//! - [`config`]: the typed TOML configuration.
//! - [`devstate`]: the development state folder (`.cloister/`).
//! - [`store`]: the durable quota ledger (SQLite, WAL, synchronous=FULL) behind a trait.
//! - [`metrics`]: Prometheus metrics labelled per tenant.
//! - [`reload`]: polling hot reload of the JWKS file.
//! - [`server`]: the composition root and graceful shutdown.

pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod devstate;
pub mod engine;
pub mod gpu;
pub mod guard;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod model_start;
pub mod reload;
pub mod sampling;
pub mod seal;
pub mod securemem;
pub mod server;
pub mod store;
pub mod tenant;
pub mod tls;
pub mod tokenizer;
pub mod watermark;
