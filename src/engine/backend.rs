//! What the engine thread runs the model on. The scheduler, sampling and accounting in
//! [`super::Engine`] do not care where the forward pass runs or where the KV blocks live: the CPU
//! engine ([`CpuBackend`]) or the GPU forward pass (`crate::gpu::backend::GpuBackend`).

use std::collections::HashMap;
use std::sync::Arc;

use super::kv::{KvError, SeqCache, TenantPool};
use super::llama::{LlamaConfig, LlamaModel};

/// A sequence's KV cache, as the engine sees it.
pub trait KvCache: Send {
    /// Positions already in the cache.
    fn positions(&self) -> usize;
}

impl KvCache for SeqCache {
    fn positions(&self) -> usize {
        SeqCache::len(self)
    }
}

/// A model plus the per-tenant KV pools its sequences draw from.
pub trait Backend: Send + 'static {
    type Cache: KvCache;

    fn config(&self) -> &LlamaConfig;

    /// An empty cache for a new sequence of `tenant`, whose plan allows `budget` bytes of KV.
    /// Each tenant's blocks come from that tenant's own pool.
    fn new_cache(&mut self, tenant: &Arc<str>, budget: u64) -> Result<Self::Cache, String>;

    /// Makes room for `positions` positions in `cache`.
    fn reserve(&mut self, cache: &mut Self::Cache, positions: usize) -> Result<(), KvError>;

    /// Runs each sequence's tokens as one batch; returns each sequence's last logits.
    fn forward_batch(
        &mut self,
        items: &mut [(&[u32], &mut Self::Cache)],
    ) -> Result<Vec<Vec<f32>>, String>;

    /// Ends a sequence: its blocks are cleared and go back to its tenant's pool.
    fn release(&mut self, cache: Self::Cache);

    /// Blocks in use per tenant (for the metrics).
    fn blocks_in_use(&self) -> Vec<(Arc<str>, usize)>;
}

/// The CPU engine over the locked weights; KV blocks in host memory.
pub struct CpuBackend {
    model: Arc<LlamaModel>,
    pools: HashMap<Arc<str>, TenantPool>,
}

impl CpuBackend {
    pub fn new(model: Arc<LlamaModel>) -> Self {
        CpuBackend {
            model,
            pools: HashMap::new(),
        }
    }
}

impl Backend for CpuBackend {
    type Cache = SeqCache;

    fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    fn new_cache(&mut self, tenant: &Arc<str>, budget: u64) -> Result<SeqCache, String> {
        let shape = self.model.kv_shape();
        let pool = self
            .pools
            .entry(tenant.clone())
            .or_insert_with(|| TenantPool::new(shape, budget));
        pool.set_budget(budget);
        Ok(SeqCache::new(pool.clone()))
    }

    fn reserve(&mut self, cache: &mut SeqCache, positions: usize) -> Result<(), KvError> {
        cache.reserve(self.model.kv_shape(), positions)
    }

    fn forward_batch(
        &mut self,
        items: &mut [(&[u32], &mut SeqCache)],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.model.forward_batch(items).map_err(|e| e.to_string())
    }

    fn release(&mut self, cache: SeqCache) {
        // Dropping the cache zeroes its blocks and hands them back to the pool.
        drop(cache);
    }

    fn blocks_in_use(&self) -> Vec<(Arc<str>, usize)> {
        self.pools
            .iter()
            .map(|(t, p)| (t.clone(), p.blocks_in_use()))
            .collect()
    }
}
