//! Measures `KafkaLog` against a real broker, for the figures in this crate's README:
//! appends of 1, 100 and 1000 records per call (one thread, then 8 threads of single
//! appends to show the group commit), then reading the topic back through `KafkaLog::read`
//! and through a bare rdkafka consumer, in the same run (DESIGN §8 compares Kafka →
//! balances with a bare consumer).
//!
//! `cargo run --release -p refill-store-kafka --example throughput` with `REFILL_KAFKA` set
//! (`deploy/local/up kafka`). Records are 110 bytes, about a usage event. Extra librdkafka
//! settings for the log's clients, to compare: `REFILL_THROUGHPUT_CLIENT="k=v,k=v"`.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use refill_store::{Log, StoreError};
use refill_store_kafka::{KafkaLog, LogSettings, rdkafka};

const RECORD_BYTES: usize = 110;

fn main() -> ExitCode {
    let Ok(bootstrap) = std::env::var("REFILL_KAFKA") else {
        eprintln!("REFILL_KAFKA not set (deploy/local/up kafka starts a broker)");
        return ExitCode::FAILURE;
    };
    match run(&bootstrap) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Records per second, in integers (the workspace lints float arithmetic).
fn per_second(records: u64, elapsed: Duration) -> u64 {
    let micros = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    records.saturating_mul(1_000_000) / micros
}

fn record(i: u64) -> Vec<u8> {
    let mut bytes = format!(
        "{{\"id\":\"evt-{i:012}\",\"customer_id\":\"cus-{:06}\",\"feature_id\":\"api-call\",\"value\":\"1\"}}",
        i % 100_000
    )
    .into_bytes();
    bytes.resize(RECORD_BYTES, b' ');
    bytes
}

fn run(bootstrap: &str) -> Result<(), StoreError> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let topic = format!("refill-throughput-{}-{stamp}", std::process::id());
    let client_config: Vec<(String, String)> = std::env::var("REFILL_THROUGHPUT_CLIENT")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let settings = LogSettings {
        client_config,
        ..LogSettings::default()
    };
    let log = KafkaLog::connect_with(bootstrap, &topic, 1, settings.clone())?;
    if !settings.client_config.is_empty() {
        println!("client settings: {:?}", settings.client_config);
    }
    println!("topic {topic}, 1 partition, {RECORD_BYTES}-byte records, broker {bootstrap}");
    println!(
        "{:<34} {:>9} {:>9} {:>12}",
        "append", "records", "seconds", "records/s"
    );
    let mut next = 0u64;
    for (batch, calls) in [(1usize, 2_000usize), (100, 500), (1000, 200)] {
        let records: Vec<Vec<u8>> = (0..batch as u64).map(|i| record(next + i)).collect();
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        let started = Instant::now();
        for _ in 0..calls {
            log.append(0, &refs)?;
        }
        let elapsed = started.elapsed();
        let total = (batch * calls) as u64;
        next += total;
        println!(
            "{:<34} {total:>9} {:>9.3} {:>12}",
            format!("batch of {batch}, 1 thread"),
            elapsed.as_secs_f64(),
            per_second(total, elapsed)
        );
    }
    let threads = 8u64;
    let calls = 1_000u64;
    let started = Instant::now();
    thread::scope(|scope| -> Result<(), StoreError> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let log = &log;
                scope.spawn(move || -> Result<(), StoreError> {
                    for i in 0..calls {
                        log.append(0, &[&record(t * calls + i)])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| StoreError::Backend(String::from("an appending thread panicked")))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let total = threads * calls;
    next += total;
    println!(
        "{:<34} {total:>9} {:>9.3} {:>12}",
        format!("batch of 1, {threads} threads"),
        elapsed.as_secs_f64(),
        per_second(total, elapsed)
    );

    let end = log.end_offset(0)?;
    if end != next {
        return Err(StoreError::Backend(format!(
            "expected {next} records on the topic, found {end}"
        )));
    }
    println!();
    println!(
        "{:<34} {:>9} {:>9} {:>12}",
        "read (same run)", "records", "seconds", "records/s"
    );
    for max in [1000usize, 10_000] {
        let reader = KafkaLog::connect_with(bootstrap, &topic, 1, settings.clone())?;
        let started = Instant::now();
        let mut from = 0u64;
        let mut bytes = 0usize;
        while from < end {
            let page = reader.read(0, from, max)?;
            if page.is_empty() {
                return Err(StoreError::Backend(format!(
                    "expected records from {from} up to {end}, found none"
                )));
            }
            bytes += page.iter().map(|r| r.bytes.len()).sum::<usize>();
            from += page.len() as u64;
        }
        let elapsed = started.elapsed();
        println!(
            "{:<34} {end:>9} {:>9.3} {:>12}   ({} MB)",
            format!("KafkaLog::read, max {max}"),
            elapsed.as_secs_f64(),
            per_second(end, elapsed),
            bytes >> 20
        );
    }
    // The settings KafkaLog's readers use (src/client.rs, consumer_config).
    let tuned = [
        ("socket.nagle.disable", "true"),
        ("enable.auto.offset.store", "false"),
        ("fetch.wait.max.ms", "100"),
        ("queued.max.messages.kbytes", "16384"),
    ];
    for (label, settings) in [
        ("bare BaseConsumer, tuned like ours", &tuned[..]),
        ("bare BaseConsumer, rdkafka defaults", &[][..]),
    ] {
        let (count, elapsed) = bare_consumer(bootstrap, &topic, end, settings)?;
        println!(
            "{label:<34} {count:>9} {:>9.3} {:>12}",
            elapsed.as_secs_f64(),
            per_second(count, elapsed)
        );
    }
    drop(log);
    refill_store_kafka::delete_topics(bootstrap, &[&topic])
}

/// Reads `end` records of partition 0 with a plain assigned consumer, touching each payload.
fn bare_consumer(
    bootstrap: &str,
    topic: &str,
    end: u64,
    settings: &[(&str, &str)],
) -> Result<(u64, Duration), StoreError> {
    let backend = |e: rdkafka::error::KafkaError| StoreError::Backend(e.to_string());
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "refill-throughput")
        .set("enable.auto.commit", "false");
    for (key, value) in settings {
        config.set(*key, *value);
    }
    let consumer: BaseConsumer = config.create().map_err(backend)?;
    let mut assignment = TopicPartitionList::new();
    // An explicit offset: Offset::Beginning costs librdkafka about 0.5 s before the first
    // message here (an offset look-up), which would swamp the comparison.
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(0))
        .map_err(backend)?;
    consumer.assign(&assignment).map_err(backend)?;
    let started = Instant::now();
    let mut count = 0u64;
    let mut bytes = 0usize;
    while count < end {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(message)) => {
                bytes += message.payload().map_or(0, <[u8]>::len);
                count += 1;
            }
            Some(Err(e)) => return Err(backend(e)),
            None => {
                return Err(StoreError::Backend(format!(
                    "bare consumer: expected {end} records, found {count} after a 10 s pause"
                )));
            }
        }
    }
    let elapsed = started.elapsed();
    if bytes == 0 {
        return Err(StoreError::Backend(String::from(
            "bare consumer: expected payload bytes, found none",
        )));
    }
    Ok((count, elapsed))
}
