//! Paged KV cache: fixed-size blocks drawn from per-tenant pools.
//!
//! A block holds [`BLOCK_POSITIONS`] positions of keys and values for every layer. Each tenant
//! has its own [`TenantPool`] with a block budget derived from its plan's `kv_pool_bytes`; a
//! sequence owns its blocks (they move into its [`SeqCache`], so no block can be held by two
//! sequences) and hands them back to *its tenant's* pool when it ends. Blocks are zeroed when
//! they are handed back, so a reused block never shows a previous sequence's attention state,
//! and zeroed again when the memory is finally released.
//!
//! The pool is deliberately plain: no prefix sharing, no cross-tenant borrowing. A tenant at
//! its budget gets [`KvError::Exhausted`]; other tenants are unaffected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use zeroize::Zeroize;

/// Positions per block.
pub const BLOCK_POSITIONS: usize = 16;

/// Budget for tenants whose plan leaves `kv_pool_bytes` unset.
pub const DEFAULT_KV_POOL_BYTES: u64 = 256 * 1024 * 1024;

/// Geometry of one block: `[layer][k|v][position][kv_dim]` f32 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvShape {
    pub n_layer: usize,
    /// `n_kv_head * head_dim`.
    pub kv_dim: usize,
}

impl KvShape {
    /// f32 values per block.
    pub fn block_floats(&self) -> usize {
        self.n_layer * 2 * BLOCK_POSITIONS * self.kv_dim
    }

    /// Bytes per block.
    pub fn block_bytes(&self) -> usize {
        self.block_floats() * std::mem::size_of::<f32>()
    }

    /// Offset of (`layer`, keys or values, `slot`) inside a block.
    #[inline]
    pub(crate) fn offset(&self, layer: usize, value: bool, slot: usize) -> usize {
        ((layer * 2 + usize::from(value)) * BLOCK_POSITIONS + slot) * self.kv_dim
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The tenant's pool has no free block left.
    #[error("the tenant's KV cache pool is exhausted ({capacity} blocks in use)")]
    Exhausted { capacity: usize },
    /// The block geometry differs from the pool's (a programming error, reported not panicked).
    #[error("KV block shape mismatch")]
    ShapeMismatch,
    /// The device holding the pool failed (e.g. clearing blocks before handing them out).
    #[error("KV pool device: {0}")]
    Device(String),
}

static NEXT_BLOCK_ID: AtomicU64 = AtomicU64::new(1);

/// One block of KV storage. Zeroed on drop.
pub struct KvBlock {
    id: u64,
    data: Box<[f32]>,
}

impl KvBlock {
    fn new(floats: usize) -> Self {
        KvBlock {
            id: NEXT_BLOCK_ID.fetch_add(1, Ordering::Relaxed),
            data: vec![0.0; floats].into_boxed_slice(),
        }
    }

    /// Unique for the life of the process.
    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn data(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }

    fn is_zero(&self) -> bool {
        self.data.iter().all(|v| v.to_bits() == 0)
    }
}

impl Drop for KvBlock {
    fn drop(&mut self) {
        self.data.zeroize();
    }
}

#[derive(Default)]
struct PoolState {
    capacity: usize,
    in_use: usize,
    free: Vec<KvBlock>,
}

/// One tenant's pool. Cheap to clone (a shared handle).
#[derive(Clone)]
pub struct TenantPool {
    shape: KvShape,
    state: Arc<Mutex<PoolState>>,
}

impl std::fmt::Debug for TenantPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantPool")
            .field("shape", &self.shape)
            .field("capacity", &self.capacity())
            .field("in_use", &self.blocks_in_use())
            .finish()
    }
}

impl TenantPool {
    /// A pool of `budget_bytes / block_bytes` blocks (memory is allocated on demand).
    pub fn new(shape: KvShape, budget_bytes: u64) -> Self {
        let pool = TenantPool {
            shape,
            state: Arc::default(),
        };
        pool.set_budget(budget_bytes);
        pool
    }

