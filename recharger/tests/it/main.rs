//! Integration tests of the recharger: one gateway contract run against every gateway
//! (the sandbox always, Stripe through stripe-mock when `REFILL_STRIPE_MOCK` is set), and
//! the worker's guarantees (one charge per command id, spend limit, restarts) over the
//! sandbox and an in-memory fake of the store port; one body per guarantee of the book
//! port run against the embedded book and the CQL book (`REFILL_CASSANDRA`).

mod book;
mod contract;
mod sandbox;
mod support;
mod worker;
