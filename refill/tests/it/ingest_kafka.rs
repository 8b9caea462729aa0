//! Two `refill ingest` workers in one consumer group over a 4-partition `refill.usage`,
//! on the real Kafka and Cassandra of deploy/local; a producer that is not Refill (a plain
//! rdkafka producer, as any service would use) sends usage; one worker is killed with
//! kill -9 mid-stream. After the rebalance every event is applied exactly once: each balance
//! equals the one the test computes. Bad records reach the dead-letter topic with their
//! reason and source, and never block their partition. A catalog change made at a worker that
//! owns only some shards reaches the others through `refill.account-commands`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use refill_store_kafka::rdkafka;
use serde_json::{Value, json};

const KEY: &str = "test-key-0123456789";
const PARTITIONS: u32 = 4;
const CUSTOMERS: usize = 16;
const EVENTS: usize = 12_000;
const GRANT: i64 = 1_000_000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

struct Servers {
    kafka: String,
    cql: String,
    prefix: String,
    keyspace: String,
}

fn servers() -> Option<Servers> {
    let (Ok(kafka), Ok(cql)) = (
        std::env::var("REFILL_KAFKA"),
        std::env::var("REFILL_CASSANDRA"),
    ) else {
        println!(
            "skipped: REFILL_KAFKA and REFILL_CASSANDRA not both set (deploy/local/up kafka cassandra starts them)"
        );
        return None;
    };
    // Tests of one run start in the same millisecond: a counter keeps them apart.
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let unique = format!(
        "{}n{}t{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_millis() % 1_000_000)
    );
    Some(Servers {
        kafka,
        cql,
        prefix: format!("test{unique}."),
        keyspace: format!("refill_ingest_{unique}"),
    })
}

/// The contract's topics under the test's prefix, with 4 partitions, and its keyspace.
fn provision(servers: &Servers) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kafka/topics.toml");
    let specs = refill_store_kafka::load_topics(std::path::Path::new(path)).expect("topics file");
    let specs = refill_store_kafka::prefixed_specs(&specs, &servers.prefix, Some(PARTITIONS));
    refill_store_kafka::apply_topic_specs(&servers.kafka, &specs).expect("topics made");
    let store =
        refill_store_cql::CqlStore::connect(&servers.cql, &servers.keyspace).expect("cql connects");
    store.migrate().expect("schema");
}

struct Worker {
    child: Child,
    port: u16,
}

impl Drop for Worker {
    /// A failed assertion must not leave the worker running (it would go on consuming).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed when dropped (a failing test leaves nothing running).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_worker(servers: &Servers) -> Worker {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_refill"))
        .args([
            "ingest",
            "--kafka",
            &servers.kafka,
            "--store",
            &format!("cassandra://{}", servers.cql),
            "--keyspace",
            &servers.keyspace,
            "--topic-prefix",
            &servers.prefix,
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("REFILL_API_KEY", KEY)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("refill ingest starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("API on") => break,
            Some(Ok(line)) => eprintln!("[worker {port}] {line}"),
            _ => panic!("refill ingest exited before serving"),
        }
    }
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("[worker {port}] {line}");
        }
    });
    Worker { child, port }
}

async fn owned(client: &reqwest::Client, port: u16) -> Vec<u64> {
    let Ok(response) = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
    else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["owned"]
        .as_array()
        .map(|owned| owned.iter().filter_map(|o| o["shard"].as_u64()).collect())
        .unwrap_or_default()
}

