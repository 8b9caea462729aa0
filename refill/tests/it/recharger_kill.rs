//! The `refill recharger` process on the real servers (Kafka `REFILL_KAFKA`, Cassandra
//! `REFILL_CASSANDRA`), on topics and a keyspace of its own: killed right after the gateway
//! took the money, then restarted, it charges nothing twice (invariant 4), reserves the cost
//! once in the spend row (invariant 5), and publishes the same Charged outcome on the
//! customer's partition of `refill.account-commands`; a declined card publishes Declined.
//! Without the servers each test prints that it was skipped and why.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use refill_ledger::codec;
use refill_ledger::effects::{AccountHandle, RechargeCommand};
use refill_ledger::ids::CommandId;
use refill_ledger::input::{Input, RechargeOutcome, RechargeResult};
use refill_ledger::money::{Currency, UnitPrice};
use refill_ledger::testkit;
use refill_ledger::time::{SpendPeriod, SpendReset};
use refill_recharger::{SandboxGateway, SandboxRecord};
use refill_store_cql::CqlStore;
use refill_store_kafka::rdkafka::ClientConfig;
use refill_store_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use refill_store_kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use refill_store_kafka::rdkafka::producer::{FutureProducer, FutureRecord};
use refill_store_kafka::rdkafka::{Offset, TopicPartitionList};
use refill_store_kafka::{Topics, apply_topic_specs, delete_topics, load_topics, prefixed_specs};

/// How long any one step may take before the test fails.
const STEP: Duration = Duration::from_secs(90);

/// The servers' addresses, or `None` after printing why the test is skipped.
fn servers() -> Option<(String, String)> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    match (var("REFILL_KAFKA"), var("REFILL_CASSANDRA")) {
        (Some(kafka), Some(cql)) => Some((kafka, cql)),
        (kafka, _) => {
            println!(
                "skipped: {} not set (deploy/local/up kafka cassandra starts them)",
                if kafka.is_none() {
                    "REFILL_KAFKA"
                } else {
                    "REFILL_CASSANDRA"
                }
            );
            None
        }
    }
}

/// Topics, a keyspace and a folder of one test, removed at its end.
struct Rig {
    kafka: String,
    cql: String,
    prefix: String,
    topics: Topics,
    keyspace: String,
    dir: PathBuf,
    children: Vec<Child>,
}

impl Rig {
    fn new(kafka: String, cql: String) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let prefix = format!("test-recharger-{pid}-{n}.");
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let specs = load_topics(&root.join("deploy/kafka/topics.toml")).expect("topics.toml");
        let report = apply_topic_specs(&kafka, &prefixed_specs(&specs, &prefix, Some(3)))
            .expect("the topics are created");
        assert!(report.is_clean(), "{report}");
        let keyspace = format!("refill_test_{pid}_k{n}");
        let store = CqlStore::connect(&cql, &keyspace).expect("connects");
        store.migrate().expect("the schema applies");
        let dir = std::env::temp_dir().join(format!("refill-recharger-{pid}-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self {
            topics: Topics::with_prefix(&prefix),
            kafka,
            cql,
            prefix,
            keyspace,
            dir,
            children: Vec::new(),
        }
    }

    fn charges_file(&self) -> PathBuf {
        self.dir.join("sandbox-charges.jsonl")
    }

