//! `KafkaLog` against the real broker: the generic conformance body of the log port, then
//! what is particular to Kafka (topic creation, partition counts, compacted topics, gaps,
//! record sizes).

use std::time::Duration;

use refill_store::conformance::log_conformance;
use refill_store::{Log, StoreError};
use refill_store_kafka::rdkafka::ClientConfig;
use refill_store_kafka::rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use refill_store_kafka::{KafkaLog, LogSettings};

use crate::{Topics, broker, ok};

#[test]
fn kafka_log_passes_the_log_conformance_body() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    log_conformance(
        |partitions| {
            ok(
                "connect to a fresh topic",
                KafkaLog::connect(&bootstrap, &topics.fresh("conformance"), partitions),
            )
        },
        |log: KafkaLog| {
            let topic = log.topic().to_owned();
            let partitions = log.partitions();
            drop(log);
            ok(
                "reconnect to the same topic",
                KafkaLog::connect(&bootstrap, &topic, partitions),
            )
        },
    );
}

#[test]
fn connect_creates_the_topic_and_refuses_another_partition_count() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let topic = topics.fresh("partitions");
    let log = ok("connect", KafkaLog::connect(&bootstrap, &topic, 3));
    assert_eq!(
        log.partitions(),
        3,
        "expected the partition count asked for"
    );
    for p in 0..3 {
        assert_eq!(
            ok("end_offset", log.end_offset(p)),
            0,
            "expected partition {p} empty"
        );
    }
    drop(log);
    match KafkaLog::connect(&bootstrap, &topic, 4) {
        Err(StoreError::PartitionsChanged {
            stored: 3,
            requested: 4,
        }) => {}
        other => panic!(
            "expected PartitionsChanged {{ stored: 3, requested: 4 }} for a 3-partition topic \
             opened with 4, found {other:?}"
        ),
    }
    let again = ok(
        "connect with the same count",
        KafkaLog::connect(&bootstrap, &topic, 3),
    );
    assert_eq!(again.partitions(), 3, "expected the existing topic reused");
}

#[test]
fn connect_refuses_bad_arguments() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    for (topic, partitions) in [
        ("has space", 1),
        ("", 1),
        (topics.fresh("zero").as_str(), 0),
    ] {
        match KafkaLog::connect(&bootstrap, topic, partitions) {
            Err(StoreError::InvalidRequest(_)) => {}
            other => panic!(
                "expected InvalidRequest for topic {topic:?} with {partitions} partitions, \
                 found {other:?}"
            ),
        }
    }
}

#[test]
fn connect_refuses_a_compacted_topic() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let topic = topics.fresh("compacted");
    let dir = ok("temp dir", tempfile::tempdir());
    let path = dir.path().join("topics.toml");
    ok(
        "write topics file",
        std::fs::write(
            &path,
            format!(
                "[[topic]]\nname = \"{topic}\"\npartitions = 1\nreplication_factor = 1\n\
                 [topic.config]\n\"cleanup.policy\" = \"compact\"\n"
            ),
        ),
    );
    ok(
        "apply topics",
        refill_store_kafka::apply_topics(&bootstrap, &path),
    );
    match KafkaLog::connect(&bootstrap, &topic, 1) {
        Err(StoreError::InvalidRequest(message)) => assert!(
            message.contains("cleanup.policy=compact"),
            "expected the error to name the cleanup policy, found {message:?}"
        ),
        other => panic!("expected InvalidRequest for a compacted topic, found {other:?}"),
    }
}

