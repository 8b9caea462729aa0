//! The account-state port ([`refill_store::AccountStore`]) over typed CQL tables, so that an
//! operator reads balances and ledgers with plain `cqlsh` (credits as `decimal`, times as
//! `timestamp`) and a shard restores from the same rows: `balances`, `ledger_entries`,
//! `recharge_attempts`, `account_state`, `customer_state`, `dedup_chunks`,
//! `dedup_generations`, `checkpoints` (see `deploy/cql/schema.cql` and
//! `deploy/cql/README.md`). [`CqlAccountStore`] shares a [`CqlStore`]'s session and runtime.
//!
//! **Flush.** A flush can be far larger than one CQL batch, so it is not atomic; the port's
//! slots, versions and last-written checkpoint make that safe (`refill_store::accounts`).
//! The rows are grouped by partition (the last of two rows with one primary key wins, as in
//! the key-value store) and written as single-partition UNLOGGED batches of at most
//! [`BATCH_STATEMENTS`] statements and about [`BATCH_BYTES`] bytes (no batchlog, no
//! multi-partition coordinator work, below the servers' batch size thresholds, which
//! single-partition batches do not trip anyway), [`WRITES_IN_FLIGHT`] at a time. A request
//! that times out or finds the server overloaded is retried up to [`ATTEMPTS`] times with
//! doubling backoff (every write is idempotent: same values, same write timestamp). The
//! checkpoint row is written only once every row batch succeeded.
//!
//! **Dropping dedup generations** happens *after* the checkpoint that raised
//! `dedup_generation_min`: before it, a crash would leave the previous checkpoint (still
//! the last complete one) without chunks it needs. The generations a shard holds are listed
//! in `dedup_generations` (written with their chunks), so each flush with a checkpoint reads
//! the few listed below the minimum, deletes each one's `dedup_chunks` partition, then
//! range-deletes them from the list. A crash in between leaves them listed: the next flush
//! drops them. (Deriving them from the previous checkpoint's minimum instead would leak the
//! partitions of a flush that crashed there.)
//!
//! **Write timestamps.** Each phase of a flush (rows, checkpoint, drops) takes one client
//! timestamp from the process-wide increasing clock of `lib.rs`, so a retried or later
//! flush overwrites an earlier one even within one microsecond.
//!
//! **Credits** are micro-credits (`i64`) in the port and `decimal` of scale 6 here; a read
//! converts any decimal that is an exact micro-credit (an operator's `50` is 50 000 000) and
//! refuses one that is not (`1.0000001`, or beyond `i64`) as [`StoreError::Corrupt`] naming
//! table, key and column.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use refill_store::StoreError;
use refill_store::accounts::{
    AccountStateRow, AccountStore, AttemptRow, BalanceRow, CheckpointRow, CustomerStateRow,
    DedupChunkRow, Flush, LedgerRow, ShardRows, pick_slot,
};
use scylla::client::session::Session;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::Consistency;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlDecimal, CqlTimestamp};
use tokio::sync::OnceCell;
use tokio::task::JoinSet;

use crate::{CqlStore, Inner, backend, next_timestamp};

/// Account handles (and customer indexes) per partition of `account_state`
/// (`customer_state`): two slots each, so a partition holds at most 131 072 rows.
const STATE_BUCKET_ROWS: u32 = 65_536;
/// Most statements in one row batch of a flush.
const BATCH_STATEMENTS: usize = 100;
/// Most bytes of values in one row batch of a flush, near enough (a larger single row goes
/// alone).
const BATCH_BYTES: usize = 256 << 10;
/// Row batches (or single-row writes) of one flush in flight at once.
const WRITES_IN_FLIGHT: usize = 32;
/// Attempts of one request that times out or finds the server overloaded, before the call
/// fails.
const ATTEMPTS: u32 = 5;
/// Wait before the first retry; doubles with each (0.1 + 0.2 + 0.4 + 0.8 s at most).
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Rows per page of a restore's state reads (state blobs are small).
const STATE_PAGE_ROWS: i32 = 5_000;
/// Rows per page of balance, ledger, attempt and generation reads.
const READ_PAGE_ROWS: i32 = 1_000;
/// Dedup chunks per page (one flush's ids of a generation each, possibly large).
const CHUNK_PAGE_ROWS: i32 = 64;
/// Decimal places of credits in the `decimal` columns.
const CREDIT_SCALE: i32 = 6;

/// The tables, as named in the schema and in error messages.
const BALANCES: &str = "balances";
const LEDGER_ENTRIES: &str = "ledger_entries";
const RECHARGE_ATTEMPTS: &str = "recharge_attempts";
const ACCOUNT_STATE: &str = "account_state";
const CUSTOMER_STATE: &str = "customer_state";
const DEDUP_CHUNKS: &str = "dedup_chunks";
const DEDUP_GENERATIONS: &str = "dedup_generations";
const CHECKPOINTS: &str = "checkpoints";

/// The account-state port over the typed tables of a [`CqlStore`]'s keyspace (run
/// [`CqlStore::migrate`] first). `Send + Sync`; cheap to share behind an `Arc`.
///
/// ```no_run
/// # fn main() -> Result<(), refill_store::StoreError> {
/// use std::sync::Arc;
/// use refill_store::AccountStore;
/// let store = Arc::new(refill_store_cql::CqlStore::connect("127.0.0.1:9042", "refill")?);
/// store.migrate()?;
/// let accounts = refill_store_cql::CqlAccountStore::new(Arc::clone(&store));
/// let balances = accounts.balances("acme")?;
/// # Ok(()) }
/// ```
pub struct CqlAccountStore {
    store: Arc<CqlStore>,
    /// Prepared on first use, shared with the calls running on the store's runtime.
    statements: Arc<OnceCell<Statements>>,
}

impl CqlAccountStore {
    /// The account-state tables of `store`'s keyspace, through its session.
    pub fn new(store: Arc<CqlStore>) -> Self {
        Self {
            store,
            statements: Arc::new(OnceCell::new()),
        }
    }

    /// The store whose session it uses.
    pub fn store(&self) -> &Arc<CqlStore> {
        &self.store
    }

    /// Runs `work` on the store's runtime with the prepared statements, blocking until it
    /// answers.
    fn run<T, F, W>(&self, work: W) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
        W: FnOnce(Context) -> F,
    {
        let statements = Arc::clone(&self.statements);
        self.store
            .run(move |inner| work(Context { inner, statements }))
    }
}

/// What a call running on the runtime has: the store's session and the statements.
struct Context {
    inner: Arc<Inner>,
    statements: Arc<OnceCell<Statements>>,
}

