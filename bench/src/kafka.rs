//! Scenario `kafka` (DESIGN §8): usage events produced to a real `refill.usage` (the
//! broker of deploy/local on the same box), then read twice in the same run:
//!
//! 1. by a bare rdkafka consumer (assigned every partition, reads every record once and
//!    touches its bytes), twice, the faster read being the baseline;
//! 2. by Refill's ingest worker as `refill ingest` runs it: the consumer group intake
//!    (parse, validate, batch), the shard journal on Kafka (`refill.journal`, acks=all), the
//!    shards applying each batch into the balances, the store rows written (embedded store
//!    here, so the figure is Kafka's path, not the CQL server's), until every partition's
//!    journal marks reach the end of `refill.usage`.
//!
//! Target: Refill ≥ 80 % of the bare consumer. Then, with the same worker still running and
//! `refill recharger`'s Kafka loop beside it (sandbox gateway, book in the embedded store),
//! threshold crossing → grant applied, one customer at a time: a usage record that takes a
//! balance from 51 below the threshold of 20 is produced, and the clock stops when the
//! shard's balance is at the target of 50 (usage → intake → journal → shard → recharge command on
//! Kafka → recharger → outcome on `refill.account-commands` → intake → journal → shard).
//! Target p99 ≤ 50 ms. Topics get a prefix of their own per run.
//! Without `REFILL_KAFKA`, the scenario says it was skipped and prints nulls.

// Rates and ratios for the report are floats.
#![allow(clippy::float_arithmetic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use refill_ingest::engine::{Engine, EngineConfig};
use refill_ingest::intake::{Intake, IntakeConfig};
use refill_ledger::{Input, testkit};
use refill_store::KvAccountStore;
use refill_store::embedded::Embedded;
use refill_store_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use refill_store_kafka::rdkafka::message::Message;
use refill_store_kafka::rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use refill_store_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use refill_store_kafka::{KafkaLog, Topics};
use serde_json::{Value, json};

use crate::harness::{self, AccountSetup, TempDir, round};
use crate::ingest::push_event;
use crate::report::{Table, thousands};
use crate::zipf::{SplitMix64, Zipf, permutation};

/// DESIGN §8: Kafka → balances as a share of a bare consumer of the same topic.
pub const TARGET_RATIO_VS_BARE: f64 = 0.8;

/// Options of the `kafka` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Accounts (customers `k0000000`.. with one grant each).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Usage events produced (one per record, key = customer id).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Partitions of the run's `refill.usage` (= shards).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub partitions: u32,
    /// Zipf exponent of the customer distribution (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Seed of the customer sequence.
    #[arg(long, default_value_t = 0x5EED_2026)]
    pub seed: u64,
    /// Threshold crossings timed (one customer each, one after another).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub recharges: u32,
    /// Folder for the embedded store (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Every figure of one `kafka` run (`None`: skipped).
#[derive(Clone, Debug)]
pub struct KafkaReport {
    /// The arguments it ran with.
    pub args: KafkaArgs,
    /// Why it was skipped, if it was.
    pub skipped: Option<String>,
    /// Producing the events (untimed setup, reported).
    pub produce: Duration,
    /// The bare consumer reading them all.
    pub bare: Duration,
    /// Joining the group and taking every shard (restore from the flushed rows).
    pub join: Duration,
    /// Refill: every shard assigned → every event applied.
    pub refill: Duration,
    /// Bytes of the produced values.
    pub value_bytes: u64,
    /// Threshold crossing → grant applied, each recharge, sorted (ns).
    pub recharge_ns: Vec<u64>,
}

impl KafkaReport {
    fn rate(&self, elapsed: Duration) -> Option<f64> {
        self.skipped
            .is_none()
            .then(|| self.args.events as f64 / elapsed.as_secs_f64().max(1e-9))
    }

    /// Refill's events per second.
    pub fn events_per_s(&self) -> Option<f64> {
        self.rate(self.refill)
    }

    /// The bare consumer's records per second.
    pub fn bare_per_s(&self) -> Option<f64> {
        self.rate(self.bare)
    }

