//! The ledger's integration tests: the worked example, grants, properties and the simulator.

mod core_example;
mod grants;
mod props;
mod simulation;