impl Context {
    fn session(&self) -> &Arc<Session> {
        &self.inner.session
    }

    async fn statements(&self) -> Result<&Statements, StoreError> {
        self.statements
            .get_or_try_init(|| Statements::prepare(&self.inner.session, &self.inner.keyspace))
            .await
    }
}

impl AccountStore for CqlAccountStore {
    fn flush(&self, flush: &Flush) -> Result<(), StoreError> {
        // Every conversion fails here, before anything is written.
        let units = plan(flush)?;
        let checkpoint = flush.checkpoint.as_ref().map(bind_checkpoint).transpose()?;
        if units.is_empty() && checkpoint.is_none() {
            return Ok(());
        }
        self.run(|cx| async move {
            let statements = cx.statements().await?;
            write_units(&cx, statements, units, next_timestamp()).await?;
            let Some((shard, dedup_generation_min, values)) = checkpoint else {
                return Ok(());
            };
            let mut statement = statements.checkpoint_put.clone();
            statement.set_timestamp(Some(next_timestamp()));
            retrying(
                || format!("expected the server to store the checkpoint of shard {shard}"),
                || cx.session().execute_unpaged(&statement, &values),
            )
            .await?;
            drop_generations_below(&cx, statements, shard, dedup_generation_min).await
        })
    }

    fn load_shard(&self, shard: u32) -> Result<ShardRows, StoreError> {
        let cql_shard = to_int("shard", shard)?;
        self.run(move |cx| async move {
            let statements = cx.statements().await?;
            let Some(checkpoint) = read_checkpoint(&cx, statements, shard, cql_shard).await? else {
                return Ok(ShardRows::default());
            };
            let accounts = load_slots(
                &cx,
                &statements.account_states,
                ACCOUNT_STATE,
                "handle",
                cql_shard,
                checkpoint.accounts,
                checkpoint.version,
            )
            .await?;
            let customers = load_slots(
                &cx,
                &statements.customer_states,
                CUSTOMER_STATE,
                "customer_index",
                cql_shard,
                checkpoint.customers,
                checkpoint.version,
            )
            .await?;
            let dedup = load_dedup(&cx, statements, cql_shard, &checkpoint).await?;
            Ok(ShardRows {
                checkpoint: Some(checkpoint),
                accounts,
                customers,
                dedup,
            })
        })
    }

    fn checkpoint(&self, shard: u32) -> Result<Option<CheckpointRow>, StoreError> {
        let cql_shard = to_int("shard", shard)?;
        self.run(move |cx| async move {
            let statements = cx.statements().await?;
            read_checkpoint(&cx, statements, shard, cql_shard).await
        })
    }

    fn balances(&self, customer_id: &str) -> Result<Vec<BalanceRow>, StoreError> {
        if customer_id.is_empty() {
            // No row can have it: the server refuses an empty partition key.
            return Ok(Vec::new());
        }
        let customer_id = customer_id.to_owned();
        self.run(move |cx| async move {
            let statements = cx.statements().await?;
            let mut rows = Vec::new();
            for_each_row(
                cx.session(),
                &statements.balances,
                &(customer_id.as_str(),),
                usize::MAX,
                BALANCES,
                |row: BalanceCells| {
                    rows.push(decode_balance(&customer_id, row)?);
                    Ok(())
                },
            )
            .await?;
            Ok(rows)
        })
    }

    fn ledger(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        // Sequences above i64::MAX cannot be stored, so nothing is there (LIMIT 0 is
        // refused by the server).
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let customer_id = customer_id.to_owned();
        let credit_type = credit_type.to_owned();
        self.run(move |cx| async move {
            let statements = cx.statements().await?;
            let mut rows = Vec::new();
            let values = (
                customer_id.as_str(),
                credit_type.as_str(),
                from,
                i32::try_from(limit).unwrap_or(i32::MAX),
            );
            for_each_row(
                cx.session(),
                &statements.ledger,
                &values,
                limit,
                LEDGER_ENTRIES,
                |row: EntryCells| {
                    rows.push(decode_entry(&customer_id, &credit_type, row)?);
                    Ok(())
                },
            )
            .await?;
            Ok(rows)
        })
    }

    fn attempts(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        let Ok(from) = i64::try_from(from_seq) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let customer_id = customer_id.to_owned();
        let credit_type = credit_type.to_owned();
        self.run(move |cx| async move {
            let statements = cx.statements().await?;
            let mut rows = Vec::new();
            let values = (
                customer_id.as_str(),
                credit_type.as_str(),
                from,
                i32::try_from(limit).unwrap_or(i32::MAX),
            );
            for_each_row(
                cx.session(),
                &statements.attempts,
                &values,
                limit,
                RECHARGE_ATTEMPTS,
                |row: AttemptCells| {
                    rows.push(decode_attempt(&customer_id, &credit_type, row)?);
                    Ok(())
                },
            )
            .await?;
            Ok(rows)
        })
    }
}

// ---- writing -------------------------------------------------------------------------------

/// The values of one statement of a flush.
type Bound = Box<dyn SerializeRow + Send + Sync>;

/// The tables a flush writes rows to (the checkpoint apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Table {
    Balances,
    LedgerEntries,
    RechargeAttempts,
    AccountState,
    CustomerState,
    DedupChunks,
    DedupGenerations,
}

impl Table {
    fn name(self) -> &'static str {
        match self {
            Self::Balances => BALANCES,
            Self::LedgerEntries => LEDGER_ENTRIES,
            Self::RechargeAttempts => RECHARGE_ATTEMPTS,
            Self::AccountState => ACCOUNT_STATE,
            Self::CustomerState => CUSTOMER_STATE,
            Self::DedupChunks => DEDUP_CHUNKS,
            Self::DedupGenerations => DEDUP_GENERATIONS,
        }
    }
}

/// Rows of one partition written in one request (one row alone, or an UNLOGGED batch).
struct Unit {
    table: Table,
    rows: Vec<Bound>,
}

