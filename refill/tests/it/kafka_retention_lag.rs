//! The Kafka topics' retention, checked at start, and the consumer-lag gauge, on the real
//! Kafka (and Cassandra for the worker) of deploy/local:
//!
//! - `refill ingest` refuses a `refill.usage` that keeps records too briefly, saying what it
//!   found, what it needs and the `kafka-configs.sh` command that fixes it (the minimum from
//!   `REFILL_USAGE_RETENTION_MIN_MS` too); `refill migrate` on the same topics fails the
//!   same way, and the topics `refill migrate` makes pass;
//! - a worker started on a backlog shows `refill_ingest_lag_records{partition}` above zero
//!   on /metrics, then falling to zero as its shard reads the backlog.
//!
//! Without the servers each test prints that it was skipped and why; under `CI` that fails.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use refill_store_kafka::{TopicSpec, rdkafka};

const KEY: &str = "test-key-0123456789";
const TOPICS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kafka/topics.toml");

/// Longest any one step may take.
const STEP: Duration = Duration::from_secs(90);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.trim().is_empty())
}

/// The value of a server variable, or `None` after saying the test is skipped (a failure
/// under CI).
fn server(variable: &str) -> Option<String> {
    let value = std::env::var(variable)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    if value.is_none() {
        assert!(
            !in_ci(),
            "expected {variable} to be set under CI (deploy/local/up kafka cassandra), found it unset"
        );
        println!("skipped: {variable} not set (deploy/local/up kafka cassandra starts it)");
    }
    value
}

/// A name no other test or run uses.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!(
        "{}n{}t{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() % 1_000_000)
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// The contract's topics under `prefix`, deleted when dropped (kept after a failure).
struct Namespace {
    kafka: String,
    prefix: String,
    names: Vec<String>,
}

impl Namespace {
    /// Makes the contract's topics under a fresh prefix with `partitions` partitions, each
    /// spec changed by `edit` first.
    fn make(kafka: &str, partitions: u32, edit: impl Fn(&mut TopicSpec)) -> Namespace {
        let prefix = format!("test{}.", unique());
        let specs = refill_store_kafka::load_topics(Path::new(TOPICS_FILE)).expect("topics file");
        let mut specs = refill_store_kafka::prefixed_specs(&specs, &prefix, Some(partitions));
        for spec in &mut specs {
            edit(spec);
        }
        refill_store_kafka::apply_topic_specs(kafka, &specs).expect("topics made");
        Namespace {
            kafka: kafka.to_owned(),
            prefix,
            names: specs.into_iter().map(|spec| spec.name).collect(),
        }
    }

    fn usage(&self) -> String {
        format!("{}{}", self.prefix, refill_store_kafka::USAGE_TOPIC)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        if let Err(error) = refill_store_kafka::delete_topics(&self.kafka, &names) {
            eprintln!("cleanup: expected the test topics deleted, found {error}");
        }
    }
}