    /// Starts `refill recharger`, with the test-only fault when `fault` is given.
    fn start(&mut self, fault: Option<&str>) -> (usize, Arc<Mutex<Vec<String>>>) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_refill"));
        command
            .arg("recharger")
            .args(["--kafka", &self.kafka])
            .args(["--store", &format!("cassandra://{}", self.cql)])
            .args(["--keyspace", &self.keyspace])
            .args(["--topic-prefix", &self.prefix])
            .arg("--sandbox-charges")
            .arg(self.charges_file())
            .env_remove("REFILL_TEST_FAULT")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(fault) = fault {
            command.env("REFILL_TEST_FAULT", fault);
        }
        let mut child = command.spawn().expect("refill recharger starts");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        self.children.push(child);
        (self.children.len() - 1, lines)
    }

    /// Waits for child `index` to exit by itself.
    fn wait_exit(&mut self, index: usize, log: &Mutex<Vec<String>>) -> ExitStatus {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(status) = self.children[index].try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "expected the recharger to abort after the charge, it still runs; its log: {:#?}",
                log.lock().unwrap_or_else(|p| p.into_inner())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Produces `command` on the commands topic as the shards do.
    async fn send(&self, command: &RechargeCommand) {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("partitioner", "murmur2_random")
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a producer");
        let value = codec::encode_recharge_command(command);
        let record = FutureRecord::to(&self.topics.recharge_commands)
            .key(command.id.customer.as_str())
            .payload(&value)
            .headers(OwnedHeaders::new().insert(Header {
                key: "content-type",
                value: Some(codec::CONTENT_TYPE),
            }));
        producer
            .send(record, STEP)
            .await
            .map_err(|(error, _)| error)
            .expect("the command is acknowledged");
    }

    /// Reads the account-commands topic until `wanted` outcomes of `id` arrived; returns
    /// every one with its partition.
    fn outcomes(
        &self,
        id: &CommandId,
        wanted: usize,
        log: &Mutex<Vec<String>>,
    ) -> Vec<(i32, RechargeOutcome)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.kafka)
            .set("group.id", "refill-test-reader")
            .set("enable.auto.commit", "false")
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a consumer");
        let topic = &self.topics.account_commands;
        let partitions = partitions_of(&consumer, topic);
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("assignment");
        }
        consumer.assign(&assignment).expect("assign");
        let deadline = Instant::now() + STEP;
        let mut found = Vec::new();
        while found.len() < wanted {
            assert!(
                Instant::now() < deadline,
                "expected {wanted} outcomes of {id} on {topic}, found {found:?}; recharger log: \
                 {:#?}",
                log.lock().unwrap_or_else(|p| p.into_inner())
            );
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let message = message.expect("a record");
            let content_type = message
                .headers()
                .and_then(|h| h.iter().find(|h| h.key == "content-type"))
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned());
            assert_eq!(content_type.as_deref(), Some(codec::CONTENT_TYPE));
            let input = codec::decode_account_command(message.payload().unwrap_or(&[]))
                .expect("an account command");
            let Input::RechargeOutcome(outcome) = input else {
                panic!("expected a recharge outcome, found {input:?}");
            };
            assert_eq!(
                message.key(),
                Some(outcome.command.customer.as_str().as_bytes()),
                "key = customer id"
            );
            if outcome.command == *id {
                found.push((message.partition(), outcome));
            }
        }
        found
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let names = [
            &self.topics.usage,
            &self.topics.dlq,
            &self.topics.recharge_commands,
            &self.topics.account_commands,
            &self.topics.journal,
        ];
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        if let Err(error) = delete_topics(&self.kafka, &names) {
            eprintln!("could not delete the test topics: {error}");
        }
        match CqlStore::connect(&self.cql, &self.keyspace) {
            Ok(store) => {
                if let Err(error) = store.drop_keyspace() {
                    eprintln!("could not drop keyspace {}: {error}", self.keyspace);
                }
            }
            Err(error) => eprintln!("could not reach the CQL store: {error}"),
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> i32 {
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let count = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    i32::try_from(count).expect("a partition count")
}

/// Kafka's murmur2 (Java `Utils.murmur2`, seed 0x9747b28c), written here from the
/// reference independently of the code under test.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = u32::try_from(data.len()).expect("short key");
    let mut h: u32 = 0x9747_b28c ^ length;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner gives `key`.
fn partition_of(key: &str, partitions: i32) -> i32 {
    let positive = murmur2(key.as_bytes()) & 0x7fff_ffff;
    i32::try_from(positive % u32::try_from(partitions).expect("positive")).expect("fits")
}

/// Recharge command 1 of `customer`: 30 credits at $0.10 with `method`, limit $500 a month.
fn command(customer: &str, method: &str) -> RechargeCommand {
    let unit_price =
        UnitPrice::new(rust_decimal::Decimal::new(10, 2), Currency::USD).expect("a unit price");
    let credits = testkit::credits(30);
    let issued_at = testkit::at("2026-11-25T10:00:00Z");
    RechargeCommand {
        id: CommandId {
            customer: testkit::customer(customer),
            credit_type: testkit::credit_type(testkit::example::CREDIT_TYPE),
            seq: 1,
        },
        account: AccountHandle(0),
        credits,
        cost: unit_price.cost_of(credits).expect("a cost"),
        unit_price,
        spend_limit: testkit::cents(50_000),
        period: SpendPeriod::containing(SpendReset::Month, issued_at).expect("a period"),
        payment_method: testkit::payment_method(method),
        issued_at,
    }
}

fn charges_of(path: &Path, key: &str) -> (Vec<SandboxRecord>, usize) {
    let records = SandboxGateway::journal(path).expect("the charges file reads");
    let mine: Vec<SandboxRecord> = records
        .into_iter()
        .filter(|record| match record {
            SandboxRecord::Charge {
                idempotency_key, ..
            }
            | SandboxRecord::Call { idempotency_key } => idempotency_key == key,
        })
        .collect();
    let charges = mine
        .iter()
        .filter(|r| matches!(r, SandboxRecord::Charge { .. }))
        .count();
    (mine, charges)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_the_charge_the_restarted_recharger_pays_nothing_twice() {
    let Some((kafka, cql)) = servers() else {
        return;
    };
    let mut rig = Rig::new(kafka, cql);
    let customer = format!("kill-{}", std::process::id());
    let recharge = command(&customer, "pm_card_visa");
    let key = recharge.id.to_string();

    // 1. The faulty process takes the command, charges, and dies before anything else.
    let (first, first_log) = rig.start(Some("exit-after-charge"));
    rig.send(&recharge).await;
    let status = rig.wait_exit(first, &first_log);
    assert!(!status.success(), "expected an abort, found {status}");
    assert!(
        first_log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|line| line.contains("WARNING") && line.contains("REFILL_TEST_FAULT")),
        "expected the loud warning of the test-only fault"
    );
    let (records, charges) = charges_of(&rig.charges_file(), &key);
    assert_eq!(charges, 1, "{records:?}");
    assert_eq!(records.len(), 1, "no outcome, no retry yet: {records:?}");

    // 2. Restarted without the fault: it resumes the reserved command (same key), and the
    //    redelivered record (its offset was never committed) answers the same.
    let (_, second_log) = rig.start(None);
    let outcomes = rig.outcomes(&recharge.id, 2, &second_log);
    let expected = RechargeOutcome {
        command: recharge.id.clone(),
        result: RechargeResult::Charged {
            credits: testkit::credits(30),
            cost: testkit::cents(300),
        },
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &rig.kafka)
        .create()
        .expect("a metadata client");
    let partitions = partitions_of(&consumer, &rig.topics.account_commands);
    for (partition, outcome) in &outcomes {
        assert_eq!(outcome, &expected, "every outcome record is the same");
        assert_eq!(
            *partition,
            partition_of(&customer, partitions),
            "murmur2(customer) % {partitions}"
        );
    }

    // 3. One payment for the command id; the gateway was asked again with the same key.
    let (records, charges) = charges_of(&rig.charges_file(), &key);
    assert_eq!(charges, 1, "exactly one charge: {records:?}");
    assert!(
        records
            .iter()
            .any(|r| matches!(r, SandboxRecord::Call { .. })),
        "expected the restarted recharger to call the gateway again with {key}: {records:?}"
    );
    match &records[0] {
        SandboxRecord::Charge {
            amount_minor,
            outcome,
            ..
        } => {
            assert_eq!(*amount_minor, 300);
            assert_eq!(outcome, "succeeded");
        }
        other => panic!("expected the charge first, found {other:?}"),
    }

    // 4. The cost is reserved once in the period's spend row.
    let store = CqlStore::connect(&rig.cql, &rig.keyspace).expect("connects");
    let row = store
        .spend_row(
            recharge.id.customer.as_str(),
            recharge.id.credit_type.as_str(),
            recharge.period.start.0,
        )
        .expect("the spend row reads")
        .expect("a spend row");
    assert_eq!(row.reserved_minor, 300, "{row:?}");
    assert_eq!(row.version, 2, "one reservation, one settlement: {row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_publishes_declined_and_reserves_nothing() {
    let Some((kafka, cql)) = servers() else {
        return;
    };
    let mut rig = Rig::new(kafka, cql);
    let customer = format!("decline-{}", std::process::id());
    let recharge = command(&customer, "pm_card_chargeDeclined");
    let (_, log) = rig.start(None);
    rig.send(&recharge).await;
    let outcomes = rig.outcomes(&recharge.id, 1, &log);
    assert_eq!(
        outcomes[0].1.result,
        RechargeResult::Declined {
            code: "card_declined".to_owned()
        }
    );
    let (records, charges) = charges_of(&rig.charges_file(), &recharge.id.to_string());
    assert_eq!(charges, 1, "one (declined) charge attempt: {records:?}");
    let store = CqlStore::connect(&rig.cql, &rig.keyspace).expect("connects");
    let row = store
        .spend_row(
            recharge.id.customer.as_str(),
            recharge.id.credit_type.as_str(),
            recharge.period.start.0,
        )
        .expect("the spend row reads")
        .expect("a spend row");
    assert_eq!(
        row.reserved_minor, 0,
        "a decline releases the spend: {row:?}"
    );
}