/// The requests of a flush's rows, every value converted.
fn plan(flush: &Flush) -> Result<Vec<Unit>, StoreError> {
    let mut units = Vec::new();
    group(
        &mut units,
        Table::Balances,
        &flush.balances,
        |row| ((row.customer_id.as_str(),), (row.credit_type.as_str(),)),
        bind_balance,
    )?;
    group(
        &mut units,
        Table::LedgerEntries,
        &flush.entries,
        |row| {
            (
                (row.customer_id.as_str(), row.credit_type.as_str()),
                row.seq,
            )
        },
        bind_entry,
    )?;
    group(
        &mut units,
        Table::RechargeAttempts,
        &flush.attempts,
        |row| {
            (
                (row.customer_id.as_str(), row.credit_type.as_str()),
                row.seq,
            )
        },
        bind_attempt,
    )?;
    group(
        &mut units,
        Table::AccountState,
        &flush.accounts,
        |row| {
            (
                (row.shard, row.handle / STATE_BUCKET_ROWS),
                (row.handle, row.slot),
            )
        },
        bind_account,
    )?;
    group(
        &mut units,
        Table::CustomerState,
        &flush.customers,
        |row| {
            (
                (row.shard, row.index / STATE_BUCKET_ROWS),
                (row.index, row.slot),
            )
        },
        bind_customer,
    )?;
    group(
        &mut units,
        Table::DedupChunks,
        &flush.dedup,
        |row| ((row.shard, row.generation), row.flush),
        bind_chunk,
    )?;
    let generations: Vec<(u32, u64)> = flush
        .dedup
        .iter()
        .map(|row| (row.shard, row.generation))
        .collect();
    group(
        &mut units,
        Table::DedupGenerations,
        &generations,
        |&(shard, generation)| (shard, generation),
        |&(shard, generation)| {
            let values = (
                to_int("shard", shard)?,
                to_bigint("generation", generation)?,
            );
            Ok((Box::new(values) as Bound, 12))
        },
    )?;
    Ok(units)
}

/// Adds the requests of one table's rows to `units`: rows sharing a primary key (partition
/// `P`, clustering `K`) keep only the last (one batch writes all its rows at one timestamp,
/// where the later would not win), then each partition's rows go in requests of at most
/// [`BATCH_STATEMENTS`] rows and about [`BATCH_BYTES`].
fn group<'a, R, P: Ord, K: Ord>(
    units: &mut Vec<Unit>,
    table: Table,
    rows: &'a [R],
    key: impl Fn(&'a R) -> (P, K),
    bind: impl Fn(&R) -> Result<(Bound, usize), StoreError>,
) -> Result<(), StoreError> {
    let mut order: Vec<(P, K, usize)> = rows
        .iter()
        .enumerate()
        .map(|(at, row)| {
            let (partition, clustering) = key(row);
            (partition, clustering, at)
        })
        .collect();
    order.sort();
    let mut current: Option<(usize, usize)> = None; // (unit index, its bytes)
    let mut previous_partition: Option<&P> = None;
    for (i, (partition, clustering, at)) in order.iter().enumerate() {
        let superseded = order
            .get(i + 1)
            .is_some_and(|(p, k, _)| p == partition && k == clustering);
        if superseded {
            continue;
        }
        let (values, bytes) = bind(&rows[*at])?;
        let same_partition = previous_partition == Some(partition);
        previous_partition = Some(partition);
        match &mut current {
            Some((unit, unit_bytes))
                if same_partition
                    && units[*unit].rows.len() < BATCH_STATEMENTS
                    && *unit_bytes + bytes <= BATCH_BYTES =>
            {
                units[*unit].rows.push(values);
                *unit_bytes += bytes;
            }
            _ => {
                units.push(Unit {
                    table,
                    rows: vec![values],
                });
                current = Some((units.len() - 1, bytes));
            }
        }
    }
    Ok(())
}

fn bind_balance(row: &BalanceRow) -> Result<(Bound, usize), StoreError> {
    if row.customer_id.is_empty() {
        return Err(StoreError::InvalidRequest(format!(
            "expected a customer id in every balance row (the partition key of {BALANCES}), \
             found an empty one for credit type {:?}",
            row.credit_type
        )));
    }
    let bytes = row.customer_id.len()
        + row.credit_type.len()
        + row.auto_recharge_status.as_ref().map_or(0, String::len)
        + row.paused_reason.as_ref().map_or(0, String::len)
        + 60;
    let values = (
        row.customer_id.clone(),
        row.credit_type.clone(),
        decimal(row.balance_micros),
        decimal(row.overdraft_micros),
        row.auto_recharge_status.clone(),
        row.paused_reason.clone(),
        CqlTimestamp(row.as_of_ms),
        to_bigint("balance version", row.version)?,
        to_int("shard", row.shard)?,
    );
    Ok((Box::new(values), bytes))
}

fn bind_entry(row: &LedgerRow) -> Result<(Bound, usize), StoreError> {
    let bytes =
        row.customer_id.len() + row.credit_type.len() + row.kind.len() + row.reference.len() + 48;
    let values = (
        row.customer_id.clone(),
        row.credit_type.clone(),
        to_bigint("ledger seq", row.seq)?,
        CqlTimestamp(row.at_ms),
        row.kind.clone(),
        decimal(row.amount_micros),
        decimal(row.balance_after_micros),
        row.reference.clone(),
    );
    Ok((Box::new(values), bytes))
}

fn bind_attempt(row: &AttemptRow) -> Result<(Bound, usize), StoreError> {
    let bytes = row.customer_id.len()
        + row.credit_type.len()
        + row.command_id.len()
        + row.status.len()
        + row.currency.as_ref().map_or(0, String::len)
        + row.reason.as_ref().map_or(0, String::len)
        + 48;
    let values = (
        row.customer_id.clone(),
        row.credit_type.clone(),
        to_bigint("attempt seq", row.seq)?,
        row.command_id.clone(),
        CqlTimestamp(row.at_ms),
        decimal(row.credits_micros),
        row.cost_minor_units,
        row.currency.clone(),
        row.status.clone(),
        row.reason.clone(),
    );
    Ok((Box::new(values), bytes))
}

fn bind_account(row: &AccountStateRow) -> Result<(Bound, usize), StoreError> {
    let values = (
        to_int("shard", row.shard)?,
        to_int("bucket", row.handle / STATE_BUCKET_ROWS)?,
        to_int("handle", row.handle)?,
        to_slot(row.slot)?,
        to_bigint("state version", row.version)?,
        row.state.clone(),
    );
    Ok((Box::new(values), row.state.len() + 24))
}

fn bind_customer(row: &CustomerStateRow) -> Result<(Bound, usize), StoreError> {
    let values = (
        to_int("shard", row.shard)?,
        to_int("bucket", row.index / STATE_BUCKET_ROWS)?,
        to_int("customer index", row.index)?,
        to_slot(row.slot)?,
        to_bigint("state version", row.version)?,
        row.customer_id.clone(),
        row.state.clone(),
    );
    Ok((
        Box::new(values),
        row.state.len() + row.customer_id.len() + 24,
    ))
}

