mod core_example;
mod grants;
mod props;
mod simulation;