    /// Changes the budget; blocks already held stay held.
    pub fn set_budget(&self, budget_bytes: u64) {
        let per = self.shape.block_bytes().max(1) as u64;
        let cap = usize::try_from(budget_bytes / per).unwrap_or(usize::MAX);
        self.lock().capacity = cap;
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves consistent counters; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn shape(&self) -> KvShape {
        self.shape
    }

    pub fn capacity(&self) -> usize {
        self.lock().capacity
    }

    pub fn blocks_in_use(&self) -> usize {
        self.lock().in_use
    }

    /// Takes a zeroed block, or refuses when the tenant is at its budget.
    pub fn alloc(&self) -> Result<KvBlock, KvError> {
        let mut s = self.lock();
        if s.in_use >= s.capacity {
            return Err(KvError::Exhausted {
                capacity: s.capacity,
            });
        }
        s.in_use += 1;
        Ok(s.free
            .pop()
            .unwrap_or_else(|| KvBlock::new(self.shape.block_floats())))
    }

    /// Returns a block: it is zeroed before anyone can take it again.
    pub fn free(&self, mut block: KvBlock) {
        block.data.zeroize();
        let mut s = self.lock();
        s.in_use = s.in_use.saturating_sub(1);
        if block.data.len() == self.shape.block_floats() && s.free.len() < s.capacity {
            s.free.push(block);
        }
    }

    /// Whether every block waiting for reuse is all zeros (for tests and audits).
    pub fn free_blocks_are_zero(&self) -> bool {
        self.lock().free.iter().all(KvBlock::is_zero)
    }
}

/// One sequence's attention state: its blocks and how many positions they hold.
///
/// `SeqCache::default()` draws private, unbudgeted blocks (tests, tools); the engine builds
/// caches with [`SeqCache::new`] on the tenant's pool. Dropping the cache hands its blocks back.
#[derive(Default)]
pub struct SeqCache {
    pub(crate) blocks: Vec<KvBlock>,
    pub(crate) pos: usize,
    pool: Option<TenantPool>,
}

impl SeqCache {
    pub fn new(pool: TenantPool) -> Self {
        SeqCache {
            blocks: Vec::new(),
            pos: 0,
            pool: Some(pool),
        }
    }

    /// Number of positions already in the cache.
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Blocks held.
    pub fn block_count(&self) -> usize {
        self.blocks.len()
    }

    /// Ids of the blocks held.
    pub fn block_ids(&self) -> Vec<u64> {
        self.blocks.iter().map(KvBlock::id).collect()
    }