fn bind_chunk(row: &DedupChunkRow) -> Result<(Bound, usize), StoreError> {
    let values = (
        to_int("shard", row.shard)?,
        to_bigint("generation", row.generation)?,
        to_bigint("flush", row.flush)?,
        row.fingerprints.clone(),
    );
    Ok((Box::new(values), row.fingerprints.len() + 20))
}

/// The checkpoint's values (with its shard and minimum generation, for the drops after it).
type CheckpointValues = (
    i32,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    CqlTimestamp,
    i64,
    i64,
    i64,
    Vec<u8>,
);

fn bind_checkpoint(row: &CheckpointRow) -> Result<(i32, i64, CheckpointValues), StoreError> {
    let shard = to_int("shard", row.shard)?;
    let dedup_generation_min = to_bigint("dedup_generation_min", row.dedup_generation_min)?;
    let (usage, commands) = match row.sources {
        Some((usage, commands)) => (
            Some(to_bigint("usage source offset", usage)?),
            Some(to_bigint("command source offset", commands)?),
        ),
        None => (None, None),
    };
    let values = (
        shard,
        to_bigint("checkpoint version", row.version)?,
        to_bigint("log_next", row.log_next)?,
        usage,
        commands,
        CqlTimestamp(row.as_of_ms),
        i64::from(row.accounts),
        i64::from(row.customers),
        dedup_generation_min,
        row.meta.clone(),
    );
    Ok((shard, dedup_generation_min, values))
}

/// Writes `units`, [`WRITES_IN_FLIGHT`] at a time, all at `timestamp`; fails with the first
/// failure (the requests still in flight are abandoned: rows without their checkpoint).
async fn write_units(
    cx: &Context,
    statements: &Statements,
    units: Vec<Unit>,
    timestamp: i64,
) -> Result<(), StoreError> {
    let mut in_flight = JoinSet::new();
    let mut units = units.into_iter();
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT {
            let Some(unit) = units.next() else { break };
            let session = Arc::clone(cx.session());
            let statement = statements.insert(unit.table).clone();
            in_flight.spawn(async move { write_unit(&session, statement, unit, timestamp).await });
        }
        match in_flight.join_next().await {
            None => return Ok(()),
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(StoreError::Backend(format!(
                    "expected a flush write task to finish, found it failed: {e}"
                )));
            }
        }
    }
}

/// One request of a flush: a single row as itself, more as an UNLOGGED batch (they share
/// one partition, so the batch is applied as one mutation).
async fn write_unit(
    session: &Session,
    mut statement: PreparedStatement,
    unit: Unit,
    timestamp: i64,
) -> Result<(), StoreError> {
    let table = unit.table.name();
    let rows = unit.rows.len();
    if let [row] = unit.rows.as_slice() {
        statement.set_timestamp(Some(timestamp));
        let statement = &statement;
        retrying(
            || format!("expected the server to store a row of {table}"),
            || session.execute_unpaged(statement, row),
        )
        .await?;
        return Ok(());
    }
    let mut batch = Batch::new(BatchType::Unlogged);
    for _ in 0..rows {
        batch.append_statement(statement.clone());
    }
    batch.set_timestamp(Some(timestamp));
    batch.set_is_idempotent(true);
    batch.set_consistency(Consistency::LocalQuorum);
    let (batch, values) = (&batch, &unit.rows);
    retrying(
        || format!("expected the server to store a batch of {rows} rows of {table}"),
        || session.batch(batch, values),
    )
    .await?;
    Ok(())
}

/// Drops the dedup generations of `shard` below `minimum` listed in `dedup_generations`:
/// each one's `dedup_chunks` partition, then their rows of the list.
async fn drop_generations_below(
    cx: &Context,
    statements: &Statements,
    shard: i32,
    minimum: i64,
) -> Result<(), StoreError> {
    let mut below = Vec::new();
    for_each_row(
        cx.session(),
        &statements.generations_below,
        &(shard, minimum),
        usize::MAX,
        DEDUP_GENERATIONS,
        |(generation,): (i64,)| {
            below.push(generation);
            Ok(())
        },
    )
    .await?;
    if below.is_empty() {
        // No range tombstone when there is nothing to drop (the common flush).
        return Ok(());
    }
    let timestamp = next_timestamp();
    let mut drop_chunks = statements.chunks_drop.clone();
    drop_chunks.set_timestamp(Some(timestamp));
    for generation in below {
        let (statement, values) = (&drop_chunks, (shard, generation));
        retrying(
            || format!("expected the server to drop generation {generation} of shard {shard}"),
            || cx.session().execute_unpaged(statement, values),
        )
        .await?;
    }
    let mut drop_listed = statements.generations_drop.clone();
    drop_listed.set_timestamp(Some(timestamp));
    let statement = &drop_listed;
    retrying(
        || format!("expected the server to drop the generations below {minimum} of shard {shard}"),
        || cx.session().execute_unpaged(statement, (shard, minimum)),
    )
    .await?;
    Ok(())
}

/// Runs `attempt` until it succeeds, fails with an error a retry cannot fix, or has failed
/// [`ATTEMPTS`] times; waits [`RETRY_BACKOFF`], doubling, between attempts.
async fn retrying<T, Fut>(
    expected: impl Fn() -> String,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, ExecutionError>>,
{
    let mut backoff = RETRY_BACKOFF;
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(e) if tried < ATTEMPTS && transient(&e) => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => {
                return Err(StoreError::Backend(format!(
                    "{}, found (attempt {tried} of at most {ATTEMPTS}): {e}",
                    expected()
                )));
            }
        }
    }
}

/// Whether a failed request may succeed when sent again: timeouts, overload, a replica or
/// connection briefly gone.
fn transient(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::RequestTimeout(_) | ExecutionError::ConnectionPoolError(_) => true,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(db, _)) => matches!(
            db,
            DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::Overloaded
                | DbError::Unavailable { .. }
                | DbError::IsBootstrapping
        ),
        ExecutionError::LastAttemptError(RequestAttemptError::BrokenConnectionError(_)) => true,
        _ => false,
    }
}

// ---- reading -------------------------------------------------------------------------------