/// Sets (or replaces) one topic setting of a spec.
fn set(spec: &mut TopicSpec, key: &str, value: &str) {
    spec.config.retain(|(name, _)| name != key);
    spec.config.push((key.to_owned(), value.to_owned()));
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `refill ARGS` to its end (at most [`STEP`]) and returns what it printed.
fn refill(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_refill"));
    command
        .args(args)
        .env_remove("REFILL_USAGE_RETENTION_MIN_MS")
        .env_remove("REFILL_TOPIC_PREFIX")
        // `refill migrate` would apply the schema to the shared keyspace otherwise.
        .env_remove("REFILL_CASSANDRA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = Killed(command.spawn().expect("refill starts"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("refill waited for") {
            break status;
        }
        assert!(
            started.elapsed() < STEP,
            "expected `refill {}` to end within {STEP:?}, found it still running",
            args.join(" ")
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    if let Some(mut out) = child.0.stdout.take() {
        let _ = out.read_to_end(&mut stdout);
    }
    if let Some(mut err) = child.0.stderr.take() {
        let _ = err.read_to_end(&mut stderr);
    }
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn ingest_refuses_a_usage_topic_that_keeps_records_too_briefly_and_says_the_fix() {
    let Some(kafka) = server("REFILL_KAFKA") else {
        return;
    };
    // refill.usage as an operator might have made it by hand: 1 hour, and a size limit.
    let namespace = Namespace::make(&kafka, 1, |spec| {
        if spec.name.ends_with(refill_store_kafka::USAGE_TOPIC) {
            set(spec, "retention.ms", "3600000");
            set(spec, "retention.bytes", "1073741824");
        }
    });
    let usage = namespace.usage();
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    // The check comes before the store is touched: no CQL server is needed to be refused.
    let ingest = |env: &[(&str, &str)]| {
        refill(
            &[
                "ingest",
                "--kafka",
                &kafka,
                "--store",
                "cassandra://127.0.0.1:1",
                "--topic-prefix",
                &namespace.prefix,
                "--listen",
                &listen,
                "--api-key",
                KEY,
            ],
            env,
        )
    };
    let refused = ingest(&[]);
    let stderr = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "expected refill ingest to refuse the topic, found it exit with {} after:\n{stderr}",
        refused.status
    );
    for expected in [
        "refusing to start".to_owned(),
        format!("{usage}: would delete records a shard may still need to replay"),
        String::from(
            "retention.ms: found 3600000 (1 h), needed -1 (unlimited) or at least 604800000 (7 d)",
        ),
        String::from("retention.bytes: found 1073741824, needed -1"),
        format!(
            "fix: kafka-configs.sh --bootstrap-server {kafka} --alter --entity-type topics \
             --entity-name {usage} --add-config retention.ms=604800000,retention.bytes=-1"
        ),
        String::from("REFILL_USAGE_RETENTION_MIN_MS"),
    ] {
        assert!(
            stderr.contains(&expected),
            "expected {expected:?} in what refill ingest said, found:\n{stderr}"
        );
    }
    // The journal and the account commands, made by the file, are not blamed.
    assert!(
        stderr.contains(&format!(
            "{}refill.journal: keeps records long enough",
            namespace.prefix
        )),
        "expected the journal reported fine, found:\n{stderr}"
    );

    // A lower minimum from the environment clears retention.ms; the size limit still holds
    // it back.
    let refused = ingest(&[("REFILL_USAGE_RETENTION_MIN_MS", "3600000")]);
    let stderr = text(&refused.stderr);
    assert!(
        !refused.status.success(),
        "expected a refusal for retention.bytes, found success:\n{stderr}"
    );
    assert!(
        stderr.contains("retention.bytes: found 1073741824")
            && !stderr.contains("retention.ms: found"),
        "expected only retention.bytes blamed with a 1 h minimum, found:\n{stderr}"
    );
    assert!(
        stderr.contains("--add-config retention.bytes=-1"),
        "expected the fix for retention.bytes alone, found:\n{stderr}"
    );

    // `refill migrate` on these topics fails too, with the same findings.
    let migrate = refill(
        &[
            "migrate",
            "--kafka",
            &kafka,
            "--topics",
            TOPICS_FILE,
            "--topic-prefix",
            &namespace.prefix,
        ],
        &[],
    );
    let stdout = text(&migrate.stdout);
    assert!(
        !migrate.status.success(),
        "expected refill migrate to fail on the short retention, found success:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "--entity-name {usage} --add-config retention.ms=604800000"
        )),
        "expected migrate to print the fix, found:\n{stdout}"
    );
}

#[test]
fn the_topics_refill_migrate_makes_pass_the_retention_check() {
    let Some(kafka) = server("REFILL_KAFKA") else {
        return;
    };
    let prefix = format!("test{}.", unique());
    let migrate = refill(
        &[
            "migrate",
            "--kafka",
            &kafka,
            "--topics",
            TOPICS_FILE,
            "--topic-prefix",
            &prefix,
        ],
        &[],
    );
    let specs = refill_store_kafka::load_topics(Path::new(TOPICS_FILE)).expect("topics file");
    let names: Vec<String> = refill_store_kafka::prefixed_specs(&specs, &prefix, None)
        .into_iter()
        .map(|spec| spec.name)
        .collect();
    let stdout = text(&migrate.stdout);
    assert!(
        migrate.status.success(),
        "expected refill migrate to succeed, found {}:\n{stdout}\n{}",
        migrate.status,
        text(&migrate.stderr)
    );
    let topics = refill_store_kafka::Topics::with_prefix(&prefix);
    let replayed = [&topics.usage, &topics.account_commands, &topics.journal];
    for name in replayed {
        assert!(
            stdout.contains(&format!("{name}: keeps records long enough")),
            "expected {name} to pass in migrate's report, found:\n{stdout}"
        );
    }
    let names_ref: Vec<&str> = replayed.iter().map(|name| name.as_str()).collect();
    let report = refill_store_kafka::check_retention(
        &kafka,
        &names_ref,
        refill_store_kafka::RETENTION_MIN_MS_DEFAULT,
    )
    .expect("configuration read");
    assert!(
        report.is_ok(),
        "expected the check to pass, found:\n{report}"
    );
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    if let Err(error) = refill_store_kafka::delete_topics(&kafka, &all) {
        eprintln!("cleanup: expected the test topics deleted, found {error}");
    }
}

