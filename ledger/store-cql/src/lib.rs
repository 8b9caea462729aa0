//! The store port over a CQL store with lightweight transactions (ScyllaDB or Apache
//! Cassandra), chosen with `--store scylla://HOST:PORT`: [`CqlStore`] implements
//! [`refill_store::Store`] on the `scylla` driver, applies the schema (`migrate`), and offers
//! the LWT helpers the recharger needs (command ids seen once, spend reserved by
//! compare-and-set).
//!
//! **Blocking over async.** The port is blocking and the driver is async. A `CqlStore` owns a
//! small multi-thread tokio runtime (2 worker threads, named `refill-cql`) that runs the
//! driver's connections; each call spawns its work on that runtime and blocks the calling
//! thread on a `std` channel until the answer comes. Unlike `Runtime::block_on` /
//! `Handle::block_on`, this never panics when the caller happens to be inside another tokio
//! runtime, and the caller's runtime does not need to be the driver's. Callers still must
//! not call from an async task (it would block a worker thread): use `spawn_blocking` or a
//! plain thread, as the port says. Dropping a `CqlStore` shuts its runtime down in the
//! background (safe from any thread, async or not).
//!
//! **Consistency.** Reads and writes at `LOCAL_QUORUM`, conditional writes (LWT) with
//! `LOCAL_SERIAL`, and reads of LWT-managed rows at `LOCAL_SERIAL` (so they see a Paxos round
//! that was accepted but not yet committed everywhere).
//!
//! The layout of keys and values is in `layout.rs`, the schema in `deploy/cql/schema.cql`;
//! the README explains the choices.

mod accounts;
mod kv;
mod layout;
mod lwt;
mod schema;

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use refill_store::{Entry, Store, StoreError, Write};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency, Statement};
use tokio::runtime::Runtime;
use tokio::sync::OnceCell;

pub use accounts::CqlAccountStore;
pub use layout::{CHUNK_BYTES, INLINE_VALUE_BYTES_MAX, KEY_BYTES_MAX, TABLE_NAME_BYTES_MAX};
pub use lwt::{CasOutcome, SpendPeriod, SpendRow};
pub use schema::{Replication, SCHEMA_TEMPLATE, SCYLLA_KEYSPACE_OPTIONS};

/// Most bytes of keys and inline values in one [`Store::write`] (values above
/// [`INLINE_VALUE_BYTES_MAX`] count only their 21-byte pointer). One logged batch travels in
/// one request frame (Cassandra's `native_transport_max_frame_size`, 16 MiB by default) and
/// is stored as one batchlog mutation (`max_mutation_size`, half of the 32 MiB commitlog
/// segment by default); this stays below both. Larger writes are refused as invalid.
pub const WRITE_BYTES_MAX: usize = 15 << 20;

/// Worker threads of the runtime a `CqlStore` owns: the driver only moves bytes, and the
/// machines this runs on have few cores.
const RUNTIME_THREADS: usize = 2;
/// How long `connect` waits for the first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one schema statement may take (DDL waits for schema agreement).
const DDL_TIMEOUT: Duration = Duration::from_secs(60);
/// Buckets remembered as present in `kv_buckets` (their directory row need not be written
/// again); past this many, the memory is cleared and rows are rewritten (harmless).
const KNOWN_BUCKETS_MAX: usize = 1 << 20;

/// The store port over CQL. `Send + Sync`: share it behind an `Arc` (`Arc<dyn Store>`).
///
/// ```no_run
/// # fn main() -> Result<(), refill_store::StoreError> {
/// use refill_store::{Store, Write};
/// let store = refill_store_cql::CqlStore::connect("127.0.0.1:9042", "refill")?;
/// store.migrate()?;
/// store.write(vec![Write::Put { table: "t", key: b"k".to_vec(), value: b"v".to_vec() }])?;
/// assert_eq!(store.get("t", b"k")?, Some(b"v".to_vec()));
/// # Ok(()) }
/// ```
pub struct CqlStore {
    inner: Arc<Inner>,
    /// `Some` until `drop`.
    runtime: Option<Runtime>,
    address: String,
}

