//! The dead-letter helper against the real broker: a rejected record lands on the
//! dead-letter topic with its original key, value and headers and the four `refill-*`
//! headers, and can be read back as such.

use std::time::{Duration, Instant};

use refill_store_kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use refill_store_kafka::rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use refill_store_kafka::rdkafka::producer::{
    BaseRecord, DefaultProducerContext, Producer, ThreadedProducer,
};
use refill_store_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use refill_store_kafka::{
    DeadLetter, DeadLetters, DlqSource, HEADER_REASON, HEADER_SOURCE_OFFSET,
    HEADER_SOURCE_PARTITION, HEADER_SOURCE_TOPIC, KafkaLog,
};

use crate::{Topics, broker, ok};

/// Every header of a message, in order, as (key, value).
fn headers_of<M: Message>(message: &M) -> Vec<(String, Option<Vec<u8>>)> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default()
}

fn consumer(bootstrap: &str, topic: &str, partition: i32) -> BaseConsumer {
    let consumer: BaseConsumer = ok(
        "consumer",
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "refill-test-assign-only")
            .set("enable.auto.commit", "false")
            .create(),
    );
    let mut assignment = TopicPartitionList::new();
    ok(
        "assignment",
        assignment.add_partition_offset(topic, partition, Offset::Beginning),
    );
    ok("assign", consumer.assign(&assignment));
    consumer
}

/// The next message (10 s at most).
fn next_message(consumer: &BaseConsumer) -> OwnedMessage {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(polled) = consumer.poll(Duration::from_millis(100)) {
            return ok("poll", polled).detach();
        }
    }
    panic!("expected a message within 10 s, found none");
}

fn header(key: &str, value: &str) -> (String, Option<Vec<u8>>) {
    (key.to_owned(), Some(value.as_bytes().to_vec()))
}

#[test]
fn a_dead_letter_keeps_the_original_bytes_and_says_why_and_where() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let dlq_topic = topics.fresh("dlq");
    // A one-partition dead-letter topic, created like any plain topic.
    drop(ok(
        "create the dlq topic",
        KafkaLog::connect(&bootstrap, &dlq_topic, 1),
    ));
    let dlq = ok(
        "connect",
        DeadLetters::connect_to(&bootstrap, &dlq_topic, &[]),
    );
    let original = DeadLetter {
        key: Some(b"customer-42"),
        payload: Some(b"{\"id\": \"e1\", \"value\": \"NaN\"}\xff"),
        headers: vec![("content-type", Some(b"application/json")), ("null", None)],
    };
    let receipt = ok(
        "send_to_dlq",
        dlq.send_to_dlq(
            &original,
            "value: expected a finite decimal, found NaN",
            DlqSource {
                topic: "refill.usage",
                partition: 7,
                offset: 123_456,
            },
        ),
    );
    assert_eq!(
        (receipt.partition, receipt.offset),
        (0, 0),
        "expected the first record"
    );

    let consumer = consumer(&bootstrap, &dlq_topic, 0);
    let message = next_message(&consumer);
    {
        assert_eq!(message.key(), original.key, "expected the original key");
        assert_eq!(
            message.payload(),
            original.payload,
            "expected the original bytes"
        );
        assert_eq!(
            headers_of(&message),
            vec![
                header("content-type", "application/json"),
                ("null".to_owned(), None),
                header(HEADER_REASON, "value: expected a finite decimal, found NaN"),
                header(HEADER_SOURCE_TOPIC, "refill.usage"),
                header(HEADER_SOURCE_PARTITION, "7"),
                header(HEADER_SOURCE_OFFSET, "123456"),
            ],
            "expected the original headers, then reason, source topic, partition and offset"
        );
    }
}

#[test]
fn a_consumed_message_goes_to_the_dlq_with_its_own_source() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let (source_topic, dlq_topic) = (topics.fresh("source"), topics.fresh("dlq"));
    drop(ok(
        "create source",
        KafkaLog::connect(&bootstrap, &source_topic, 2),
    ));
    drop(ok(
        "create dlq",
        KafkaLog::connect(&bootstrap, &dlq_topic, 1),
    ));
    let producer: ThreadedProducer<DefaultProducerContext> = ok(
        "producer",
        ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create(),
    );
    for value in ["fine", "bad"] {
        ok(
            "send",
            producer
                .send(
                    BaseRecord::<str, str>::to(&source_topic)
                        .partition(1)
                        .key("customer-7")
                        .payload(value)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "content-type",
                            value: Some("application/json"),
                        })),
                )
                .map_err(|(e, _)| e),
        );
    }
    ok("flush", producer.flush(Duration::from_secs(10)));

    let dlq = ok(
        "connect",
        DeadLetters::connect_to(&bootstrap, &dlq_topic, &[]),
    );
    let source = consumer(&bootstrap, &source_topic, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut sent = false;
    while !sent && Instant::now() < deadline {
        let Some(polled) = source.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = ok("poll", polled);
        if message.payload() == Some(b"bad".as_slice()) {
            assert_eq!(message.offset(), 1, "expected the bad record at offset 1");
            ok(
                "send_message_to_dlq",
                dlq.send_message_to_dlq(&message, "feature: unknown"),
            );
            sent = true;
        }
    }
    assert!(sent, "expected to read the bad record back within 10 s");

    let consumer = consumer(&bootstrap, &dlq_topic, 0);
    let message = next_message(&consumer);
    {
        assert_eq!(
            message.key(),
            Some(b"customer-7".as_slice()),
            "expected the original key"
        );
        assert_eq!(
            message.payload(),
            Some(b"bad".as_slice()),
            "expected the original bytes"
        );
        assert_eq!(
            headers_of(&message),
            vec![
                header("content-type", "application/json"),
                header(HEADER_REASON, "feature: unknown"),
                header(HEADER_SOURCE_TOPIC, &source_topic),
                header(HEADER_SOURCE_PARTITION, "1"),
                header(HEADER_SOURCE_OFFSET, "1"),
            ],
            "expected the source taken from the consumed message"
        );
    }
}
