//! Integration tests of the whole engine: the HTTP contract on an in-process server, and
//! `kill -9` of the real binary, and the `refill recharger` process killed after a charge
//! on the real Kafka and Cassandra, the Kafka topics' retention check and lag gauge, and
//! `refill replay --verify` against the embedded store.

mod ingest_kafka;
mod kafka_retention_lag;
mod kill9;
mod recharger_kill;
mod replay;
mod store_outage;
mod walkthrough;