/// What the calls running on the runtime share.
struct Inner {
    /// Shared with the tasks that write chunks concurrently.
    session: Arc<Session>,
    keyspace: String,
    /// Prepared on first use (after `migrate`, the tables exist).
    statements: OnceCell<Statements>,
    /// (table, bucket) pairs known to have their `kv_buckets` row.
    known_buckets: Mutex<HashSet<(&'static str, Vec<u8>)>>,
}

impl CqlStore {
    /// Connects to the CQL server at `address` (`host:port`) for keyspace `keyspace`. The
    /// keyspace need not exist yet: call [`CqlStore::migrate`] to create it and its tables;
    /// until then the store calls fail, naming the missing table.
    pub fn connect(address: &str, keyspace: &str) -> Result<Self, StoreError> {
        schema::check_keyspace(keyspace)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RUNTIME_THREADS)
            .thread_name("refill-cql")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Backend(format!(
                    "expected to start the CQL driver's runtime, found {e}"
                ))
            })?;
        let profile = ExecutionProfile::builder()
            .consistency(Consistency::LocalQuorum)
            .serial_consistency(Some(SerialConsistency::LocalSerial))
            .build()
            .into_handle();
        let builder = SessionBuilder::new()
            .known_node(address)
            .connection_timeout(CONNECT_TIMEOUT)
            .default_execution_profile_handle(profile);
        let target = address.to_owned();
        let session = block(&runtime, async move {
            builder.build().await.map_err(|e| {
                StoreError::Backend(format!(
                    "expected a CQL server (ScyllaDB or Cassandra) answering at {target}, found: {e}"
                ))
            })
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                session: Arc::new(session),
                keyspace: keyspace.to_owned(),
                statements: OnceCell::new(),
                known_buckets: Mutex::new(HashSet::new()),
            }),
            runtime: Some(runtime),
            address: address.to_owned(),
        })
    }

    /// The address it was connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Its keyspace.
    pub fn keyspace(&self) -> &str {
        &self.inner.keyspace
    }

    /// Creates the keyspace (one copy, `SimpleStrategy`: the local single node) and its
    /// tables when missing; see [`CqlStore::migrate_with`].
    pub fn migrate(&self) -> Result<(), StoreError> {
        self.migrate_with(&Replication::default())
    }

    /// Applies `deploy/cql/schema.cql` for this keyspace: every statement is
    /// `CREATE ... IF NOT EXISTS`, so running it again changes nothing (and an existing
    /// keyspace keeps its replication). On a tablet-aware ScyllaDB the keyspace is created
    /// with tablets off (LWT does not run on tablets); Cassandra gets no such option.
    pub fn migrate_with(&self, replication: &Replication) -> Result<(), StoreError> {
        let replication = replication.clone();
        self.run(|inner| async move {
            let options = if server_has_tablets(&inner.session).await? {
                SCYLLA_KEYSPACE_OPTIONS
            } else {
                ""
            };
            for ddl in schema::statements(&inner.keyspace, &replication, options)? {
                let mut statement = Statement::new(ddl.clone());
                statement.set_request_timeout(Some(DDL_TIMEOUT));
                inner
                    .session
                    .query_unpaged(statement, ())
                    .await
                    .map_err(backend(format!(
                        "migrate: expected the server to apply {ddl}"
                    )))?;
            }
            add_missing_columns(&inner).await?;
            inner.statements().await.map(|_| ())
        })
    }

    /// Drops this store's keyspace and everything in it (`DROP KEYSPACE IF EXISTS`): for
    /// tests and throw-away environments, never called by Refill itself.
    pub fn drop_keyspace(&self) -> Result<(), StoreError> {
        self.run(|inner| async move {
            let ddl = format!("DROP KEYSPACE IF EXISTS {}", inner.keyspace);
            let mut statement = Statement::new(ddl.clone());
            statement.set_request_timeout(Some(DDL_TIMEOUT));
            inner
                .session
                .query_unpaged(statement, ())
                .await
                .map_err(backend(format!("expected the server to apply {ddl}")))?;
            Ok(())
        })
    }

    /// Records `command_id` with `state` unless it is already there
    /// (`INSERT ... IF NOT EXISTS`): `true` when this call inserted it, `false` when the id was
    /// already recorded (its state is left as it was: read it with
    /// [`CqlStore::command_state`]). A timeout leaves the outcome unknown: the error says so,
    /// and calling again answers (`false` if the first call had in fact applied).
    pub fn insert_if_absent(&self, command_id: &str, state: &[u8]) -> Result<bool, StoreError> {
        let command_id = command_id.to_owned();
        let state = state.to_vec();
        self.run(|inner| async move { lwt::insert_if_absent(&inner, command_id, state).await })
    }

    /// The state recorded for `command_id`, read at `LOCAL_SERIAL`.
    pub fn command_state(&self, command_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let command_id = command_id.to_owned();
        self.run(|inner| async move { lwt::command_state(&inner, command_id).await })
    }

    /// Sets the spend reserved in a period to `new_reserved` (minor units) if its row is at
    /// `expected_version`, and moves it to `expected_version + 1` (compare-and-set with LWT).
    /// Version 0 means "no row yet": the first reservation of a period expects 0 and creates
    /// the row at version 1. The outcome says whether it applied and the row's version and
    /// reservation after the call (those of the winner when it did not apply; `0, 0` when
    /// there is no row).
    pub fn compare_and_set_spend(
        &self,
        customer: &str,
        credit_type: &str,
        period_start: i64,
        expected_version: i64,
        new_reserved: i64,
    ) -> Result<CasOutcome, StoreError> {
        let key = lwt::SpendKey {
            customer: customer.to_owned(),
            credit_type: credit_type.to_owned(),
            period_start,
        };
        self.run(|inner| async move {
            lwt::compare_and_set_spend(&inner, key, expected_version, new_reserved).await
        })
    }

    /// The spend row of a period, read at `LOCAL_SERIAL`; `None` before its first reservation.
    pub fn spend_period(
        &self,
        customer: &str,
        credit_type: &str,
        period_start: i64,
    ) -> Result<Option<SpendPeriod>, StoreError> {
        let key = lwt::SpendKey {
            customer: customer.to_owned(),
            credit_type: credit_type.to_owned(),
            period_start,
        };
        self.run(|inner| async move { lwt::spend_period(&inner, &key).await })
    }

    /// The whole spend row of a period (with the recharger's `state` blob, empty when the
    /// row was written without one), read at `LOCAL_SERIAL`; `None` before its first
    /// reservation.
    pub fn spend_row(
        &self,
        customer: &str,
        credit_type: &str,
        period_start: i64,
    ) -> Result<Option<SpendRow>, StoreError> {
        let key = lwt::SpendKey {
            customer: customer.to_owned(),
            credit_type: credit_type.to_owned(),
            period_start,
        };
        self.run(|inner| async move { lwt::spend_row(&inner, &key).await })
    }

    /// Like [`CqlStore::compare_and_set_spend`], and writes `state` in the same conditional
    /// write: `true` when it applied. When it did not, read the row again with
    /// [`CqlStore::spend_row`] (another writer moved the version). A timeout leaves the
    /// outcome unknown (the error says so): read the row before acting.
    pub fn compare_and_set_spend_state(
        &self,
        customer: &str,
        credit_type: &str,
        period_start: i64,
        expected_version: i64,
        new_reserved: i64,
        state: &[u8],
    ) -> Result<bool, StoreError> {
        let key = lwt::SpendKey {
            customer: customer.to_owned(),
            credit_type: credit_type.to_owned(),
            period_start,
        };
        let state = state.to_vec();
        self.run(|inner| async move {
            lwt::compare_and_set_spend_state(&inner, key, expected_version, new_reserved, state)
                .await
        })
    }

    /// Replaces the state of `command_id` with `new_state` if it is still `expected`
    /// (`UPDATE ... IF state = ?`): `true` when it applied, `false` when the row holds
    /// another state or is missing (read it with [`CqlStore::command_state`]).
    pub fn replace_command_state(
        &self,
        command_id: &str,
        expected: &[u8],
        new_state: &[u8],
    ) -> Result<bool, StoreError> {
        let command_id = command_id.to_owned();
        let expected = expected.to_vec();
        let new_state = new_state.to_vec();
        self.run(|inner| async move {
            lwt::replace_command_state(&inner, command_id, expected, new_state).await
        })
    }

    /// Runs `work` on the driver's runtime and blocks until it answers.
    fn run<T, F, W>(&self, work: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        W: FnOnce(Arc<Inner>) -> F,
    {
        let runtime = self.runtime.as_ref().ok_or_else(|| {
            StoreError::Backend("expected a running CQL driver runtime, found it shut down".into())
        })?;
        block(runtime, work(Arc::clone(&self.inner)))
    }
}