/// Reads the rows of `statement` page by page (retrying a page like a write), passing up
/// to `max` of them to `visit`.
async fn for_each_row<V, R>(
    session: &Session,
    statement: &PreparedStatement,
    values: &V,
    max: usize,
    table: &str,
    mut visit: impl FnMut(R) -> Result<(), StoreError>,
) -> Result<(), StoreError>
where
    V: SerializeRow + Sync,
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata>,
{
    let mut paging = PagingState::start();
    let mut seen = 0usize;
    loop {
        let (result, next) = retrying(
            || format!("expected to read table {table}"),
            || session.execute_single_page(statement, values, paging.clone()),
        )
        .await?;
        let rows = result
            .into_rows_result()
            .map_err(backend(format!("expected rows from table {table}")))?;
        for row in rows.rows::<R>().map_err(backend(format!(
            "expected the columns of table {table} (created by migrate)"
        )))? {
            if seen >= max {
                return Ok(());
            }
            visit(row.map_err(backend(format!("expected a readable row of table {table}")))?)?;
            seen += 1;
        }
        match next {
            PagingStateResponse::HasMorePages { state } if seen < max => paging = state,
            _ => return Ok(()),
        }
    }
}

/// The cells of a `balances` row, as selected.
type BalanceCells = (
    String,
    Option<CqlDecimal>,
    Option<CqlDecimal>,
    Option<String>,
    Option<String>,
    Option<CqlTimestamp>,
    Option<i64>,
    Option<i32>,
);

fn decode_balance(customer_id: &str, cells: BalanceCells) -> Result<BalanceRow, StoreError> {
    let (credit_type, balance, overdraft, status, reason, as_of, version, shard) = cells;
    let key = format!("(customer_id {customer_id:?}, credit_type {credit_type:?})");
    let cell = Cell {
        table: BALANCES,
        key: &key,
    };
    Ok(BalanceRow {
        balance_micros: cell.micros("balance", balance)?,
        overdraft_micros: cell.micros("overdraft", overdraft)?,
        auto_recharge_status: status,
        paused_reason: reason,
        as_of_ms: cell.need("as_of", as_of)?.0,
        version: cell.unsigned("version", version)?,
        shard: cell.unsigned_int("shard", shard)?,
        customer_id: customer_id.to_owned(),
        credit_type,
    })
}

/// The cells of a `ledger_entries` row, as selected.
type EntryCells = (
    i64,
    Option<CqlTimestamp>,
    Option<String>,
    Option<CqlDecimal>,
    Option<CqlDecimal>,
    Option<String>,
);

fn decode_entry(
    customer_id: &str,
    credit_type: &str,
    cells: EntryCells,
) -> Result<LedgerRow, StoreError> {
    let (seq, at, kind, amount, balance_after, reference) = cells;
    let key = format!("(customer_id {customer_id:?}, credit_type {credit_type:?}, seq {seq})");
    let cell = Cell {
        table: LEDGER_ENTRIES,
        key: &key,
    };
    Ok(LedgerRow {
        customer_id: customer_id.to_owned(),
        credit_type: credit_type.to_owned(),
        seq: cell.unsigned("seq", Some(seq))?,
        at_ms: cell.need("at", at)?.0,
        kind: cell.need("kind", kind)?,
        amount_micros: cell.micros("amount", amount)?,
        balance_after_micros: cell.micros("balance_after", balance_after)?,
        reference: cell.need("reference", reference)?,
    })
}

/// The cells of a `recharge_attempts` row, as selected.
type AttemptCells = (
    i64,
    Option<String>,
    Option<CqlTimestamp>,
    Option<CqlDecimal>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn decode_attempt(
    customer_id: &str,
    credit_type: &str,
    cells: AttemptCells,
) -> Result<AttemptRow, StoreError> {
    let (seq, command_id, at, credits, cost, currency, status, reason) = cells;
    let key = format!("(customer_id {customer_id:?}, credit_type {credit_type:?}, seq {seq})");
    let cell = Cell {
        table: RECHARGE_ATTEMPTS,
        key: &key,
    };
    Ok(AttemptRow {
        customer_id: customer_id.to_owned(),
        credit_type: credit_type.to_owned(),
        seq: cell.unsigned("seq", Some(seq))?,
        command_id: cell.need("command_id", command_id)?,
        at_ms: cell.need("at", at)?.0,
        credits_micros: cell.micros("credits", credits)?,
        cost_minor_units: cost,
        currency,
        status: cell.need("status", status)?,
        reason,
    })
}

/// The cells of a `checkpoints` row, as selected.
type CheckpointCells = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<CqlTimestamp>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
);

async fn read_checkpoint(
    cx: &Context,
    statements: &Statements,
    shard: u32,
    cql_shard: i32,
) -> Result<Option<CheckpointRow>, StoreError> {
    let mut found = None;
    for_each_row(
        cx.session(),
        &statements.checkpoint,
        &(cql_shard,),
        1,
        CHECKPOINTS,
        |cells: CheckpointCells| {
            found = Some(cells);
            Ok(())
        },
    )
    .await?;
    let Some((version, log_next, usage, commands, as_of, accounts, customers, min, meta)) = found
    else {
        return Ok(None);
    };
    let key = format!("(shard {shard})");
    let cell = Cell {
        table: CHECKPOINTS,
        key: &key,
    };
    let sources = match (usage, commands) {
        (Some(usage), Some(commands)) => Some((
            cell.unsigned("source_usage", Some(usage))?,
            cell.unsigned("source_commands", Some(commands))?,
        )),
        (None, None) => None,
        (usage, commands) => {
            return Err(cell.corrupt(format!(
                "expected both source offsets or neither, found source_usage {usage:?} and \
                 source_commands {commands:?}"
            )));
        }
    };
    Ok(Some(CheckpointRow {
        shard,
        version: cell.unsigned("version", version)?,
        log_next: cell.unsigned("log_next", log_next)?,
        sources,
        as_of_ms: cell.need("as_of", as_of)?.0,
        accounts: cell.count("accounts", accounts)?,
        customers: cell.count("customers", customers)?,
        dedup_generation_min: cell.unsigned("dedup_generation_min", min)?,
        meta: cell.need("meta", meta)?,
    }))
}

/// The states one index may have: (version, state) per slot.
type Slots = [Option<(u64, Vec<u8>)>; 2];

