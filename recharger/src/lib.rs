//! The recharger shell: takes recharge commands, applies each command id at most once with
//! the spend-limit check of [`refill_ledger::spend::SpendBook`] made durable through the
//! [`RechargeBook`] port before any charge, charges the payment [`Gateway`] with the command
//! id as idempotency key, and returns the [`RechargeOutcome`] for the owning shard.
//!
//! Books: [`StoreBook`] (the whole spend book in a [`refill_store::Store`], the embedded
//! default) and [`CqlBook`] (CQL rows moved by lightweight transactions, shared by any
//! number of recharger processes). Gateways: [`StripeGateway`] (Stripe's real HTTP API) and
//! [`SandboxGateway`] (following Stripe's test payment methods, in memory or durable).
//! Transport: [`kafka`] consumes `refill.recharge-commands` and publishes outcomes on
//! `refill.account-commands` (what `refill recharger` runs).
//!
//! [`RechargeOutcome`]: refill_ledger::input::RechargeOutcome

pub mod book;
pub mod cql;
pub mod error;
pub mod gateway;
pub mod kafka;
pub mod sandbox;
pub mod stripe;
pub mod worker;

pub use book::{RechargeBook, Settlement, StoreBook};
pub use cql::CqlBook;
pub use error::RechargerError;
pub use gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};
pub use sandbox::{SandboxGateway, SandboxJournalError, SandboxRecord};
pub use stripe::{StripeConfig, StripeGateway};
pub use worker::{Recharger, RechargerConfig};