    /// Refill / bare.
    pub fn ratio(&self) -> Option<f64> {
        Some(self.events_per_s()? / self.bare_per_s()?)
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "refill-bench kafka: {} events, {} accounts, {} partitions, real broker on loopback",
            thousands(self.args.events),
            thousands(u64::from(self.args.accounts)),
            self.args.partitions
        ));
        if let Some(reason) = &self.skipped {
            table.row("skipped", "-", reason);
            return table;
        }
        let per_s = |rate: Option<f64>| {
            rate.map_or_else(
                || "-".into(),
                |rate| format!("{} /s", thousands(rate as u64)),
            )
        };
        let ms = |q: f64| {
            format!(
                "{:.2} ms",
                harness::quantile(&self.recharge_ns, q) as f64 / 1e6
            )
        };
        table
            .row(
                "Refill: Kafka → balances",
                per_s(self.events_per_s()),
                &format!(
                    "group intake → journal on Kafka → shards applied, {:.2} s",
                    self.refill.as_secs_f64()
                ),
            )
            .row(
                "bare rdkafka consumer",
                per_s(self.bare_per_s()),
                &format!("same topic, same run, {:.2} s", self.bare.as_secs_f64()),
            )
            .row(
                "ratio Refill / bare",
                self.ratio()
                    .map_or_else(|| "-".into(), |r| format!("{r:.3}")),
                &format!("target ≥ {TARGET_RATIO_VS_BARE}"),
            )
            .row(
                "join + take every shard",
                format!("{:.3} s", self.join.as_secs_f64()),
                "not in the rate: consumer group join, restore from the flushed rows",
            )
            .row(
                "recharge p50",
                ms(0.5),
                &format!(
                    "threshold crossing → grant applied, {} recharges",
                    self.recharge_ns.len()
                ),
            )
            .row(
                "recharge p99",
                ms(0.99),
                "target ≤ 50 ms, sandbox gateway, all hops on Kafka",
            )
            .row("recharge max", ms(1.0), "")
            .row(
                "produce (setup)",
                per_s(self.rate(self.produce)),
                &format!(
                    "idempotent producer, murmur2 partitioner; {} of values",
                    crate::report::mib(self.value_bytes)
                ),
            );
        table
    }

    /// The `--json` object.
    pub fn json(&self) -> Value {
        let opt = |value: Option<f64>, places| value.map(|value| round(value, places));
        json!({
            "scenario": "kafka",
            "skipped": self.skipped,
            "events_per_s": opt(self.events_per_s(), 0),
            "bare_consumer_events_per_s": opt(self.bare_per_s(), 0),
            "ratio_vs_bare_consumer": opt(self.ratio(), 3),
            "target_ratio_vs_bare_consumer": TARGET_RATIO_VS_BARE,
            "join_s": round(self.join.as_secs_f64(), 3),
            "recharge_p50_ms": (!self.recharge_ns.is_empty()).then(|| round(harness::quantile(&self.recharge_ns, 0.5) as f64 / 1e6, 3)),
            "recharge_p99_ms": (!self.recharge_ns.is_empty()).then(|| round(harness::quantile(&self.recharge_ns, 0.99) as f64 / 1e6, 3)),
            "target_recharge_p99_ms": 50,
            "recharges": self.recharge_ns.len(),
            "produce_s": round(self.produce.as_secs_f64(), 3),
            "events": self.args.events,
            "accounts": self.args.accounts,
            "partitions": self.args.partitions,
        })
    }
}

/// Runs the scenario (skipped without `REFILL_KAFKA`); checks every event is applied and
/// the balances moved by exactly the events' total, never a time.
pub fn run(args: &KafkaArgs) -> anyhow::Result<KafkaReport> {
    let mut report = KafkaReport {
        args: args.clone(),
        skipped: None,
        produce: Duration::ZERO,
        bare: Duration::ZERO,
        join: Duration::ZERO,
        refill: Duration::ZERO,
        value_bytes: 0,
        recharge_ns: Vec::new(),
    };
    let Ok(kafka) = std::env::var("REFILL_KAFKA") else {
        report.skipped = Some(
            "REFILL_KAFKA is not set (deploy/local/up kafka starts a broker and writes it)".into(),
        );
        return Ok(report);
    };
    let prefix = format!(
        "bench{}{}.",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() % 1_000_000)
    );
    let topics = Topics::with_prefix(&prefix);
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kafka/topics.toml");
    let specs = refill_store_kafka::load_topics(std::path::Path::new(path))?;
    let specs = refill_store_kafka::prefixed_specs(&specs, &prefix, Some(args.partitions));
    refill_store_kafka::apply_topic_specs(&kafka, &specs).context("making the run's topics")?;
    let result = measure(args, &kafka, &topics, &mut report);
    let names: Vec<&str> = specs.iter().map(|spec| spec.name.as_str()).collect();
    if let Err(error) = refill_store_kafka::delete_topics(&kafka, &names) {
        eprintln!("kafka bench: the run's topics stay ({error})");
    }
    result.map(|()| report)
}