impl Drop for CqlStore {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Not `drop(runtime)`: that blocks, and panics when the caller is an async task.
            runtime.shutdown_background();
        }
    }
}

impl Store for CqlStore {
    /// One LOGGED BATCH (all or nothing across partitions) at `LOCAL_QUORUM`, with one write
    /// timestamp; values above [`INLINE_VALUE_BYTES_MAX`] are written in chunks first.
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        self.run(|inner| async move { kv::write(&inner, writes).await })
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_vec();
        self.run(|inner| async move { kv::get(&inner, table, &key).await })
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let prefix = prefix.to_vec();
        let start = start.to_vec();
        self.run(|inner| async move { kv::scan(&inner, table, &prefix, &start, max).await })
    }
}

/// Spawns `future` on `runtime` and blocks the calling thread until it answers (see the
/// crate docs for why not `block_on`).
fn block<T, F>(runtime: &Runtime, future: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let (answer, answered) = sync_channel(1);
    runtime.spawn(async move {
        // The receiver is gone only if the caller is gone: nobody to tell.
        let _ = answer.send(future.await);
    });
    answered.recv().map_err(|_| {
        StoreError::Backend(
            "expected an answer from the CQL driver's runtime, found the task gone (it panicked \
             or the runtime shut down)"
                .into(),
        )
    })?
}

