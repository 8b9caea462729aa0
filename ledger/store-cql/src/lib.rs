//! The storage ports over a CQL store with lightweight transactions (ScyllaDB or Apache Cassandra).
