//! Durable token-quota accounting (DESIGN.md §5).
//!
//! [`Ledger`] is a trait so the embedded [`SqliteLedger`] (one machine, the default) can be
//! swapped for a shared store (PostgreSQL) when many replicas must see one quota. Ledger calls
//! block on disk I/O; async callers wrap them in `spawn_blocking`.

mod ledger;
mod sqlite;
#[cfg(test)]
mod tests;

pub use ledger::{
    day_bounds, month_bounds, Ledger, LedgerError, Period, PeriodUsage, Reservation, Usage,
};
pub use sqlite::{Quotas, SqliteLedger};
