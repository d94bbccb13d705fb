//! Fair admission: per-tenant FIFO queues served round-robin, with a per-tenant share of the
//! running batch.
//!
//! Plain data, no I/O, so the fairness rules are unit-tested without a model. The engine asks
//! [`next_admission`] for at most one new sequence per step. A tenant already holding its fair
//! share of running slots (`max_running / tenants with work`) is skipped, so when one tenant has
//! 50 requests queued and another has 1, the second starts as soon as any slot frees — within
//! the remaining length of the sequences already running, a bounded number of steps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Per-tenant FIFO queues, visited round-robin.
#[derive(Debug)]
pub struct FairQueue<T> {
    queues: HashMap<Arc<str>, VecDeque<T>>,
    order: VecDeque<Arc<str>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            queues: HashMap::new(),
            order: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn push(&mut self, tenant: Arc<str>, item: T) {
        let q = self.queues.entry(tenant.clone()).or_default();
        if q.is_empty() {
            self.order.push_back(tenant);
        }
        q.push_back(item);
        self.len += 1;
    }

    /// Tenants with queued work.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<str>> {
        self.order.iter()
    }

    /// The oldest item of the next tenant (round-robin) that `eligible` accepts.
    pub fn pop(&mut self, mut eligible: impl FnMut(&str) -> bool) -> Option<(Arc<str>, T)> {
        for _ in 0..self.order.len() {
            let tenant = self.order.pop_front()?;
            if !eligible(&tenant) {
                self.order.push_back(tenant);
                continue;
            }
            let Some(q) = self.queues.get_mut(&tenant) else {
                continue;
            };
            let item = q.pop_front();
            if q.is_empty() {
                self.queues.remove(&tenant);
            } else {
                self.order.push_back(tenant.clone());
            }
            if let Some(item) = item {
                self.len -= 1;
                return Some((tenant, item));
            }
        }
        None
    }

    /// Removes and returns every queued item `dead` matches (e.g. clients that went away).
    pub fn remove_where(&mut self, mut dead: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        for q in self.queues.values_mut() {
            let mut keep = VecDeque::with_capacity(q.len());
            for item in q.drain(..) {
                if dead(&item) {
                    out.push(item);
                } else {
                    keep.push_back(item);
                }
            }
            *q = keep;
        }
        self.queues.retain(|_, q| !q.is_empty());
        let queues = &self.queues;
        self.order.retain(|t| queues.contains_key(t));
        self.len -= out.len();
        out
    }
}

/// Picks the next sequence to start, or `None` when the batch is full or every tenant with
/// queued work already holds its fair share. `running` counts running sequences per tenant.
pub fn next_admission<T>(
    queue: &mut FairQueue<T>,
    running: &HashMap<Arc<str>, usize>,
    max_running: usize,
) -> Option<(Arc<str>, T)> {
    let total: usize = running.values().sum();
    if total >= max_running {
        return None;
    }
    let mut with_work: HashSet<&str> = queue.tenants().map(|t| &**t).collect();
    with_work.extend(running.iter().filter(|(_, &n)| n > 0).map(|(t, _)| &**t));
    let share = (max_running / with_work.len().max(1)).max(1);
    let running = running.clone();
    queue.pop(|t| running.get(t).copied().unwrap_or(0) < share)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_between_tenants() {
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push(Arc::from("a"), i);
        }
        q.push(Arc::from("b"), 100);
        let order: Vec<_> = std::iter::from_fn(|| q.pop(|_| true).map(|(_, v)| v)).collect();
        assert_eq!(order, vec![0, 100, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn remove_where_keeps_order_and_len() {
        let mut q = FairQueue::default();
        for i in 0..6 {
            q.push(Arc::from(if i % 2 == 0 { "a" } else { "b" }), i);
        }
        assert_eq!(
            q.remove_where(|v| *v == 1 || *v == 3 || *v == 5),
            vec![1, 3, 5]
        );
        assert_eq!(q.len(), 3);
        let rest: Vec<_> = std::iter::from_fn(|| q.pop(|_| true).map(|(_, v)| v)).collect();
        assert_eq!(rest, vec![0, 2, 4]);
    }

    /// Simulates the engine: every running sequence takes `len` steps; tenant "flood" queues 50
    /// requests, then "one" queues one. "one" must start within the length of one sequence.
    #[test]
    fn flooding_tenant_cannot_starve_another() {
        let (max_running, len) = (4, 20);
        let mut q = FairQueue::default();
        for i in 0..50 {
            q.push(Arc::from("flood"), i);
        }
        let mut running: Vec<(Arc<str>, usize)> = Vec::new();
        let mut started_one = None;
        for step in 0..1000 {
            if step == 7 {
                q.push(Arc::from("one"), 999);
            }
            running.retain(|(_, left)| *left > 0);
            let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
            for (t, _) in &running {
                *counts.entry(t.clone()).or_default() += 1;
            }
            if let Some((t, _)) = next_admission(&mut q, &counts, max_running) {
                if &*t == "one" {
                    started_one = Some(step);
                }
                running.push((t, len));
            }
            for r in &mut running {
                r.1 -= 1;
            }
            if started_one.is_some() {
                break;
            }
        }
        let started = started_one.expect("the single request never started");
        assert!(started <= 7 + len + 1, "started at step {started}");
    }

    #[test]
    fn fair_share_caps_a_tenant_while_others_wait() {
        let mut q = FairQueue::default();
        q.push(Arc::from("a"), 1);
        q.push(Arc::from("b"), 2);
        let mut running = HashMap::new();
        running.insert(Arc::from("a"), 2usize);
        // share = 4 / 2 = 2: "a" is at its share, so "b" goes next even though "a" is first.
        assert_eq!(next_admission(&mut q, &running, 4).map(|x| x.1), Some(2));
        running.insert(Arc::from("b"), 2usize);
        assert!(next_admission(&mut q, &running, 4).is_none());
    }
}
