//! Starting the sealed model where the config says (`[model] device`, DESIGN.md §10): the CPU
//! engine over locked host memory, or the GPU forward pass with the weights decrypted only in
//! device memory and each tenant's KV cache in its own device pool. The server only sees an
//! engine handle and the model's text side.

use std::sync::Arc;

use crate::config::{Config, ModelDevice};
use crate::engine::{EngineConfig, EngineHandle};
use crate::keys::KekRef;
use crate::metrics::Metrics;
use crate::model::{load_sealed_model, LoadError};
use crate::server::ServeError;
use crate::tokenizer::{ChatTemplate, ModelTokenizer};

/// A model being served: the engine thread that runs it and what the API needs besides.
pub struct StartedModel {
    pub engine: EngineHandle,
    pub tokenizer: Arc<ModelTokenizer>,
    pub chat: ChatTemplate,
    pub context_length: usize,
    /// The KEK that unwrapped the DEK.
    pub kek_ref: KekRef,
    pub publisher: String,
    /// Where the weights are, for the start-up log.
    pub placement: &'static str,
}

/// Loads the sealed model named by `cfg` onto its device and starts the engine thread on it.
/// Blocking (reads and decrypts the weights): call it off the async workers.
pub fn start_model(
    cfg: &Config,
    metrics: Arc<Metrics>,
    engine: EngineConfig,
) -> Result<StartedModel, ServeError> {
    match cfg.device {
        ModelDevice::Cpu => start_on_cpu(cfg, metrics, engine),
        ModelDevice::Cuda { cpu_fallback } => start_on_gpu(cfg, metrics, engine, cpu_fallback),
    }
}

fn start_on_cpu(
    cfg: &Config,
    metrics: Arc<Metrics>,
    engine: EngineConfig,
) -> Result<StartedModel, ServeError> {
    let loaded = load_sealed_model(cfg)?;
    let context_length = loaded.model.config().context_length;
    Ok(StartedModel {
        engine: EngineHandle::start_with(loaded.model, loaded.tokenizer.clone(), metrics, engine)?,
        tokenizer: loaded.tokenizer,
        chat: loaded.chat,
        context_length,
        kek_ref: loaded.kek_ref,
        publisher: loaded.publisher,
        placement: if loaded.weights_locked {
            "locked host memory"
        } else {
            "host memory (not locked)"
        },
    })
}

#[cfg(feature = "cuda")]
fn start_on_gpu(
    cfg: &Config,
    metrics: Arc<Metrics>,
    engine: EngineConfig,
    cpu_fallback: bool,
) -> Result<StartedModel, ServeError> {
    use crate::gpu::backend::GpuBackend;
    use crate::gpu::device::GpuKernels;
    use crate::gpu::model_load::open_sealed_on_gpu;

    let kernels = match GpuKernels::load(0) {
        Ok(k) => Arc::new(k),
        Err(e) if cpu_fallback => {
            tracing::warn!(
                error = %e,
                "model.device = \"cuda\" but the GPU is not usable: serving on the CPU \
                 (model.cpu_fallback = true)"
            );
            return start_on_cpu(cfg, metrics, engine);
        }
        Err(e) => {
            return Err(LoadError::Gpu(format!(
                "model.device = \"cuda\" but the GPU is not usable: {e} (set \
                 model.cpu_fallback = true to serve on the CPU instead)"
            ))
            .into())
        }
    };
    let keys = crate::model::key_provider(cfg)?;
    let trusted = crate::model::load_trusted(cfg)?;
    let loaded = open_sealed_on_gpu(&cfg.sealed_model, keys.as_ref(), &trusted, kernels, None)?;
    let tokenizer = Arc::new(loaded.tokenizer);
    let context_length = loaded.model.config().context_length;
    Ok(StartedModel {
        engine: EngineHandle::start_backend(
            GpuBackend::new(loaded.model),
            tokenizer.clone(),
            metrics,
            engine,
        )?,
        tokenizer,
        chat: loaded.chat,
        context_length,
        kek_ref: loaded.kek_ref,
        publisher: loaded.publisher,
        placement: "GPU 0 (decrypted in device memory only)",
    })
}

/// Without the `cuda` feature the config already refuses `device = "cuda"`.
#[cfg(not(feature = "cuda"))]
fn start_on_gpu(
    _cfg: &Config,
    _metrics: Arc<Metrics>,
    _engine: EngineConfig,
    _cpu_fallback: bool,
) -> Result<StartedModel, ServeError> {
    Err(LoadError::Gpu("this binary was built without the `cuda` feature".into()).into())
}
