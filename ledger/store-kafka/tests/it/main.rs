//! The integration tests of refill-store-kafka, in one binary, against a real broker: the
//! log port's conformance body on `KafkaLog`, topic creation and the topics file, and the
//! dead-letter helper. The broker is found through `REFILL_KAFKA` (`deploy/local/up kafka`
//! starts one and writes it to `deploy/local/.env`); without it each test says it was
//! skipped and why.

mod dlq;
mod log;
mod topics;

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// The broker's address, or `None` after printing why the test is skipped. The line goes
/// straight to stderr, past the test harness's capture, so a skip shows in a plain
/// `cargo test` run.
pub fn broker() -> Option<String> {
    match std::env::var("REFILL_KAFKA") {
        Ok(address) if !address.trim().is_empty() => Some(address),
        _ => {
            let thread = std::thread::current();
            let test = thread.name().unwrap_or("a test");
            let _ = writeln!(
                std::io::stderr(),
                "{test}: skipped: REFILL_KAFKA not set (deploy/local/up kafka starts it)"
            );
            None
        }
    }
}

/// The topics one test creates: fresh names no other run or test uses
/// (`refill-test-<pid>-<ms>-<n>-<what>`), deleted when the test ends (kept after a failure,
/// for a look).
pub struct Topics {
    bootstrap: String,
    created: Mutex<Vec<String>>,
}

impl Topics {
    /// No topics yet, on the broker at `bootstrap`.
    pub fn new(bootstrap: &str) -> Self {
        Self {
            bootstrap: bootstrap.to_owned(),
            created: Mutex::new(Vec::new()),
        }
    }

    /// A fresh topic name, remembered for deletion.
    pub fn fresh(&self, what: &str) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = format!(
            "refill-test-{}-{started}-{}-{what}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        name
    }

    /// Remembers topics created under names not made by [`Topics::fresh`].
    pub fn adopt(&self, names: impl IntoIterator<Item = String>) {
        self.created
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(names);
    }
}

impl Drop for Topics {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let names =
            std::mem::take(&mut *self.created.lock().unwrap_or_else(PoisonError::into_inner));
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Err(e) = refill_store_kafka::delete_topics(&self.bootstrap, &refs) {
            let _ = writeln!(
                std::io::stderr(),
                "cleanup: expected the test topics deleted, found {e}"
            );
        }
    }
}

/// The value of a `Result`, or a panic saying what was being done.
#[track_caller]
pub fn ok<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: expected success, found {e}"),
    }
}