/// Columns added to existing tables after their first release, as (table, column, type):
/// `CREATE TABLE IF NOT EXISTS` leaves an existing table as it is, so `migrate` adds these
/// when `system_schema.columns` lacks them (the same on ScyllaDB and Cassandra, which do
/// not both take `ADD IF NOT EXISTS`).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[("spend_periods", "state", "blob")];

/// Adds the [`ADDED_COLUMNS`] an existing keyspace lacks.
async fn add_missing_columns(inner: &Inner) -> Result<(), StoreError> {
    for (table, column, kind) in ADDED_COLUMNS {
        let result = inner
            .session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? \
                 AND table_name = ? AND column_name = ?",
                (inner.keyspace.as_str(), *table, *column),
            )
            .await
            .map_err(backend("migrate: expected to read system_schema.columns"))?;
        let rows = result
            .into_rows_result()
            .map_err(backend("migrate: expected rows from system_schema.columns"))?;
        if rows.rows_num() > 0 {
            continue;
        }
        let ddl = format!("ALTER TABLE {}.{table} ADD {column} {kind}", inner.keyspace);
        let mut statement = Statement::new(ddl.clone());
        statement.set_request_timeout(Some(DDL_TIMEOUT));
        inner
            .session
            .query_unpaged(statement, ())
            .await
            .map_err(backend(format!(
                "migrate: expected the server to apply {ddl}"
            )))?;
    }
    Ok(())
}