/// The value of `refill_ingest_lag_records{partition="P"}` on a worker's /metrics, if shown.
async fn lag_of(client: &reqwest::Client, port: u16, partition: u32) -> Option<(u64, bool)> {
    let body = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let described = body.contains("# HELP refill_ingest_lag_records ");
    let series = format!("refill_ingest_lag_records{{partition=\"{partition}\"}} ");
    body.lines()
        .find_map(|line| line.strip_prefix(series.as_str()))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| (value as u64, described))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_gauge_shows_a_backlog_then_falls_to_zero() {
    let (Some(kafka), Some(cql)) = (server("REFILL_KAFKA"), server("REFILL_CASSANDRA")) else {
        return;
    };
    const BACKLOG: usize = 50_000;
    let namespace = tokio::task::block_in_place(|| Namespace::make(&kafka, 1, |_| {}));
    let keyspace = format!("refill_lag_{}", unique());
    tokio::task::block_in_place(|| {
        refill_store_cql::CqlStore::connect(&cql, &keyspace)
            .expect("cql connects")
            .migrate()
            .expect("schema");
    });
    // The backlog, produced before any worker reads the topic (the feature is unknown to
    // the catalog: each event is read and refused by the shard, as cheap as it gets).
    tokio::task::block_in_place(|| {
        let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("linger.ms", "5")
            .create()
            .expect("producer");
        let usage = namespace.usage();
        for event in 0..BACKLOG {
            let payload = format!(
                r#"{{"id":"e-{event}","customer_id":"c-1","feature_id":"api-call","value":1}}"#
            );
            loop {
                match producer.send(BaseRecord::to(&usage).key("c-1").payload(&payload)) {
                    Ok(()) => break,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
        producer
            .flush(Duration::from_secs(60))
            .expect("backlog produced");
    });

    let port = free_port();
    let worker = Killed(
        Command::new(env!("CARGO_BIN_EXE_refill"))
            .args([
                "ingest",
                "--kafka",
                &kafka,
                "--store",
                &format!("cassandra://{cql}"),
                "--keyspace",
                &keyspace,
                "--topic-prefix",
                &namespace.prefix,
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .env("REFILL_API_KEY", KEY)
            .env_remove("REFILL_USAGE_RETENTION_MIN_MS")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("refill ingest starts"),
    );
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut seen: Vec<u64> = Vec::new();
    let mut described = false;
    while seen.last() != Some(&0) || seen.iter().all(|&lag| lag == 0) {
        assert!(
            started.elapsed() < STEP,
            "expected the lag to show the backlog then reach 0 within {STEP:?}, found {seen:?}"
        );
        if let Some((lag, help)) = lag_of(&client, port, 0).await {
            described |= help;
            if seen.last() != Some(&lag) {
                seen.push(lag);
            }
            if lag == 0 && seen.iter().all(|&l| l == 0) {
                panic!(
                    "expected a non-zero lag first (a backlog of {BACKLOG} records), found 0 \
                     before any other value"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("lag values seen: {seen:?}");
    assert!(described, "expected # HELP for refill_ingest_lag_records");
    assert!(
        seen[0] > 0 && seen[0] <= BACKLOG as u64,
        "expected the first lag within the backlog of {BACKLOG}, found {seen:?}"
    );
    assert!(
        seen.windows(2).all(|pair| pair[1] < pair[0]),
        "expected the lag to fall (nothing is produced meanwhile), found {seen:?}"
    );
    drop(worker);
}
