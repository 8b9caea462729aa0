//! Event intake, the imperative shell around the ledger core: shard workers over the log,
//! the lock-free balance table, the store rows of the read side, and the HTTP API.

pub mod engine;
pub mod error;
pub mod http;
pub mod num;
pub mod openapi;
pub mod page;
pub mod rows;
pub mod views;
pub mod wire;
