//! The log port over Apache Kafka.
