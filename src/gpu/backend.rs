//! The GPU forward pass as an engine backend: weights in device memory, each tenant's KV blocks
//! in its own device pool ([`DeviceKvPool`]), cleared by the zero-fill kernel when a sequence
//! ends. Generic over [`DeviceOps`], so the CPU tests run the engine on the host build of the
//! kernels.

use std::collections::HashMap;
use std::sync::Arc;

use super::forward::{DeviceKvPool, DeviceOps, DeviceSeq, GpuLlama, GpuModelError};
use crate::engine::{Backend, KvCache, KvError, LlamaConfig};

impl KvCache for DeviceSeq {
    fn positions(&self) -> usize {
        self.pos()
    }
}

pub struct GpuBackend<D: DeviceOps> {
    model: GpuLlama<D>,
    /// One device allocation per tenant, sized by its plan when first seen. A later change of
    /// the plan's budget applies from the next restart (device pools are not resized live).
    pools: HashMap<Arc<str>, Arc<DeviceKvPool>>,
}

impl<D: DeviceOps> GpuBackend<D> {
    pub fn new(model: GpuLlama<D>) -> Self {
        GpuBackend {
            model,
            pools: HashMap::new(),
        }
    }
}

impl<D: DeviceOps + Send + 'static> Backend for GpuBackend<D> {
    type Cache = DeviceSeq;

    fn config(&self) -> &LlamaConfig {
        self.model.config()
    }

    fn new_cache(&mut self, tenant: &Arc<str>, budget: u64) -> Result<DeviceSeq, String> {
        let pool = match self.pools.get(tenant) {
            Some(p) => p.clone(),
            None => {
                let p = self.model.new_pool(budget).map_err(|e| e.to_string())?;
                self.pools.insert(tenant.clone(), p.clone());
                p
            }
        };
        Ok(DeviceSeq::new(pool))
    }

    fn reserve(&mut self, cache: &mut DeviceSeq, positions: usize) -> Result<(), KvError> {
        self.model.reserve(cache, positions).map_err(|e| match e {
            GpuModelError::KvExhausted { capacity } => KvError::Exhausted { capacity },
            other => KvError::Device(other.to_string()),
        })
    }

    fn forward_batch(
        &mut self,
        items: &mut [(&[u32], &mut DeviceSeq)],
    ) -> Result<Vec<Vec<f32>>, String> {
        self.model.forward_batch(items).map_err(|e| e.to_string())
    }

    fn release(&mut self, cache: DeviceSeq) {
        if let Err(e) = cache.release(self.model.device()) {
            // The blocks stay marked dirty and are cleared before their next use.
            tracing::warn!(error = %e, "clearing released KV blocks on the device failed");
        }
    }

    fn blocks_in_use(&self) -> Vec<(Arc<str>, usize)> {
        self.pools
            .iter()
            .map(|(t, p)| (t.clone(), p.in_use()))
            .collect()
    }
}