fn measure(
    args: &KafkaArgs,
    kafka: &str,
    topics: &Topics,
    report: &mut KafkaReport,
) -> anyhow::Result<()> {
    let names = harness::names('k', args.accounts);
    let recharge_names = harness::names('r', args.recharges);
    let data = TempDir::new(args.data_dir.as_deref(), "kafka")?;
    let store = Arc::new(Embedded::open(&data.path().join("db"), args.partitions)?);
    let config = EngineConfig {
        shards: args.partitions,
        ..EngineConfig::default()
    };

    // The accounts, through the journal, then a stop that flushes them.
    let (setup_commands, _setup_command_receiver) = refill_ingest::engine::command_channel();
    let journal = Arc::new(KafkaLog::connect(kafka, &topics.journal, args.partitions)?);
    let setup = Engine::start(
        journal,
        store.clone(),
        Arc::new(KvAccountStore::new(store.clone())),
        config,
        setup_commands,
    )?;
    let setup_account = AccountSetup {
        grant_whole: 1_000_000,
        auto_recharge: false,
    };
    let mut per_shard: Vec<Vec<Input>> = (0..args.partitions)
        .map(|_| testkit::example_catalog())
        .collect();
    for name in &names {
        harness::account_inputs(
            name,
            setup_account,
            &mut per_shard[setup.shard_of(name) as usize],
        );
    }
    let with_auto_recharge = AccountSetup {
        grant_whole: 51,
        auto_recharge: true,
    };
    for name in &recharge_names {
        harness::account_inputs(
            name,
            with_auto_recharge,
            &mut per_shard[setup.shard_of(name) as usize],
        );
    }
    for (shard, inputs) in (0_u32..).zip(per_shard) {
        for chunk in inputs.chunks(5_000) {
            setup.append(shard, chunk.to_vec())?;
        }
    }
    setup.stop();

    // The events, keyed by customer, as any producer sends them.
    let zipf = Zipf::new(args.accounts, args.zipf);
    let mut rng = SplitMix64::new(args.seed);
    let rank_to_account = permutation(args.accounts, &mut rng);
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("creating the producer")?;
    let started = Instant::now();
    let mut value = String::with_capacity(128);
    for index in 0..args.events {
        let customer = &names[rank_to_account[zipf.sample(&mut rng) as usize] as usize];
        value.clear();
        push_event(&mut value, index, customer, 1);
        report.value_bytes += value.len() as u64;
        let mut record = BaseRecord::to(&topics.usage)
            .key(customer.as_str())
            .payload(value.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("flushing the produced events")?;
    report.produce = started.elapsed();
    let ends = end_offsets(kafka, &topics.usage, args.partitions)?;
    ensure!(
        ends.iter().sum::<u64>() == args.events,
        "expected {} records in {}, found {}",
        args.events,
        topics.usage,
        ends.iter().sum::<u64>()
    );

    // The baseline's best of two reads (the first may warm the broker's page cache).
    report.bare = bare_consumer(kafka, &topics.usage, args.partitions, args.events)?.min(
        bare_consumer(kafka, &topics.usage, args.partitions, args.events)?,
    );

    // Refill's worker, as `refill ingest` runs it (store embedded, journal on Kafka), with
    // its command sink, and the recharger's Kafka loop (idle until the recharge part).
    let runtime = harness::server_runtime("kafka-roles")?;
    let (commands, command_receiver) = refill_ingest::engine::command_channel();
    let _sink = runtime.block_on(async {
        refill_ingest::intake::spawn_command_sink(
            kafka,
            &topics.recharge_commands,
            command_receiver,
        )
    })?;
    let recharger = runtime.block_on(refill_recharger::Recharger::open(
        refill_recharger::SandboxGateway::new(),
        store.clone(),
        refill_recharger::RechargerConfig::default(),
    ))?;
    let (stop_recharger, stopped) = tokio::sync::oneshot::channel::<()>();
    let settings = refill_recharger::kafka::KafkaSettings::new(
        kafka,
        topics
            .usage
            .trim_end_matches(refill_store_kafka::USAGE_TOPIC),
    );
    let recharger_task = runtime.spawn(async move {
        refill_recharger::kafka::run(recharger, &settings, async {
            let _ = stopped.await;
        })
        .await
    });
    let journal = Arc::new(KafkaLog::connect(kafka, &topics.journal, args.partitions)?);
    let engine = Engine::create(
        journal,
        store.clone(),
        Arc::new(KvAccountStore::new(store)),
        config,
        commands,
    );
    let started = Instant::now();
    let group = format!(
        "{}refill-ingest",
        topics.usage.trim_end_matches("refill.usage")
    );
    let intake = Intake::start(
        engine.clone(),
        IntakeConfig::new(kafka, topics.clone(), &group),
    )?;
    while engine.owned_shards().len() < args.partitions as usize {
        ensure!(
            started.elapsed() < Duration::from_secs(60) && intake.is_running(),
            "the intake never took every shard"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    report.join = started.elapsed();
    let started = Instant::now();
    let mut pending: Vec<u32> = (0..args.partitions).collect();
    while !pending.is_empty() {
        ensure!(
            started.elapsed() < Duration::from_secs(600) && intake.is_running(),
            "the intake never reached the end of {}",
            topics.usage
        );
        pending.retain(|&shard| {
            engine
                .source_marks(shard)
                .map_or(true, |marks| marks.usage_next < ends[shard as usize])
        });
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    report.refill = started.elapsed();

    // Every event applied exactly once: the balances moved by the events' total.
    let mut spent_micros = 0_i64;
    for name in &names {
        if let Some(balance) = engine.balance(name, harness::CREDIT_TYPE) {
            spent_micros += 1_000_000 * refill_ledger::amount::MICROS_PER_UNIT - balance.micros();
        }
    }
    ensure!(
        spent_micros == i64::try_from(args.events)? * refill_ledger::amount::MICROS_PER_UNIT,
        "expected the balances to have moved by {} credits, found {} micro-credits",
        args.events,
        spent_micros
    );
    let eager: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .create()
        .context("creating the crossing producer")?;
    report.recharge_ns = recharges(&engine, &eager, &topics.usage, &recharge_names)?;
    let _ = stop_recharger.send(());
    let _ = runtime.block_on(recharger_task);
    intake.stop()?;
    engine.stop();
    Ok(())
}

/// One threshold crossing per customer, one after another: produce usage of 32 credits (51
/// → 19, below 20), wait until the shard's balance is at the target, 50. Sorted latencies
/// (ns).
fn recharges(
    engine: &Engine,
    producer: &ThreadedProducer<DefaultProducerContext>,
    usage_topic: &str,
    names: &[String],
) -> anyhow::Result<Vec<u64>> {
    let full = 50 * refill_ledger::amount::MICROS_PER_UNIT;
    let mut latencies = Vec::with_capacity(names.len());
    for (index, name) in names.iter().enumerate() {
        let value = format!(
            r#"{{"id":"recharge-{index}","customer_id":"{name}","feature_id":"{}","value":32}}"#,
            harness::FEATURE
        );
        let started = Instant::now();
        producer
            .send(
                BaseRecord::to(usage_topic)
                    .key(name.as_str())
                    .payload(value.as_str()),
            )
            .map_err(|(error, _)| anyhow::anyhow!("producing the crossing of {name}: {error}"))?;
        // No flush: rdkafka's flush returns on a 100 ms polling tick, longer than the whole
        // recharge; the producer (linger 0) sends at once from its own thread.
        loop {
            // 51 before, 19 after the usage, 50 only once the recharge is applied.
            let balance = engine
                .balance(name, harness::CREDIT_TYPE)
                .map(|b| b.micros());
            if balance == Some(full) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "{name}'s recharge never landed (balance {balance:?} micro-credits; its shard's \
                 sources at {:?})",
                (
                    engine.shard_of(name),
                    engine.source_marks(engine.shard_of(name))
                )
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        latencies.push(harness::nanos(started.elapsed()));
    }
    latencies.sort_unstable();
    Ok(latencies)
}

/// The end offset of each partition.
fn end_offsets(kafka: &str, topic: &str, partitions: u32) -> anyhow::Result<Vec<u64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "refill-bench-watermarks")
        .create()?;
    (0..partitions)
        .map(|partition| {
            let (_, high) = consumer.fetch_watermarks(
                topic,
                i32::try_from(partition)?,
                Duration::from_secs(10),
            )?;
            Ok(u64::try_from(high)?)
        })
        .collect()
}

/// A bare consumer reading every record of `topic` once; returns the time it took.
fn bare_consumer(
    kafka: &str,
    topic: &str,
    partitions: u32,
    events: u64,
) -> anyhow::Result<Duration> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", "refill-bench-bare")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.max.messages.kbytes", "16384")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, i32::try_from(partition)?, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut read = 0_u64;
    let mut touched = 0_u64;
    while read < events {
        ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the bare consumer read {read} of {events} records"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let message = message?;
            // Touch the bytes, as any consumer that uses them must.
            touched += message.payload().map_or(0, |payload| {
                payload.iter().map(|&byte| u64::from(byte)).sum()
            });
            read += 1;
        }
    }
    let elapsed = started.elapsed();
    std::hint::black_box(touched);
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_kafka_run_applies_every_event_and_recharges() {
        let report = run(&KafkaArgs {
            accounts: 200,
            events: 3_000,
            partitions: 2,
            zipf: 1.0,
            seed: 7,
            recharges: 3,
            data_dir: None,
        })
        .expect("kafka scenario runs");
        let json = report.json();
        if let Some(reason) = &report.skipped {
            println!("skipped: {reason}");
            assert!(json["events_per_s"].is_null());
            return;
        }
        // `run` checked every event is applied once (balances moved by the events' total).
        assert_eq!(report.recharge_ns.len(), 3);
        for key in [
            "events_per_s",
            "bare_consumer_events_per_s",
            "ratio_vs_bare_consumer",
            "recharge_p99_ms",
        ] {
            assert!(json[key].is_number(), "missing {key} in {json}");
        }
    }
}