/// Reads the state rows of one shard (`account_state` or `customer_state`) bucket by
/// bucket and picks, per index below `count`, the slot a restore at `version` needs. Rows at
/// or beyond `count` belong to a flush that did not complete and are skipped.
async fn load_slots(
    cx: &Context,
    statement: &PreparedStatement,
    table: &'static str,
    index_column: &str,
    shard: i32,
    count: u32,
    version: u64,
) -> Result<Vec<(u8, Vec<u8>)>, StoreError> {
    let mut cells: Vec<Slots> = (0..count).map(|_| [None, None]).collect();
    let buckets = count.div_ceil(STATE_BUCKET_ROWS);
    for bucket in 0..buckets {
        let cql_bucket = to_int("bucket", bucket)?;
        for_each_row(
            cx.session(),
            statement,
            &(shard, cql_bucket),
            usize::MAX,
            table,
            |(index, slot, row_version, state): (i32, i8, Option<i64>, Option<Vec<u8>>)| {
                let key = format!(
                    "(shard {shard}, bucket {bucket}, {index_column} {index}, slot {slot})"
                );
                let cell = Cell { table, key: &key };
                let index = u32::try_from(index).map_err(|_| {
                    cell.corrupt(format!(
                        "expected a {index_column} of at least 0, found {index}"
                    ))
                })?;
                if index / STATE_BUCKET_ROWS != bucket {
                    return Err(cell.corrupt(format!(
                        "expected {index_column} {index} in bucket {}",
                        index / STATE_BUCKET_ROWS
                    )));
                }
                let slot = match slot {
                    0 => 0,
                    1 => 1,
                    other => {
                        return Err(cell.corrupt(format!("expected slot 0 or 1, found {other}")));
                    }
                };
                let row_version = cell.unsigned("version", row_version)?;
                let state = cell.need("state", state)?;
                if let Some(held) = cells.get_mut(index as usize) {
                    held[slot] = Some((row_version, state));
                }
                Ok(())
            },
        )
        .await?;
    }
    cells
        .into_iter()
        .enumerate()
        .map(|(index, mut held)| {
            let slots = held.iter().enumerate().filter_map(|(slot, state)| {
                state
                    .as_ref()
                    .map(|(row_version, bytes)| (slot as u8, *row_version, bytes.as_slice()))
            });
            match pick_slot(slots, version) {
                Some((slot, _)) => {
                    let state = held[slot as usize].take().map(|(_, bytes)| bytes);
                    Ok((slot, state.unwrap_or_default()))
                }
                None => {
                    let versions: Vec<u64> = held.iter().flatten().map(|(v, _)| *v).collect();
                    Err(StoreError::Corrupt(format!(
                        "table {table}, key (shard {shard}, bucket {}, {index_column} {index}): \
                         expected a state at or below flush {version} (the checkpoint counts \
                         {count}), found {}",
                        index as u32 / STATE_BUCKET_ROWS,
                        if versions.is_empty() {
                            "no row".to_owned()
                        } else {
                            format!("only states of flushes {versions:?}")
                        }
                    )))
                }
            }
        })
        .collect()
}

/// The dedup chunks a restore at `checkpoint` needs: live generations, flushes at or below
/// it, in (generation, flush) order.
async fn load_dedup(
    cx: &Context,
    statements: &Statements,
    shard: i32,
    checkpoint: &CheckpointRow,
) -> Result<Vec<DedupChunkRow>, StoreError> {
    let minimum = to_bigint("dedup_generation_min", checkpoint.dedup_generation_min)?;
    let version = to_bigint("checkpoint version", checkpoint.version)?;
    let mut generations = Vec::new();
    for_each_row(
        cx.session(),
        &statements.generations_from,
        &(shard, minimum),
        usize::MAX,
        DEDUP_GENERATIONS,
        |(generation,): (i64,)| {
            generations.push(generation);
            Ok(())
        },
    )
    .await?;
    let mut chunks = Vec::new();
    for generation in generations {
        for_each_row(
            cx.session(),
            &statements.chunks,
            &(shard, generation, version),
            usize::MAX,
            DEDUP_CHUNKS,
            |(flush, fingerprints): (i64, Option<Vec<u8>>)| {
                let key = format!("(shard {shard}, generation {generation}, flush {flush})");
                let cell = Cell {
                    table: DEDUP_CHUNKS,
                    key: &key,
                };
                chunks.push(DedupChunkRow {
                    shard: checkpoint.shard,
                    generation: cell.unsigned("generation", Some(generation))?,
                    flush: cell.unsigned("flush", Some(flush))?,
                    fingerprints: cell.need("fingerprints", fingerprints)?,
                });
                Ok(())
            },
        )
        .await?;
    }
    Ok(chunks)
}

// ---- values ----------------------------------------------------------------------------------

/// A value of `u32` as a CQL `int`.
fn to_int(what: &str, value: u32) -> Result<i32, StoreError> {
    i32::try_from(value).map_err(|_| {
        StoreError::InvalidRequest(format!(
            "expected a {what} of at most {} (a CQL int), found {value}",
            i32::MAX
        ))
    })
}

/// A value of `u64` as a CQL `bigint`.
fn to_bigint(what: &str, value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| {
        StoreError::InvalidRequest(format!(
            "expected a {what} of at most {} (a CQL bigint), found {value}",
            i64::MAX
        ))
    })
}

/// A slot as a CQL `tinyint`.
fn to_slot(slot: u8) -> Result<i8, StoreError> {
    match slot {
        0 => Ok(0),
        1 => Ok(1),
        other => Err(StoreError::InvalidRequest(format!(
            "expected a state slot of 0 or 1, found {other}"
        ))),
    }
}

/// Micro-credits as a `decimal` of scale 6 (the shortest two's complement bytes).
fn decimal(micros: i64) -> CqlDecimal {
    let bytes = micros.to_be_bytes();
    // Leading bytes that only repeat the sign of the next byte's top bit are redundant.
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (head, next) = (bytes[start], bytes[start + 1]);
        let redundant = (head == 0x00 && next & 0x80 == 0) || (head == 0xff && next & 0x80 != 0);
        if !redundant {
            break;
        }
        start += 1;
    }
    CqlDecimal::from_signed_be_bytes_slice_and_exponent(&bytes[start..], CREDIT_SCALE)
}

/// The exact micro-credits of a `decimal`, or `None` when it has more than six decimal
/// places or does not fit an `i64` of micro-credits.
fn decimal_micros(value: &CqlDecimal) -> Option<i64> {
    let (bytes, scale) = value.as_signed_be_bytes_slice_and_exponent();
    let unscaled = varint(bytes)?;
    let micros = match scale.cmp(&CREDIT_SCALE) {
        std::cmp::Ordering::Equal => unscaled,
        std::cmp::Ordering::Less => {
            let factor = 10i128.checked_pow(u32::try_from(CREDIT_SCALE - scale).ok()?)?;
            unscaled.checked_mul(factor)?
        }
        std::cmp::Ordering::Greater => {
            let places = u32::try_from(i64::from(scale) - i64::from(CREDIT_SCALE)).ok()?;
            match 10i128.checked_pow(places) {
                Some(divisor) if unscaled % divisor == 0 => unscaled / divisor,
                Some(_) => return None,
                // Beyond 10^38 only zero divides exactly.
                None if unscaled == 0 => 0,
                None => return None,
            }
        }
    };
    i64::try_from(micros).ok()
}

