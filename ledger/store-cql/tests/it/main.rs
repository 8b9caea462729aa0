//! The integration tests of refill-store-cql, in one binary, against a real CQL server found
//! through `REFILL_CASSANDRA` (`host:port`, written by `deploy/local/up cassandra`): the
//! conformance body of the store port, what is particular to the CQL layout (buckets, large
//! values, schema), and the LWT helpers. Without the variable every test prints that it was
//! skipped and why, and returns.
//!
//! Each test works in keyspaces of its own, `refill_test_<pid>_<n>`, dropped at its end.

mod accounts;
mod lwt;
mod store;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use refill_store_cql::CqlStore;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

/// The server's address, or `None` after printing why the test is skipped.
pub fn server() -> Option<String> {
    match std::env::var("REFILL_CASSANDRA") {
        Ok(address) if !address.trim().is_empty() => Some(address.trim().to_owned()),
        _ => {
            println!("skipped: REFILL_CASSANDRA not set (deploy/local/up cassandra starts it)");
            None
        }
    }
}

/// Keyspaces made by one test, dropped when it ends (even when it fails).
pub struct Keyspaces {
    address: String,
    made: Mutex<Vec<String>>,
}

impl Keyspaces {
    /// For the server at `address`.
    pub fn new(address: &str) -> Self {
        Self {
            address: address.to_owned(),
            made: Mutex::new(Vec::new()),
        }
    }

    /// A name for a new keyspace, unique in this run (dropped at the end of the test).
    pub fn name(&self) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "refill_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.made.lock().expect("keyspaces lock").push(name.clone());
        name
    }

    /// A store on a new, migrated keyspace.
    pub fn fresh(&self) -> CqlStore {
        let store = CqlStore::connect(&self.address, &self.name()).expect("connects");
        store.migrate().expect("the schema applies");
        store
    }

    /// Runs `cql` with a session of the test's own (to look at or drop what the store made).
    pub fn raw<T>(&self, work: impl AsyncFnOnce(&Session) -> T) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the raw session");
        runtime.block_on(async {
            let session = SessionBuilder::new()
                .known_node(&self.address)
                .build()
                .await
                .expect("a raw session connects");
            work(&session).await
        })
    }

    /// Rows of a `SELECT COUNT(*)`.
    pub fn count(&self, cql: &str) -> i64 {
        let cql = cql.to_owned();
        self.raw(async move |session| {
            let rows = session
                .query_unpaged(cql.as_str(), ())
                .await
                .expect("the count runs")
                .into_rows_result()
                .expect("rows");
            let (count,) = rows.first_row::<(i64,)>().expect("one count");
            count
        })
    }
}

impl Drop for Keyspaces {
    fn drop(&mut self) {
        let made = std::mem::take(&mut *self.made.lock().unwrap_or_else(|p| p.into_inner()));
        if made.is_empty() {
            return;
        }
        self.raw(async move |session| {
            for keyspace in made {
                if let Err(e) = session
                    .query_unpaged(format!("DROP KEYSPACE IF EXISTS {keyspace}"), ())
                    .await
                {
                    eprintln!("could not drop test keyspace {keyspace}: {e}");
                }
            }
        });
    }
}

/// Closes `store` and connects again to the same keyspace.
pub fn reopen(store: CqlStore) -> CqlStore {
    let address = store.address().to_owned();
    let keyspace = store.keyspace().to_owned();
    drop(store);
    CqlStore::connect(&address, &keyspace).expect("reconnects")
}
