//! The wiring of Refill's engine, shared by the `refill` binary and its tests.

pub mod app;
pub mod replay;