/// A two's complement big-endian integer of at most 16 significant bytes (empty is 0).
fn varint(bytes: &[u8]) -> Option<i128> {
    let negative = bytes.first().is_some_and(|b| b & 0x80 != 0);
    let fill = if negative { 0xff } else { 0x00 };
    // Leading bytes that only repeat the sign may be dropped, down to 16.
    let mut significant = bytes;
    while significant.len() > 16
        && significant[0] == fill
        && (significant[1] & 0x80 != 0) == negative
    {
        significant = &significant[1..];
    }
    if significant.len() > 16 {
        return None;
    }
    let mut wide = [fill; 16];
    wide[16 - significant.len()..].copy_from_slice(significant);
    Some(i128::from_be_bytes(wide))
}

/// A `decimal` as text, for error messages (`unscaled × 10^-scale`).
fn decimal_text(value: &CqlDecimal) -> String {
    let (bytes, scale) = value.as_signed_be_bytes_slice_and_exponent();
    match varint(bytes) {
        Some(unscaled) => format!("{unscaled}E{}", -i64::from(scale)),
        None => format!("a {}-byte unscaled value with scale {scale}", bytes.len()),
    }
}

/// One row being decoded: every failure names its table, key and column.
struct Cell<'a> {
    table: &'a str,
    key: &'a str,
}

impl Cell<'_> {
    fn corrupt(&self, what: impl Display) -> StoreError {
        StoreError::Corrupt(format!("table {}, key {}: {what}", self.table, self.key))
    }

    fn need<T>(&self, column: &str, value: Option<T>) -> Result<T, StoreError> {
        value
            .ok_or_else(|| self.corrupt(format!("expected a value in column {column}, found null")))
    }

    fn unsigned(&self, column: &str, value: Option<i64>) -> Result<u64, StoreError> {
        let value = self.need(column, value)?;
        u64::try_from(value).map_err(|_| {
            self.corrupt(format!(
                "expected column {column} at least 0, found {value}"
            ))
        })
    }

    fn unsigned_int(&self, column: &str, value: Option<i32>) -> Result<u32, StoreError> {
        let value = self.need(column, value)?;
        u32::try_from(value).map_err(|_| {
            self.corrupt(format!(
                "expected column {column} at least 0, found {value}"
            ))
        })
    }

    fn count(&self, column: &str, value: Option<i64>) -> Result<u32, StoreError> {
        let value = self.need(column, value)?;
        u32::try_from(value).map_err(|_| {
            self.corrupt(format!(
                "expected column {column} between 0 and {}, found {value}",
                u32::MAX
            ))
        })
    }

    fn micros(&self, column: &str, value: Option<CqlDecimal>) -> Result<i64, StoreError> {
        let value = self.need(column, value)?;
        decimal_micros(&value).ok_or_else(|| {
            self.corrupt(format!(
                "expected in column {column} a decimal of at most {CREDIT_SCALE} decimal places \
                 within ±{} credits (an exact micro-credit), found {}",
                i64::MAX / refill_store::accounts::MICROS_PER_CREDIT,
                decimal_text(&value)
            ))
        })
    }
}

// ---- statements ------------------------------------------------------------------------------

/// The prepared statements of the account-state tables (keyspace-qualified).
struct Statements {
    balance_put: PreparedStatement,
    balances: PreparedStatement,
    entry_put: PreparedStatement,
    ledger: PreparedStatement,
    attempt_put: PreparedStatement,
    attempts: PreparedStatement,
    account_put: PreparedStatement,
    account_states: PreparedStatement,
    customer_put: PreparedStatement,
    customer_states: PreparedStatement,
    chunk_put: PreparedStatement,
    chunks: PreparedStatement,
    chunks_drop: PreparedStatement,
    generation_put: PreparedStatement,
    generations_from: PreparedStatement,
    generations_below: PreparedStatement,
    generations_drop: PreparedStatement,
    checkpoint_put: PreparedStatement,
    checkpoint: PreparedStatement,
}

impl Statements {
    /// The insert of a flush's rows into `table`.
    fn insert(&self, table: Table) -> &PreparedStatement {
        match table {
            Table::Balances => &self.balance_put,
            Table::LedgerEntries => &self.entry_put,
            Table::RechargeAttempts => &self.attempt_put,
            Table::AccountState => &self.account_put,
            Table::CustomerState => &self.customer_put,
            Table::DedupChunks => &self.chunk_put,
            Table::DedupGenerations => &self.generation_put,
        }
    }