/// Whether the server knows tablets (a tablet-aware ScyllaDB): only those have the
/// `initial_tablets` column in `system_schema.scylla_keyspaces`.
async fn server_has_tablets(session: &Session) -> Result<bool, StoreError> {
    let result = session
        .query_unpaged(
            "SELECT column_name FROM system_schema.columns WHERE keyspace_name = 'system_schema' \
             AND table_name = 'scylla_keyspaces' AND column_name = 'initial_tablets'",
            (),
        )
        .await
        .map_err(backend("migrate: expected to read system_schema.columns"))?;
    let rows = result
        .into_rows_result()
        .map_err(backend("migrate: expected rows from system_schema.columns"))?;
    Ok(rows.rows_num() > 0)
}

/// A process-wide source of write timestamps (microseconds since the epoch), strictly
/// increasing, so that a later write of this process always wins over an earlier one, even
/// across reopened stores and within one microsecond.
fn next_timestamp() -> i64 {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Maps a driver error into [`StoreError::Backend`], after what was expected.
fn backend<E: Display>(expected: impl Display) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Backend(format!("{expected}, found: {e}"))
}

/// The prepared statements (keyspace-qualified table names).
struct Statements {
    kv_put: PreparedStatement,
    kv_delete: PreparedStatement,
    kv_get: PreparedStatement,
    kv_range: PreparedStatement,
    kv_range_open: PreparedStatement,
    bucket_put: PreparedStatement,
    buckets_range: PreparedStatement,
    buckets_range_open: PreparedStatement,
    chunk_put: PreparedStatement,
    chunks_get: PreparedStatement,
    chunks_drop_older: PreparedStatement,
    chunks_drop: PreparedStatement,
    command_insert: PreparedStatement,
    command_get: PreparedStatement,
    spend_insert: PreparedStatement,
    spend_update: PreparedStatement,
    spend_get: PreparedStatement,
    command_update: PreparedStatement,
    spend_insert_state: PreparedStatement,
    spend_update_state: PreparedStatement,
    spend_get_row: PreparedStatement,
}

/// Rows per page of a `kv` slice: inline values are at most 64 KiB, so a page stays below
/// 8 MiB.
const KV_PAGE_ROWS: i32 = 128;
/// Rows per page of the bucket directory.
const BUCKET_PAGE_ROWS: i32 = 1000;
/// Chunks per page (1 MiB each).
const CHUNK_PAGE_ROWS: i32 = 4;

