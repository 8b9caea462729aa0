//! Event intake, the imperative shell around the ledger core: log consumers, the
//! partition → shard assignment, the lock-free balance table, the batching flusher and the
//! HTTP API. Not built yet: this crate holds the place of the `refill serve` issue (#4).
