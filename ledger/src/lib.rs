//! Refill's domain core: prepaid credits with auto-recharge as a pure, deterministic state
//! machine. No async, no I/O, no clock, no randomness: time and inputs come in, effects go
//! out. The shells (`refill-ingest`, `refill-recharger`) carry the effects out.

pub mod account;
pub mod amount;
pub mod autorecharge;
pub mod catalog;
pub mod codec;
pub mod dedup;
pub mod effects;
pub mod grant;
pub mod ids;
pub mod input;
pub mod money;
pub mod rejection;
pub mod shard;
pub mod sim;
pub mod spend;
pub mod testkit;
pub mod time;

pub use amount::{AmountError, Credits, Quantity};
pub use effects::{AccountHandle, Effects};
pub use input::Input;
pub use money::{Currency, Money, UnitPrice};
pub use rejection::Rejection;
pub use shard::{Shard, ShardConfig};
pub use time::TimestampMs;