async fn wait_owned(client: &reqwest::Client, port: u16, done: impl Fn(&[u64]) -> bool) {
    let started = Instant::now();
    loop {
        let shards = owned(client, port).await;
        if done(&shards) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "worker on {port} never reached the expected shards (owns {shards:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn call(client: &reqwest::Client, port: u16, method: &str, path: &str, body: Value) {
    let request = match method {
        "PUT" => client.put(format!("http://127.0.0.1:{port}{path}")),
        _ => client.post(format!("http://127.0.0.1:{port}{path}")),
    };
    let response = request
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
}

fn customer(index: usize) -> String {
    format!("cust-{index:02}")
}

fn producer(kafka: &str) -> ThreadedProducer<DefaultProducerContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        // Kafka's default partitioner, as a Java producer or kcat -X partitioner=murmur2_random.
        .set("partitioner", "murmur2_random")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_one_killed_every_event_applied_exactly_once() {
    let Some(servers) = servers() else {
        return;
    };
    tokio::task::block_in_place(|| provision(&servers));
    let http = reqwest::Client::new();

    // Worker A alone owns all four partitions; the catalog and the customers go through it.
    let mut a = start_worker(&servers);
    wait_owned(&http, a.port, |shards| shards.len() == PARTITIONS as usize).await;
    call(
        &http,
        a.port,
        "PUT",
        "/v1/credit-types/api-credits",
        json!({"name": "API credits", "unit_price": {"amount": "0.01", "currency": "USD"}}),
    )
    .await;
    call(&http, a.port, "PUT", "/v1/features/api-call", json!({"name": "API call", "unit": {"singular": "call", "plural": "calls"}, "credit_type": "api-credits", "credits_per_unit": 1})).await;
    for index in 0..CUSTOMERS {
        let id = customer(index);
        call(
            &http,
            a.port,
            "PUT",
            &format!("/v1/customers/{id}"),
            json!({"name": id}),
        )
        .await;
        call(&http, a.port, "POST", &format!("/v1/customers/{id}/grants"), json!({"credit_type": "api-credits", "amount": GRANT, "grant_type": "promotional", "idempotency_key": "start"})).await;
    }

    // Worker B joins: the cooperative rebalance moves some partitions to it.
    let b = start_worker(&servers);
    wait_owned(&http, b.port, |shards| !shards.is_empty()).await;

    // A catalog change made at B, which owns only some shards: B applies it on its own and
    // forwards it through refill.account-commands to the shards A owns.
    call(&http, b.port, "PUT", "/v1/features/bulk-call", json!({"name": "Bulk call", "unit": {"singular": "call", "plural": "calls"}, "credit_type": "api-credits", "credits_per_unit": 2})).await;
    for index in 0..CUSTOMERS {
        let id = customer(index);
        let started = Instant::now();
        'known: loop {
            for port in [a.port, b.port] {
                let known = http
                    .get(format!(
                        "http://127.0.0.1:{port}/v1/customers/{id}/entitlements/bulk-call"
                    ))
                    .bearer_auth(KEY)
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if known {
                    break 'known;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the forwarded feature never reached {id}'s shard"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Usage over HTTP at B: B applies its customers' events, and forwards the others' to
    // refill.usage, where A's intake picks them up.
    let mut expected: BTreeMap<String, i64> = (0..CUSTOMERS)
        .map(|index| (customer(index), GRANT - 3))
        .collect();
    let events: Vec<Value> = (0..CUSTOMERS)
        .map(|index| json!({"id": format!("http-{index}"), "customer_id": customer(index), "feature_id": "api-call", "value": 3}))
        .collect();
    let response = http
        .post(format!("http://127.0.0.1:{}/v1/events", b.port))
        .bearer_auth(KEY)
        .json(&events)
        .send()
        .await
        .expect("events posted");
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["accepted"], CUSTOMERS, "{answer}");
    assert!(
        answer["forwarded"]
            .as_u64()
            .is_some_and(|n| n > 0 && n < CUSTOMERS as u64),
        "some customers are A's, some B's: {answer}"
    );

    // Usage from a plain producer, with a few bad records among it; A is killed half way.
    let kafka = servers.kafka.clone();
    let usage_topic = format!("{}refill.usage", servers.prefix);
    let producer = producer(&kafka);
    let mut bad = 0;
    for event in 0..EVENTS {
        let id = customer(event * 7 % CUSTOMERS);
        let value = (event % 5 + 1) as i64;
        // Every tenth event uses the forwarded feature, at 2 credits per call.
        let (feature, rate) = if event % 10 == 0 {
            ("bulk-call", 2)
        } else {
            ("api-call", 1)
        };
        *expected.get_mut(&id).expect("known customer") -= value * rate;
        let payload = json!({"id": format!("e-{event}"), "customer_id": id, "feature_id": feature, "value": value}).to_string();
        loop {
            match producer.send(BaseRecord::to(&usage_topic).key(&id).payload(&payload)) {
                Ok(()) => break,
                Err((_, _)) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        if event % 4000 == 17 {
            // Not JSON, and a key that is not the event's customer.
            bad += 2;
            let _ = producer.send(BaseRecord::to(&usage_topic).key(&id).payload("{not json"));
            let wrong = json!({"id": format!("w-{event}"), "customer_id": id, "feature_id": "api-call", "value": 1}).to_string();
            let _ = producer.send(
                BaseRecord::to(&usage_topic)
                    .key("someone-else")
                    .payload(&wrong),
            );
        }
        if event == EVENTS / 2 {
            let _ = producer.flush(Duration::from_secs(30));
            a.child.kill().expect("kill -9 worker A");
            let _ = a.child.wait();
        }
        if event % 50 == 0 {
            // A steady stream (about 3 s) rather than one burst, so A is killed mid-work.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every event produced");

    // B takes A's partitions after the session timeout and resumes them from the journal.
    wait_owned(&http, b.port, |shards| shards.len() == PARTITIONS as usize).await;
    let started = Instant::now();
    let mut balances = BTreeMap::new();
    loop {
        balances.clear();
        for id in expected.keys() {
            let view = credits(&http, b.port, id).await;
            let balance: i64 = view["balance"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .unwrap_or(i64::MIN);
            balances.insert(id.clone(), balance);
        }
        if balances == expected {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "balances never matched the reference:\n found {balances:?}\n expected {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Nothing applied twice later either (a late duplicate would move a balance).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (id, balance) in &expected {
        let view = credits(&http, b.port, id).await;
        assert_eq!(
            view["balance"],
            balance.to_string(),
            "{id} moved after settling"
        );
    }

    // Every bad record is on the dead-letter topic, with its reason and source.
    let dlq_topic = format!("{}refill.usage.dlq", servers.prefix);
    let reasons = tokio::task::block_in_place(|| read_dead_letters(&kafka, &dlq_topic, bad));
    assert!(
        reasons
            .iter()
            .any(|reason| reason.starts_with("invalid_json")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|reason| reason.starts_with("key_mismatch")),
        "{reasons:?}"
    );

    drop(b);
}

/// The reasons of the distinct dead letters (by source partition and offset), once there
/// are `count` of them.
fn read_dead_letters(kafka: &str, topic: &str, count: usize) -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("dlq consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    let started = Instant::now();
    while seen.len() < count {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "expected {count} dead letters, found {}: {seen:?}",
            seen.len()
        );
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers()
                .and_then(|headers| {
                    headers
                        .iter()
                        .filter(|header| header.key == name)
                        .last()
                        .and_then(|header| header.value)
                })
                .map(|value| String::from_utf8_lossy(value).into_owned())
                .unwrap_or_default()
        };
        let partition = header("refill-source-partition");
        let offset = header("refill-source-offset");
        assert!(
            !partition.is_empty() && !offset.is_empty(),
            "a dead letter without its source"
        );
        seen.insert((partition, offset), header("refill-reason"));
    }
    seen.into_values().collect()
}

/// Starts `refill recharger` on the run's topics and keyspace; `fault` is the test-only
/// `REFILL_TEST_FAULT`. Its stderr is echoed.
fn start_recharger(servers: &Servers, charges: &std::path::Path, fault: Option<&str>) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_refill"));
    command
        .args([
            "recharger",
            "--kafka",
            &servers.kafka,
            "--store",
            &format!("cassandra://{}", servers.cql),
            "--keyspace",
            &servers.keyspace,
            "--topic-prefix",
            &servers.prefix,
        ])
        .arg("--sandbox-charges")
        .arg(charges)
        .env_remove("REFILL_TEST_FAULT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(fault) = fault {
        command.env("REFILL_TEST_FAULT", fault);
    }
    let mut child = command.spawn().expect("refill recharger starts");
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[recharger] {line}");
        }
    });
    child
}

async fn credits(client: &reqwest::Client, port: u16, customer: &str) -> Value {
    client
        .get(format!(
            "http://127.0.0.1:{port}/v1/customers/{customer}/credits"
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("credits")
        .json()
        .await
        .expect("json")
}

/// The whole recharge path on real servers, with the recharger killed between the charge
/// and the grant: after its restart the grant lands on the shard, once, and the card was
/// charged once for the command id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recharger_killed_after_the_charge_still_grants_once_after_restart() {
    let Some(servers) = servers() else {
        return;
    };
    tokio::task::block_in_place(|| provision(&servers));
    let http = reqwest::Client::new();
    let worker = start_worker(&servers);
    wait_owned(&http, worker.port, |shards| {
        shards.len() == PARTITIONS as usize
    })
    .await;
    let port = worker.port;
    call(
        &http,
        port,
        "PUT",
        "/v1/credit-types/api-credits",
        json!({"name": "API credits", "unit_price": {"amount": "0.10", "currency": "USD"}}),
    )
    .await;
    call(&http, port, "PUT", "/v1/features/api-call", json!({"name": "API call", "unit": {"singular": "call", "plural": "calls"}, "credit_type": "api-credits", "credits_per_unit": 1})).await;
    call(
        &http,
        port,
        "PUT",
        "/v1/customers/acme",
        json!({"name": "acme", "payment_method": "pm_card_visa"}),
    )
    .await;
    call(&http, port, "POST", "/v1/customers/acme/grants", json!({"credit_type": "api-credits", "amount": 50, "grant_type": "paid", "idempotency_key": "plan"})).await;
    call(&http, port, "PUT", "/v1/customers/acme/auto-recharge", json!({"credit_type": "api-credits", "enabled": true, "threshold": 20, "target_balance": 50, "spend_limit": {"amount": "500", "currency": "USD"}, "spend_limit_reset": "month"})).await;

    let dir = std::env::temp_dir().join(format!("refill-e2e-{}", servers.keyspace));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let charges = dir.join("sandbox-charges.jsonl");
    let mut faulty = Killed(start_recharger(
        &servers,
        &charges,
        Some("exit-after-charge"),
    ));

    // 31 calls as one usage record: 50 → 19, below 20: a recharge of 31 credits ($3.10).
    let producer = producer(&servers.kafka);
    let usage =
        json!({"id": "calls-1", "customer_id": "acme", "feature_id": "api-call", "value": 31})
            .to_string();
    producer
        .send(
            BaseRecord::to(&format!("{}refill.usage", servers.prefix))
                .key("acme")
                .payload(&usage),
        )
        .map_err(|(error, _)| error)
        .expect("usage produced");
    producer.flush(Duration::from_secs(30)).expect("flushed");

    // The faulty recharger charges, then aborts before the outcome exists.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = faulty.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the faulty recharger never charged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        !status.success(),
        "expected an abort after the charge, found {status}"
    );
    let view = credits(&http, port, "acme").await;
    assert_eq!(view["balance"], "19", "charged, not granted yet: {view}");

    // Restarted: the reserved command is finished with the same key, the outcome reaches
    // the owning shard through refill.account-commands, and the balance is back at 50.
    let recharger = Killed(start_recharger(&servers, &charges, None));
    let started = Instant::now();
    let view = loop {
        let view = credits(&http, port, "acme").await;
        if view["balance"] == "50" {
            break view;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the grant never landed: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view["auto_recharge"]["recharges_this_period"], 1, "{view}");
    // Duplicated outcomes (the resume and the redelivered command both publish one) are
    // applied once: the balance stays at 50.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let view = credits(&http, port, "acme").await;
    assert_eq!(view["balance"], "50", "{view}");

    let records =
        refill_recharger::SandboxGateway::journal(&charges).expect("the charges file reads");
    let paid: Vec<_> = records
        .iter()
        .filter(|record| matches!(record, refill_recharger::SandboxRecord::Charge { .. }))
        .collect();
    assert_eq!(paid.len(), 1, "one charge for the one command: {records:?}");
    match paid[0] {
        refill_recharger::SandboxRecord::Charge {
            idempotency_key,
            amount_minor,
            ..
        } => {
            assert_eq!(idempotency_key, "acme/api-credits/1");
            assert_eq!(*amount_minor, 310);
        }
        other => panic!("expected a charge, found {other:?}"),
    }

    drop(recharger);
    drop(worker);
    let _ = std::fs::remove_dir_all(&dir);
}
