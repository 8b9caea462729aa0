//! The recharger shell: takes recharge commands one at a time, applies each command id at
//! most once with the spend-limit check of [`refill_ledger::spend::SpendBook`] made durable
//! in the [`refill_store::Store`] before any charge, charges the payment [`Gateway`] with the
//! command id as idempotency key, and returns the [`RechargeOutcome`] for the owning shard.
//!
//! Gateways: [`StripeGateway`] (Stripe's real HTTP API) and [`SandboxGateway`] (in memory,
//! following Stripe's test payment methods). Consuming commands from the log and
//! publishing outcomes are the caller's part.
//!
//! [`RechargeOutcome`]: refill_ledger::input::RechargeOutcome

pub mod error;
pub mod gateway;
pub mod sandbox;
pub mod stripe;
pub mod worker;

pub use error::RechargerError;
pub use gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};
pub use sandbox::SandboxGateway;
pub use stripe::{StripeConfig, StripeGateway};
pub use worker::{Recharger, RechargerConfig};
