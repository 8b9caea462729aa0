//! `refill migrate`: applies the Kafka topic settings (`deploy/kafka/topics.toml`) and the
//! CQL schema (`deploy/cql/schema.cql`), idempotently, and reports what it did, then checks
//! the retention of the topics the shards replay from as `refill ingest` does at start.

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `refill migrate`.
#[derive(clap::Args)]
pub struct MigrateArgs {
    /// Kafka bootstrap address; topics are applied when given.
    #[arg(long, env = "REFILL_KAFKA")]
    kafka: Option<String>,
    /// The topic settings file.
    #[arg(long, default_value = "deploy/kafka/topics.toml")]
    topics: PathBuf,
    /// CQL address (ScyllaDB or Cassandra); the schema is applied when given.
    #[arg(long, env = "REFILL_CASSANDRA")]
    cql: Option<String>,
    /// A prefix before every topic name (a namespace on a shared cluster), as `refill
    /// ingest --topic-prefix` and `refill recharger --topic-prefix` use it.
    #[arg(long, env = "REFILL_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// The CQL keyspace to create.
    #[arg(long, env = "REFILL_KEYSPACE", default_value = refill::app::CQL_KEYSPACE)]
    keyspace: String,
    // The retention the topics a shard replays from must have, checked after the topics are
    // applied (as `refill ingest` checks it at start).
    #[command(flatten)]
    retention: crate::ingest::RetentionArgs,
}

/// Applies what was asked; fails when nothing was.
pub fn run(args: &MigrateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.kafka.is_some() || args.cql.is_some(),
        "expected --kafka and/or --cql (or REFILL_KAFKA / REFILL_CASSANDRA), found neither"
    );
    if let Some(bootstrap) = &args.kafka {
        let specs = refill_store_kafka::load_topics(&args.topics)?;
        let specs = refill_store_kafka::prefixed_specs(&specs, &args.topic_prefix, None);
        let report =
            refill_store_kafka::apply_topic_specs(bootstrap, &specs).with_context(|| {
                format!(
                    "cannot apply {} to Kafka at {bootstrap}",
                    args.topics.display()
                )
            })?;
        println!("{report}");
        // The replayed topics the file has (a file of other topics has nothing to check).
        let topics = refill_store_kafka::Topics::with_prefix(&args.topic_prefix);
        let replayed: Vec<&str> = crate::ingest::RetentionArgs::replayed(&topics)
            .into_iter()
            .filter(|name| specs.iter().any(|spec| spec.name == *name))
            .collect();
        let retention = args.retention.report_on(bootstrap, &replayed)?;
        println!("{retention}");
        anyhow::ensure!(
            report.is_clean(),
            "some topics differ from {}; see above",
            args.topics.display()
        );
        anyhow::ensure!(
            retention.is_ok(),
            "some topics the shards replay from keep records too briefly; see above"
        );
    }
    if let Some(address) = &args.cql {
        let store = refill_store_cql::CqlStore::connect(address, &args.keyspace)
            .with_context(|| format!("cannot reach the CQL store at {address}"))?;
        store
            .migrate()
            .with_context(|| format!("cannot apply the schema at {address}"))?;
        println!(
            "cql: keyspace {} and tables are in place at {address}",
            args.keyspace
        );
    }
    Ok(())
}