#[test]
fn read_reports_an_offset_gap_as_corrupt() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let topic = topics.fresh("gap");
    let log = ok("connect", KafkaLog::connect(&bootstrap, &topic, 1));
    // A transactional producer writes a commit marker after each transaction: offsets
    // 0 (record), 1 (marker), 2 (record), 3 (marker).
    let producer: ThreadedProducer<DefaultProducerContext> = ok(
        "transactional producer",
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("transactional.id", format!("{topic}-tx"))
            .create(),
    );
    ok(
        "init transactions",
        producer.init_transactions(Duration::from_secs(30)),
    );
    for value in ["first", "second"] {
        ok("begin", producer.begin_transaction());
        ok(
            "send",
            producer
                .send(
                    BaseRecord::<(), str>::to(&topic)
                        .partition(0)
                        .payload(value),
                )
                .map_err(|(e, _)| e),
        );
        ok(
            "commit",
            producer.commit_transaction(Duration::from_secs(30)),
        );
    }
    // The coordinator writes the last commit marker after commit_transaction returns.
    assert_eq!(
        ok(
            "wait_beyond",
            log.wait_beyond(0, 3, Duration::from_secs(10))
        ),
        4,
        "expected 2 records and 2 markers"
    );
    match log.read(0, 0, 10) {
        Err(StoreError::Corrupt(message)) => assert!(
            message.contains("expected offset 1") && message.contains("found offset 2"),
            "expected the error to name the offsets, found {message:?}"
        ),
        other => panic!("expected Corrupt for a topic with a gap, found {other:?}"),
    }
    let first = ok("read before the gap", log.read(0, 0, 1));
    assert_eq!(
        first.len(),
        1,
        "expected the record before the gap readable"
    );
    assert_eq!(first[0].bytes, b"first", "expected the first record");
}

#[test]
fn append_refuses_a_record_above_the_topic_limit_and_writes_nothing() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let settings = LogSettings {
        max_message_bytes: 64 << 10,
        ..LogSettings::default()
    };
    let log = ok(
        "connect",
        KafkaLog::connect_with(&bootstrap, &topics.fresh("size"), 1, settings),
    );
    let limit = log.max_record_bytes();
    assert!(
        limit < 64 << 10,
        "expected a limit below the topic's, found {limit}"
    );
    let fits = vec![1u8; limit];
    let too_big = vec![2u8; limit + 1];
    match log.append(0, &[&fits, &too_big]) {
        Err(StoreError::InvalidRequest(message)) => assert!(
            message.contains("record 1"),
            "expected the error to name record 1, found {message:?}"
        ),
        other => panic!("expected InvalidRequest for a record above the limit, found {other:?}"),
    }
    assert_eq!(
        ok("end_offset", log.end_offset(0)),
        0,
        "expected nothing written"
    );
    assert_eq!(
        ok("append", log.append(0, &[&fits])),
        0,
        "expected a record at the limit taken"
    );
    let back = ok("read", log.read(0, 0, 1));
    assert_eq!(back.len(), 1, "expected the record back");
    assert_eq!(back[0].bytes.len(), limit, "expected the record intact");
}

#[test]
fn two_logs_on_one_topic_see_each_other() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let topic = topics.fresh("two");
    let writer = ok("connect writer", KafkaLog::connect(&bootstrap, &topic, 2));
    let reader = ok("connect reader", KafkaLog::connect(&bootstrap, &topic, 2));
    assert_eq!(
        ok("append", writer.append(1, &[b"a", b"b"])),
        0,
        "expected offset 0"
    );
    let end = ok(
        "wait_beyond",
        reader.wait_beyond(1, 1, Duration::from_secs(10)),
    );
    assert_eq!(
        end, 2,
        "expected the other log's append seen through the broker"
    );
    let records = ok("read", reader.read(1, 0, 10));
    let bytes: Vec<&[u8]> = records.iter().map(|r| r.bytes.as_slice()).collect();
    assert_eq!(
        bytes,
        [b"a".as_slice(), b"b"],
        "expected both records in order"
    );
}

#[test]
fn connect_without_a_broker_fails_clearly_within_the_timeout() {
    // Needs no broker: nothing listens on port 1.
    let settings = LogSettings {
        request_timeout: Duration::from_secs(2),
        ..LogSettings::default()
    };
    let started = std::time::Instant::now();
    match KafkaLog::connect_with("127.0.0.1:1", "refill-test-nobroker", 1, settings) {
        Err(StoreError::Backend(message)) => assert!(
            message.contains("refill-test-nobroker"),
            "expected the error to name the topic, found {message:?}"
        ),
        other => panic!("expected a backend error without a broker, found {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "expected the failure within the request timeout, found {:?}",
        started.elapsed()
    );
}