    /// Makes room for `positions` positions in total, taking blocks from the pool.
    pub fn reserve(&mut self, shape: KvShape, positions: usize) -> Result<(), KvError> {
        if let Some(p) = &self.pool {
            if p.shape != shape {
                return Err(KvError::ShapeMismatch);
            }
        }
        let need = positions.div_ceil(BLOCK_POSITIONS);
        while self.blocks.len() < need {
            let block = match &self.pool {
                Some(p) => p.alloc()?,
                None => KvBlock::new(shape.block_floats()),
            };
            if block.data.len() != shape.block_floats() {
                return Err(KvError::ShapeMismatch);
            }
            self.blocks.push(block);
        }
        Ok(())
    }
}

impl Drop for SeqCache {
    fn drop(&mut self) {
        if let Some(p) = &self.pool {
            for b in self.blocks.drain(..) {
                p.free(b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const SHAPE: KvShape = KvShape {
        n_layer: 2,
        kv_dim: 8,
    };

    fn budget(blocks: u64) -> u64 {
        blocks * SHAPE.block_bytes() as u64
    }

    #[test]
    fn tenant_at_budget_cannot_allocate_but_another_can() {
        let a = TenantPool::new(SHAPE, budget(2));
        let b = TenantPool::new(SHAPE, budget(2));
        let mut sa = SeqCache::new(a.clone());
        sa.reserve(SHAPE, 2 * BLOCK_POSITIONS).unwrap();
        let mut sa2 = SeqCache::new(a.clone());
        assert_eq!(
            sa2.reserve(SHAPE, 1),
            Err(KvError::Exhausted { capacity: 2 })
        );
        let mut sb = SeqCache::new(b.clone());
        sb.reserve(SHAPE, 2 * BLOCK_POSITIONS).unwrap();
        drop(sa);
        assert_eq!(a.blocks_in_use(), 0);
        sa2.reserve(SHAPE, 1).unwrap();
        assert_eq!(b.blocks_in_use(), 2);
    }

    #[test]
    fn freed_blocks_are_zeroed_before_reuse() {
        let a = TenantPool::new(SHAPE, budget(1));
        let mut s = SeqCache::new(a.clone());
        s.reserve(SHAPE, 1).unwrap();
        s.blocks[0].data_mut().fill(3.5);
        drop(s);
        assert!(a.free_blocks_are_zero());
        let mut s = SeqCache::new(a.clone());
        s.reserve(SHAPE, 1).unwrap();
        assert!(s.blocks[0].is_zero());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Grow {
            tenant: usize,
            seq: usize,
            by: usize,
        },
        Drop {
            tenant: usize,
            seq: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize, 0..4usize, 1..40usize).prop_map(|(tenant, seq, by)| Op::Grow {
                tenant,
                seq,
                by
            }),
            (0..3usize, 0..4usize).prop_map(|(tenant, seq)| Op::Drop { tenant, seq }),
        ]
    }

    proptest! {
        #[test]
        fn pool_accounting(ops in proptest::collection::vec(op(), 1..80), caps in proptest::collection::vec(1..8u64, 3)) {
            let pools: Vec<TenantPool> = caps.iter().map(|&c| TenantPool::new(SHAPE, budget(c))).collect();
            let mut seqs: Vec<Vec<SeqCache>> = pools
                .iter()
                .map(|p| (0..4).map(|_| SeqCache::new(p.clone())).collect())
                .collect();
            let mut wanted = vec![vec![0usize; 4]; 3];
            for op in ops {
                match op {
                    Op::Grow { tenant, seq, by } => {
                        let target = wanted[tenant][seq] + by;
                        let held: usize = seqs[tenant].iter().map(SeqCache::block_count).sum();
                        let mine = seqs[tenant][seq].block_count();
                        let need = target.div_ceil(BLOCK_POSITIONS).saturating_sub(mine);
                        let others: Vec<usize> = pools.iter().map(TenantPool::blocks_in_use).collect();
                        let r = seqs[tenant][seq].reserve(SHAPE, target);
                        if held + need <= caps[tenant] as usize {
                            prop_assert!(r.is_ok());
                            wanted[tenant][seq] = target;
                        } else {
                            let exhausted = matches!(r, Err(KvError::Exhausted { .. }));
                            prop_assert!(exhausted);
                        }
                        // Other tenants' pools are untouched.
                        for (t, p) in pools.iter().enumerate() {
                            if t != tenant {
                                prop_assert_eq!(p.blocks_in_use(), others[t]);
                            }
                        }
                    }
                    Op::Drop { tenant, seq } => {
                        seqs[tenant][seq] = SeqCache::new(pools[tenant].clone());
                        wanted[tenant][seq] = 0;
                        prop_assert!(pools[tenant].free_blocks_are_zero());
                    }
                }
                let mut ids = HashSet::new();
                for (t, per) in seqs.iter().enumerate() {
                    let held: usize = per.iter().map(SeqCache::block_count).sum();
                    prop_assert_eq!(held, pools[t].blocks_in_use());
                    prop_assert!(held <= caps[t] as usize);
                    for s in per {
                        for id in s.block_ids() {
                            prop_assert!(ids.insert(id), "block {} owned twice", id);
                        }
                    }
                }
            }
        }
    }
}