    async fn prepare(session: &Session, ks: &str) -> Result<Self, StoreError> {
        // Every statement here is idempotent (plain inserts and deletes at a client
        // timestamp), so the driver may retry it too.
        let prepare = |cql: String, page_rows: Option<i32>| async move {
            let mut statement = session.prepare(cql.as_str()).await.map_err(|e| {
                StoreError::Backend(format!(
                    "expected the account-state tables of keyspace {ks} (created by migrate), \
                     found that {cql:?} does not prepare: {e}"
                ))
            })?;
            if let Some(rows) = page_rows {
                statement.set_page_size(rows);
            }
            statement.set_is_idempotent(true);
            statement.set_consistency(Consistency::LocalQuorum);
            Ok::<_, StoreError>(statement)
        };
        let write = |cql: String| prepare(cql, None);
        let read = |cql: String, rows: i32| prepare(cql, Some(rows));
        Ok(Self {
            balance_put: write(format!(
                "INSERT INTO {ks}.{BALANCES} (customer_id, credit_type, balance, overdraft, \
                 auto_recharge_status, paused_reason, as_of, version, shard) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            balances: read(
                format!(
                    "SELECT credit_type, balance, overdraft, auto_recharge_status, \
                     paused_reason, as_of, version, shard FROM {ks}.{BALANCES} \
                     WHERE customer_id = ?"
                ),
                READ_PAGE_ROWS,
            )
            .await?,
            entry_put: write(format!(
                "INSERT INTO {ks}.{LEDGER_ENTRIES} (customer_id, credit_type, seq, at, kind, \
                 amount, balance_after, reference) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            ledger: read(
                format!(
                    "SELECT seq, at, kind, amount, balance_after, reference \
                     FROM {ks}.{LEDGER_ENTRIES} WHERE customer_id = ? AND credit_type = ? \
                     AND seq >= ? LIMIT ?"
                ),
                READ_PAGE_ROWS,
            )
            .await?,
            attempt_put: write(format!(
                "INSERT INTO {ks}.{RECHARGE_ATTEMPTS} (customer_id, credit_type, seq, \
                 command_id, at, credits, cost_minor_units, currency, status, reason) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            attempts: read(
                format!(
                    "SELECT seq, command_id, at, credits, cost_minor_units, currency, status, \
                     reason FROM {ks}.{RECHARGE_ATTEMPTS} WHERE customer_id = ? \
                     AND credit_type = ? AND seq >= ? LIMIT ?"
                ),
                READ_PAGE_ROWS,
            )
            .await?,
            account_put: write(format!(
                "INSERT INTO {ks}.{ACCOUNT_STATE} (shard, bucket, handle, slot, version, state) \
                 VALUES (?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            account_states: read(
                format!(
                    "SELECT handle, slot, version, state FROM {ks}.{ACCOUNT_STATE} \
                     WHERE shard = ? AND bucket = ?"
                ),
                STATE_PAGE_ROWS,
            )
            .await?,
            customer_put: write(format!(
                "INSERT INTO {ks}.{CUSTOMER_STATE} (shard, bucket, customer_index, slot, \
                 version, customer_id, state) VALUES (?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            customer_states: read(
                format!(
                    "SELECT customer_index, slot, version, state FROM {ks}.{CUSTOMER_STATE} \
                     WHERE shard = ? AND bucket = ?"
                ),
                STATE_PAGE_ROWS,
            )
            .await?,
            chunk_put: write(format!(
                "INSERT INTO {ks}.{DEDUP_CHUNKS} (shard, generation, flush, fingerprints) \
                 VALUES (?, ?, ?, ?)"
            ))
            .await?,
            chunks: read(
                format!(
                    "SELECT flush, fingerprints FROM {ks}.{DEDUP_CHUNKS} \
                     WHERE shard = ? AND generation = ? AND flush <= ?"
                ),
                CHUNK_PAGE_ROWS,
            )
            .await?,
            chunks_drop: write(format!(
                "DELETE FROM {ks}.{DEDUP_CHUNKS} WHERE shard = ? AND generation = ?"
            ))
            .await?,
            generation_put: write(format!(
                "INSERT INTO {ks}.{DEDUP_GENERATIONS} (shard, generation) VALUES (?, ?)"
            ))
            .await?,
            generations_from: read(
                format!(
                    "SELECT generation FROM {ks}.{DEDUP_GENERATIONS} \
                     WHERE shard = ? AND generation >= ?"
                ),
                READ_PAGE_ROWS,
            )
            .await?,
            generations_below: read(
                format!(
                    "SELECT generation FROM {ks}.{DEDUP_GENERATIONS} \
                     WHERE shard = ? AND generation < ?"
                ),
                READ_PAGE_ROWS,
            )
            .await?,
            generations_drop: write(format!(
                "DELETE FROM {ks}.{DEDUP_GENERATIONS} WHERE shard = ? AND generation < ?"
            ))
            .await?,
            checkpoint_put: write(format!(
                "INSERT INTO {ks}.{CHECKPOINTS} (shard, version, log_next, source_usage, \
                 source_commands, as_of, accounts, customers, dedup_generation_min, meta) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .await?,
            checkpoint: read(
                format!(
                    "SELECT version, log_next, source_usage, source_commands, as_of, accounts, \
                     customers, dedup_generation_min, meta FROM {ks}.{CHECKPOINTS} \
                     WHERE shard = ?"
                ),
                1,
            )
            .await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_exact_micro_credits() {
        for micros in [
            0,
            1,
            -1,
            127,
            128,
            -128,
            -129,
            255,
            256,
            1_234_567,
            i64::MAX / 2,
            i64::MAX,
            i64::MIN,
        ] {
            let value = decimal(micros);
            assert_eq!(decimal_micros(&value), Some(micros), "{micros}");
            let (bytes, scale) = value.as_signed_be_bytes_slice_and_exponent();
            assert_eq!(scale, 6);
            assert!(bytes.len() <= 8, "{micros}: {bytes:?}");
        }
        assert_eq!(decimal(0).as_signed_be_bytes_slice_and_exponent().0, [0]);
        assert_eq!(
            decimal(-1).as_signed_be_bytes_slice_and_exponent().0,
            [0xff]
        );
        assert_eq!(
            decimal(128).as_signed_be_bytes_slice_and_exponent().0,
            [0, 128]
        );
        let of = |bytes: &[u8], scale| {
            decimal_micros(&CqlDecimal::from_signed_be_bytes_slice_and_exponent(
                bytes, scale,
            ))
        };
        // 50 (scale 0), 1.5 (scale 1), 1.2345670 (scale 7, exact), 1.0000001 (not exact).
        assert_eq!(of(&[50], 0), Some(50_000_000));
        assert_eq!(of(&[15], 1), Some(1_500_000));
        assert_eq!(of(&12_345_670i64.to_be_bytes(), 7), Some(1_234_567));
        assert_eq!(of(&10_000_001i64.to_be_bytes(), 7), None);
        // 5E+3 (negative scale), redundant sign bytes, beyond i64, huge scales.
        assert_eq!(of(&[5], -3), Some(5_000_000_000));
        assert_eq!(of(&[0, 0, 0, 1], 6), Some(1));
        assert_eq!(of(&[0xff, 0xff, 0xff], 6), Some(-1));
        assert_eq!(
            of(&[0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 6),
            None
        );
        assert_eq!(of(&[0], 100), Some(0));
        assert_eq!(of(&[1], 100), None);
        assert_eq!(of(&[1], -100), None);
        assert_eq!(of(&[1; 20], 6), None);
    }

    #[test]
    fn rows_of_a_key_keep_the_last_and_batches_stay_bounded() {
        let row = |seq: u64, customer: &str| LedgerRow {
            customer_id: customer.into(),
            credit_type: "api".into(),
            seq,
            at_ms: 0,
            kind: "usage".into(),
            amount_micros: 0,
            balance_after_micros: 0,
            reference: String::new(),
        };
        let mut entries: Vec<LedgerRow> = (0..250).map(|seq| row(seq, "a")).collect();
        entries.push(row(3, "a"));
        entries.push(row(0, "b"));
        let units = plan(&Flush {
            entries,
            ..Flush::default()
        })
        .expect("plans");
        let sizes: Vec<usize> = units.iter().map(|unit| unit.rows.len()).collect();
        assert_eq!(sizes, [100, 100, 50, 1], "250 distinct rows of a, 1 of b");
    }
}