impl Inner {
    /// The prepared statements, prepared on first use.
    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| Statements::prepare(&self.session, &self.keyspace))
            .await
    }
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        let prepare = |cql: String, page_rows: Option<i32>, idempotent: bool, serial_read: bool| async move {
            let mut statement = session.prepare(cql.as_str()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "expected the tables of keyspace {ks} (created by migrate), found that \
                     {cql:?} does not prepare: {e}"
                ))
            })?;
            if let Some(rows) = page_rows {
                statement.set_page_size(rows);
            }
            statement.set_is_idempotent(idempotent);
            if serial_read {
                statement.set_consistency(Consistency::LocalSerial);
            }
            Ok::<_, StoreError>(statement)
        };
        let write = |cql: String| prepare(cql, None, true, false);
        let read = |cql: String, rows: i32| prepare(cql, Some(rows), true, false);
        Ok(Self {
            kv_put: write(format!(
                "INSERT INTO {ks}.kv (tbl, bucket, key, value) VALUES (?, ?, ?, ?)"
            ))
            .await?,
            kv_delete: write(format!(
                "DELETE FROM {ks}.kv WHERE tbl = ? AND bucket = ? AND key = ?"
            ))
            .await?,
            kv_get: read(
                format!("SELECT value FROM {ks}.kv WHERE tbl = ? AND bucket = ? AND key = ?"),
                1,
            )
            .await?,
            kv_range: read(
                format!(
                    "SELECT key, value FROM {ks}.kv WHERE tbl = ? AND bucket = ? AND key >= ? \
                     AND key < ? LIMIT ?"
                ),
                KV_PAGE_ROWS,
            )
            .await?,
            kv_range_open: read(
                format!(
                    "SELECT key, value FROM {ks}.kv WHERE tbl = ? AND bucket = ? AND key >= ? \
                     LIMIT ?"
                ),
                KV_PAGE_ROWS,
            )
            .await?,
            bucket_put: write(format!(
                "INSERT INTO {ks}.kv_buckets (tbl, bucket) VALUES (?, ?)"
            ))
            .await?,
            buckets_range: read(
                format!(
                    "SELECT bucket FROM {ks}.kv_buckets WHERE tbl = ? AND bucket >= ? \
                     AND bucket < ?"
                ),
                BUCKET_PAGE_ROWS,
            )
            .await?,
            buckets_range_open: read(
                format!("SELECT bucket FROM {ks}.kv_buckets WHERE tbl = ? AND bucket >= ?"),
                BUCKET_PAGE_ROWS,
            )
            .await?,
            chunk_put: write(format!(
                "INSERT INTO {ks}.kv_chunks (tbl, key, version, chunk, bytes) \
                 VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
            ))
            .await?,
            chunks_get: read(
                format!(
                    "SELECT chunk, bytes FROM {ks}.kv_chunks WHERE tbl = ? AND key = ? \
                     AND version = ?"
                ),
                CHUNK_PAGE_ROWS,
            )
            .await?,
            chunks_drop_older: write(format!(
                "DELETE FROM {ks}.kv_chunks WHERE tbl = ? AND key = ? AND version < ?"
            ))
            .await?,
            chunks_drop: write(format!(
                "DELETE FROM {ks}.kv_chunks WHERE tbl = ? AND key = ?"
            ))
            .await?,
            command_insert: prepare(
                format!(
                    "INSERT INTO {ks}.recharge_commands (command_id, state) VALUES (?, ?) \
                     IF NOT EXISTS"
                ),
                None,
                false,
                false,
            )
            .await?,
            command_get: prepare(
                format!("SELECT state FROM {ks}.recharge_commands WHERE command_id = ?"),
                None,
                true,
                true,
            )
            .await?,
            spend_insert: prepare(
                format!(
                    "INSERT INTO {ks}.spend_periods \
                     (customer, credit_type, period_start, reserved_minor, version) \
                     VALUES (?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                None,
                false,
                false,
            )
            .await?,
            spend_update: prepare(
                format!(
                    "UPDATE {ks}.spend_periods SET reserved_minor = ?, version = ? \
                     WHERE customer = ? AND credit_type = ? AND period_start = ? IF version = ?"
                ),
                None,
                false,
                false,
            )
            .await?,
            spend_get: prepare(
                format!(
                    "SELECT version, reserved_minor FROM {ks}.spend_periods \
                     WHERE customer = ? AND credit_type = ? AND period_start = ?"
                ),
                None,
                true,
                true,
            )
            .await?,
            command_update: prepare(
                format!(
                    "UPDATE {ks}.recharge_commands SET state = ? WHERE command_id = ? \
                     IF state = ?"
                ),
                None,
                false,
                false,
            )
            .await?,
            spend_insert_state: prepare(
                format!(
                    "INSERT INTO {ks}.spend_periods \
                     (customer, credit_type, period_start, reserved_minor, version, state) \
                     VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                ),
                None,
                false,
                false,
            )
            .await?,
            spend_update_state: prepare(
                format!(
                    "UPDATE {ks}.spend_periods SET reserved_minor = ?, version = ?, state = ? \
                     WHERE customer = ? AND credit_type = ? AND period_start = ? IF version = ?"
                ),
                None,
                false,
                false,
            )
            .await?,
            spend_get_row: prepare(
                format!(
                    "SELECT version, reserved_minor, state FROM {ks}.spend_periods \
                     WHERE customer = ? AND credit_type = ? AND period_start = ?"
                ),
                None,
                true,
                true,
            )
            .await?,
        })
    }
}
