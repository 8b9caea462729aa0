//! The integration tests of refill-store, in one binary: the conformance body against
//! `Embedded`, what is particular to `Embedded`, and the kill -9 durability test.

mod accounts;
mod crash;
mod embedded;
