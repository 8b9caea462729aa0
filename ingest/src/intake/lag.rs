//! Consumer lag per owned partition of the usage topic, as the gauge
//! `refill_ingest_lag_records{partition}`: the partition's high watermark minus the next
//! offset its shard will read. A thread of its own asks the broker for the watermarks every
//! [`LAG_INTERVAL`], so the intake's poll loop never waits on a broker round trip; it only
//! shares the slots' marks under the intake's mutex for the time of a copy.
//!
//! A partition this worker gave up reads 0 here (its new owner reports it), so `max by
//! (partition)` over the workers is the partition's lag.

use std::collections::BTreeSet;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use refill_store_kafka::rdkafka;

use super::{IntakeError, Shared};

/// How often the lag is measured: one watermark request per owned partition each time.
pub(super) const LAG_INTERVAL: Duration = Duration::from_secs(2);

/// Longest one watermark request may take.
pub(super) const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// The gauge's name.
pub(super) const LAG_GAUGE: &str = "refill_ingest_lag_records";

/// Records between the next offset a shard will read and the partition's high watermark.
pub(super) fn lag_records(high_watermark: i64, next: u64) -> u64 {
    u64::try_from(high_watermark).map_or(0, |high| high.saturating_sub(next))
}

/// Sets the gauge of `partition`.
pub(super) fn set_lag(partition: u32, lag: u64) {
    // As f64: exact below 2^53 records.
    metrics::gauge!(LAG_GAUGE, "partition" => partition.to_string()).set(lag as f64);
}

/// The lag thread; dropping it stops the thread and waits for it.
pub(super) struct LagReporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LagReporter {
    /// Starts measuring the lag of the partitions of `topic` that `shared` has slots for.
    pub(super) fn spawn(
        bootstrap: &str,
        topic: &str,
        shared: Arc<Mutex<Shared>>,
    ) -> Result<LagReporter, IntakeError> {
        // Its own client: watermark requests never queue behind the group consumer's.
        let consumer: BaseConsumer =
            refill_store_kafka::assign_consumer_config(bootstrap, "refill-ingest-lag")
                .create()
                .map_err(|error| {
                    IntakeError::Kafka(format!("creating the lag consumer: {error}"))
                })?;
        let (stop, stopped) = mpsc::channel();
        let topic = topic.to_owned();
        let thread = std::thread::Builder::new()
            .name("kafka-intake-lag".into())
            .spawn(move || measure(&consumer, &topic, &shared, &stopped))
            .map_err(|error| {
                IntakeError::Topology(format!("cannot start the lag thread: {error}"))
            })?;
        Ok(LagReporter {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for LagReporter {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread at once.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn measure(
    consumer: &BaseConsumer,
    topic: &str,
    shared: &Mutex<Shared>,
    stopped: &mpsc::Receiver<()>,
) {
    let mut reported: BTreeSet<u32> = BTreeSet::new();
    loop {
        let positions: Vec<(u32, u64)> = shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .slots
            .iter()
            .map(|(&partition, slot)| (partition, slot.marks.usage_next))
            .collect();
        let mut owned = BTreeSet::new();
        for (partition, next) in positions {
            owned.insert(partition);
            let Ok(id) = i32::try_from(partition) else {
                continue;
            };
            match consumer.fetch_watermarks(topic, id, WATERMARK_TIMEOUT) {
                Ok((_, high)) => set_lag(partition, lag_records(high, next)),
                Err(error) => {
                    metrics::counter!("refill_ingest_kafka_errors_total").increment(1);
                    eprintln!("intake: watermarks of {topic} partition {partition}: {error}");
                }
            }
        }
        for &gone in reported.difference(&owned) {
            set_lag(gone, 0);
        }
        reported = owned;
        match stopped.recv_timeout(LAG_INTERVAL) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::lag_records;

    #[test]
    fn lag_is_the_high_watermark_minus_the_next_offset_never_negative() {
        assert_eq!(lag_records(100, 40), 60);
        assert_eq!(lag_records(100, 100), 0);
        // Read ahead of a stale watermark, or an empty partition (-1 on some errors).
        assert_eq!(lag_records(100, 120), 0);
        assert_eq!(lag_records(-1, 0), 0);
    }
}
