//! Scenario `flush`: what the incremental flush costs on disk, on the embedded store as
//! `refill serve` runs it. N accounts (1 M by default) are created with one grant each and
//! their first flush lands; then
//!
//! - **idle**: the bytes the process writes to disk (`/proc/self/io` `write_bytes`) over
//!   `--idle-ms` with no traffic, and the growth of the data folder (target 0: an idle
//!   shard logs and writes nothing);
//! - **dirty**: for 1 k, 100 k and (with ≥ 1 M accounts) 1 M dirty accounts, one usage event
//!   to each of that many distinct accounts (one log record per shard, so each shard's next
//!   flush holds them all), then the wait until every shard's checkpoint moves: the disk
//!   bytes of the log append, of the flush, and of what the store writes afterwards
//!   (memtable flushes, compactions, until the disk is quiet), per dirty account, next to
//!   the logical bytes of the rows the flush handed the store (keys + values, metered under
//!   `KvAccountStore`) and the flush's time. Target: disk bytes of the flush per dirty
//!   account ≤ 2 × the logical bytes of one account's rows (balance + state + rolled-up
//!   ledger entry).
//! - **sustained**: `--sustained-rounds` rounds of 100 k dirty accounts back to back (a
//!   different window of accounts each), then the wait for a quiet disk: every disk byte
//!   over all of them per dirty account, so the store's memtable flushes and compactions,
//!   which land in whichever window they happen to, are paid in full (the log's share of
//!   them included; its appends are counted apart).
//!
//! The disk figures are the whole process's: run it alone.

// Rates, ratios and seconds for the report are floats; balances stay integer micros.
#![allow(clippy::float_arithmetic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use refill_ingest::engine::{Engine, EngineConfig, LogBatch, now};
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_ledger::{Input, Quantity, testkit};
use refill_store::embedded::Embedded;
use refill_store::kv_accounts::{ACCOUNT_STATE, BALANCES, LEDGER_ENTRIES};
use refill_store::{AccountStore, Entry, KvAccountStore, Store, StoreError, Write};
use serde_json::{Value, json};

use crate::harness::{self, AccountSetup, CREDIT_TYPE, FEATURE, Http, Server, TempDir, round};
use crate::report::{Table, thousands};

/// An idle engine writes nothing.
pub const TARGET_IDLE_WRITE_BYTES_PER_S: u64 = 0;
/// Disk bytes of a flush per dirty account, at most this many times one account's rows.
pub const TARGET_RATIO_VS_ROW_BYTES: f64 = 2.0;
/// Whole credits of each account's grant (each round takes one).
const GRANT: i64 = 1_000;
/// How long a round may wait for its flush to land.
const FLUSH_DEADLINE: Duration = Duration::from_secs(300);

/// Options of the `flush` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct FlushArgs {
    /// Accounts (customers `c0000000`.. with one grant each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Idle time measured, ms.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_ms: u64,
    /// Dirty accounts per round (those above `--accounts` are skipped).
    #[arg(long, value_delimiter = ',', default_values_t = [1_000_u32, 100_000, 1_000_000])]
    pub dirty: Vec<u32>,
    /// Rounds of the sustained series (0: none).
    #[arg(long, default_value_t = 10)]
    pub sustained_rounds: u32,
    /// Dirty accounts per sustained round (at most `--accounts`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub sustained_dirty: u32,
    /// Shards of the engine.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// The disk counts as quiet after this long without a written byte, ms.
    #[arg(long, default_value_t = 2_000)]
    pub quiet_ms: u64,
    /// Longest wait for a quiet disk, ms (then the scenario goes on and says so).
    #[arg(long, default_value_t = 60_000)]
    pub quiet_max_ms: u64,
    /// Folder for the data folder (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Rows and logical bytes (keys + values) written to one table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableBytes {
    /// Puts and deletes.
    pub rows: u64,
    /// Σ key + value bytes.
    pub bytes: u64,
}

/// What the account store handed the key-value store, per table, and its write calls.
#[derive(Clone, Debug, Default)]
pub struct Metered {
    /// Per table.
    pub tables: BTreeMap<&'static str, TableBytes>,
    /// `Store::write` calls (one per flush).
    pub writes: u64,
    /// Time inside them.
    pub write_time: Duration,
}

impl Metered {
    /// What was written since `before`.
    fn since(&self, before: &Metered) -> Metered {
        let tables = self
            .tables
            .iter()
            .map(|(&table, now)| {
                let was = before.tables.get(table).copied().unwrap_or_default();
                (
                    table,
                    TableBytes {
                        rows: now.rows - was.rows,
                        bytes: now.bytes - was.bytes,
                    },
                )
            })
            .filter(|(_, delta)| delta.rows > 0)
            .collect();
        Metered {
            tables,
            writes: self.writes - before.writes,
            write_time: self.write_time.saturating_sub(before.write_time),
        }
    }

    /// Σ logical bytes of every table.
    pub fn bytes(&self) -> u64 {
        self.tables.values().map(|table| table.bytes).sum()
    }

    /// Rows written to `table`.
    pub fn rows_of(&self, table: &str) -> u64 {
        self.tables.get(table).map_or(0, |table| table.rows)
    }

    /// Mean logical bytes of one row of `table` (0 when none).
    pub fn row_bytes_of(&self, table: &str) -> f64 {
        self.tables
            .get(table)
            .filter(|table| table.rows > 0)
            .map_or(0.0, |table| table.bytes as f64 / table.rows as f64)
    }
}

/// The embedded store under the account tables, metering what they write.
struct MeteredStore {
    inner: Arc<Embedded>,
    meter: Arc<Mutex<Metered>>,
}

impl Store for MeteredStore {
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        let mut tables: BTreeMap<&'static str, TableBytes> = BTreeMap::new();
        for write in &writes {
            let (table, bytes) = match write {
                Write::Put { table, key, value } => (*table, key.len() + value.len()),
                Write::Delete { table, key } => (*table, key.len()),
            };
            let entry = tables.entry(table).or_default();
            entry.rows += 1;
            entry.bytes += bytes as u64;
        }
        let started = Instant::now();
        self.inner.write(writes)?;
        let elapsed = started.elapsed();
        let mut meter = self.meter.lock().unwrap_or_else(PoisonError::into_inner);
        for (table, delta) in tables {
            let entry = meter.tables.entry(table).or_default();
            entry.rows += delta.rows;
            entry.bytes += delta.bytes;
        }
        meter.writes += 1;
        meter.write_time += elapsed;
        Ok(())
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.inner.scan(table, prefix, start, max)
    }
}

/// Bytes this process has caused to be written to disk so far (`/proc/self/io`).
fn write_bytes() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io").context("reading /proc/self/io")?;
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
        .context("no write_bytes in /proc/self/io")
}

/// Waits until the process has written nothing for `quiet`, at most `max`; returns how
/// long it waited, the bytes written meanwhile, and whether the disk got quiet.
fn wait_quiet(quiet: Duration, max: Duration) -> anyhow::Result<(Duration, u64, bool)> {
    let started = Instant::now();
    let first = write_bytes()?;
    let mut last = first;
    let mut still_since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = write_bytes()?;
        if now != last {
            last = now;
            still_since = Instant::now();
        }
        if still_since.elapsed() >= quiet {
            return Ok((started.elapsed(), last - first, true));
        }
        if started.elapsed() >= max {
            return Ok((started.elapsed(), last - first, false));
        }
    }
}

/// Σ of the engine's flush durations (`refill_store_flush_seconds`, rows built and written)
/// and their count, when the benchmarks' recorder is the process's.
fn flush_seconds() -> Option<(f64, u64)> {
    let text = harness::metrics_text()?;
    let value_of = |name: &str| -> f64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        value_of("refill_store_flush_seconds_sum"),
        value_of("refill_store_flush_seconds_count") as u64,
    ))
}

/// Every shard's checkpoint version (0 before the first).
fn checkpoint_versions(engine: &Engine) -> anyhow::Result<Vec<u64>> {
    (0..engine.shards())
        .map(|shard| {
            Ok(engine
                .accounts()
                .checkpoint(shard)?
                .map_or(0, |checkpoint| checkpoint.version))
        })
        .collect()
}

/// One round: `dirty` accounts touched once, then their flush.
#[derive(Clone, Debug)]
pub struct DirtyRound {
    /// Dirty accounts.
    pub dirty: u32,
    /// Flushes it took (Σ over shards of checkpoint versions moved; one per shard expected).
    pub flushes: u64,
    /// Appending the events (one record per shard, durable).
    pub log_append: Duration,
    /// Bytes of those log records.
    pub log_record_bytes: u64,
    /// Disk bytes written while appending.
    pub log_disk_bytes: u64,
    /// Appended → every shard's checkpoint moved (apply, log the flush, rows, write).
    pub flush_wall: Duration,
    /// Disk bytes written meanwhile.
    pub flush_disk_bytes: u64,
    /// Σ of the engine's flush durations (`refill_store_flush_seconds`), if readable.
    pub flush_engine: Option<Duration>,
    /// What the flushes handed the key-value store.
    pub store: Metered,
    /// Disk bytes written after the checkpoints moved, until the disk was quiet.
    pub deferred_disk_bytes: u64,
    /// How long that took (the quiet period included).
    pub deferred_wait: Duration,
    /// Whether the disk got quiet (else the wait hit `--quiet-max-ms`).
    pub deferred_quiet: bool,
    /// Growth of the data folder over the round (after the quiet wait).
    pub dir_growth_bytes: i64,
}

impl DirtyRound {
    fn per_account(&self, bytes: u64) -> f64 {
        bytes as f64 / f64::from(self.dirty.max(1))
    }

    /// Disk bytes of the flush per dirty account (the log's append excluded).
    pub fn bytes_per_dirty_account(&self) -> f64 {
        self.per_account(self.flush_disk_bytes)
    }

    /// Every disk byte of the round per dirty account: log, flush, and what came after.
    pub fn total_bytes_per_dirty_account(&self) -> f64 {
        self.per_account(self.log_disk_bytes + self.flush_disk_bytes + self.deferred_disk_bytes)
    }

    /// Logical bytes (keys + values) the flush handed the store per dirty account.
    pub fn store_bytes_per_dirty_account(&self) -> f64 {
        self.per_account(self.store.bytes())
    }

    /// The flush's time: the engine's own durations when readable, else the wall time.
    pub fn flush_time(&self) -> Duration {
        self.flush_engine.unwrap_or(self.flush_wall)
    }

    /// Dirty accounts flushed per second of [`DirtyRound::flush_time`].
    pub fn accounts_per_s(&self) -> f64 {
        f64::from(self.dirty) / self.flush_time().as_secs_f64().max(1e-9)
    }
}

/// The sustained series: rounds back to back, then a quiet disk.
#[derive(Clone, Debug, Default)]
pub struct Sustained {
    /// Rounds.
    pub rounds: u32,
    /// Dirty accounts per round.
    pub dirty: u32,
    /// Σ disk bytes of the log appends.
    pub log_disk_bytes: u64,
    /// Σ disk bytes from each append's end to its flush landed.
    pub flush_disk_bytes: u64,
    /// Disk bytes between rounds and after the last until the disk was quiet.
    pub rest_disk_bytes: u64,
    /// What the flushes handed the store.
    pub store_bytes: u64,
    /// Σ flush time (the engine's own durations when readable).
    pub flush_time: Duration,
    /// First append → quiet disk after the last round.
    pub elapsed: Duration,
    /// Whether the disk got quiet at the end.
    pub quiet: bool,
    /// Growth of the data folder over the series.
    pub dir_growth_bytes: i64,
}

impl Sustained {
    fn accounts(&self) -> f64 {
        f64::from(self.rounds) * f64::from(self.dirty)
    }

    /// Every disk byte but the log appends' per dirty account (the log's memtable flushes
    /// and compactions included, so an upper bound for the account store's share).
    pub fn bytes_per_dirty_account(&self) -> f64 {
        (self.flush_disk_bytes + self.rest_disk_bytes) as f64 / self.accounts().max(1.0)
    }

    /// Every disk byte of the series per dirty account.
    pub fn total_bytes_per_dirty_account(&self) -> f64 {
        (self.log_disk_bytes + self.flush_disk_bytes + self.rest_disk_bytes) as f64
            / self.accounts().max(1.0)
    }

    /// Logical bytes the flushes handed the store per dirty account.
    pub fn store_bytes_per_dirty_account(&self) -> f64 {
        self.store_bytes as f64 / self.accounts().max(1.0)
    }
}

/// Every figure of one `flush` run.
#[derive(Clone, Debug)]
pub struct FlushReport {
    /// The arguments it ran with.
    pub args: FlushArgs,
    /// Creating the accounts through the log (untimed).
    pub setup: Duration,
    /// End of the setup → every account in a checkpoint.
    pub first_flush: Duration,
    /// What the first flushes handed the store (the setup's accounts).
    pub first_store: Metered,
    /// After the first flush, the wait for a quiet disk and the bytes meanwhile.
    pub settle: (Duration, u64, bool),
    /// The idle window measured.
    pub idle: Duration,
    /// Disk bytes written over it.
    pub idle_disk_bytes: u64,
    /// Growth of the data folder over it.
    pub idle_dir_growth_bytes: i64,
    /// What the account store wrote over it (nothing, if idle means idle).
    pub idle_store: Metered,
    /// Checkpoint versions moved over it (Σ shards).
    pub idle_flushes: u64,
    /// One per dirty level, smallest first.
    pub rounds: Vec<DirtyRound>,
    /// The sustained series (`None` with `--sustained-rounds 0`).
    pub sustained: Option<Sustained>,
    /// Bytes of the data folder at the end.
    pub data_bytes: u64,
}

impl FlushReport {
    /// Disk bytes per idle second: the idle figure.
    pub fn idle_write_bytes_per_s(&self) -> f64 {
        self.idle_disk_bytes as f64 / self.idle.as_secs_f64().max(1e-9)
    }

    fn round_of(&self, dirty: u32) -> Option<&DirtyRound> {
        self.rounds.iter().find(|round| round.dirty == dirty)
    }

    /// The round the headline figures come from: 100 k dirty accounts, else the largest.
    pub fn headline(&self) -> Option<&DirtyRound> {
        self.round_of(100_000).or_else(|| self.rounds.last())
    }

    /// Logical bytes of one account's rows: its balance row, its state row and one
    /// rolled-up ledger entry (keys + values, as the headline round wrote them).
    pub fn row_bytes(&self) -> f64 {
        self.headline().map_or(0.0, |round| {
            round.store.row_bytes_of(BALANCES)
                + round.store.row_bytes_of(ACCOUNT_STATE)
                + round.store.row_bytes_of(LEDGER_ENTRIES)
        })
    }

    /// Headline disk bytes per dirty account over [`FlushReport::row_bytes`].
    pub fn ratio_vs_row_bytes(&self) -> Option<f64> {
        let row_bytes = self.row_bytes();
        self.headline()
            .filter(|_| row_bytes > 0.0)
            .map(|round| round.bytes_per_dirty_account() / row_bytes)
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let args = &self.args;
        let mut table = Table::new(format!(
            "refill-bench flush: {} accounts, {} shards, embedded store, flush every {} ms",
            thousands(u64::from(args.accounts)),
            args.shards,
            EngineConfig::default().flush_interval_ms
        ));
        let s = |duration: Duration| format!("{:.3} s", duration.as_secs_f64());
        let ms = |duration: Duration| format!("{:.1} ms", duration.as_secs_f64() * 1e3);
        table
            .row(
                "idle write bytes/s",
                format!("{:.1}", self.idle_write_bytes_per_s()),
                &format!(
                    "/proc/self/io write_bytes over {:.1} s idle: {} bytes; target {TARGET_IDLE_WRITE_BYTES_PER_S}",
                    self.idle.as_secs_f64(),
                    thousands(self.idle_disk_bytes)
                ),
            )
            .row(
                "  data folder growth idle",
                format!("{} bytes", self.idle_dir_growth_bytes),
                &format!(
                    "account store writes {}, checkpoints moved {}",
                    self.idle_store.writes, self.idle_flushes
                ),
            )
            .row(
                "row bytes (one account)",
                format!("{:.1}", self.row_bytes()),
                "balance + state + rolled-up ledger entry, keys + values",
            );
        for round in &self.rounds {
            let dirty = thousands(u64::from(round.dirty));
            table
                .row(
                    &format!("{dirty} dirty: flush disk bytes/account"),
                    format!("{:.1}", round.bytes_per_dirty_account()),
                    &format!(
                        "ratio vs row bytes {:.2} (target ≤ {TARGET_RATIO_VS_ROW_BYTES}); {} in {} flushes",
                        round.bytes_per_dirty_account() / self.row_bytes().max(1e-9),
                        thousands(round.flush_disk_bytes),
                        round.flushes
                    ),
                )
                .row(
                    "  store logical bytes/account",
                    format!("{:.1}", round.store_bytes_per_dirty_account()),
                    &format!("keys + values handed the store: {}", tables_text(&round.store)),
                )
                .row(
                    "  log append disk bytes/account",
                    format!("{:.1}", round.per_account(round.log_disk_bytes)),
                    &format!(
                        "records {:.1} bytes/event, appended in {}",
                        round.per_account(round.log_record_bytes),
                        ms(round.log_append)
                    ),
                )
                .row(
                    "  afterwards disk bytes/account",
                    format!("{:.1}", round.per_account(round.deferred_disk_bytes)),
                    &format!(
                        "memtable flushes, compactions (log's too) over {}{}",
                        s(round.deferred_wait),
                        if round.deferred_quiet { "" } else { ", never quiet" }
                    ),
                )
                .row(
                    "  total disk bytes/account",
                    format!("{:.1}", round.total_bytes_per_dirty_account()),
                    &format!(
                        "log + flush + afterwards; data folder grew {} bytes",
                        round.dir_growth_bytes
                    ),
                )
                .row(
                    "  flush time",
                    ms(round.flush_time()),
                    &format!(
                        "{} accounts/s; Σ engine flush durations (store write {}); appended → checkpoints {}",
                        thousands(round.accounts_per_s() as u64),
                        ms(round.store.write_time),
                        ms(round.flush_wall)
                    ),
                );
        }
        if let Some(sustained) = &self.sustained {
            table
                .row(
                    &format!(
                        "sustained {}×{}: disk bytes/account",
                        sustained.rounds,
                        thousands(u64::from(sustained.dirty))
                    ),
                    format!("{:.1}", sustained.bytes_per_dirty_account()),
                    &format!(
                        "ratio vs row bytes {:.2} (target ≤ {TARGET_RATIO_VS_ROW_BYTES}); all but the log appends, until quiet{}",
                        sustained.bytes_per_dirty_account() / self.row_bytes().max(1e-9),
                        if sustained.quiet { "" } else { " (never quiet)" }
                    ),
                )
                .row(
                    "  total disk bytes/account",
                    format!("{:.1}", sustained.total_bytes_per_dirty_account()),
                    &format!(
                        "log appends included; store logical {:.1}; data folder grew {} bytes",
                        sustained.store_bytes_per_dirty_account(),
                        sustained.dir_growth_bytes
                    ),
                )
                .row(
                    "  flush time per round",
                    ms(sustained.flush_time / sustained.rounds.max(1)),
                    &format!(
                        "{} accounts/s; series {} until quiet",
                        thousands(
                            (sustained.accounts() / sustained.flush_time.as_secs_f64().max(1e-9))
                                as u64
                        ),
                        s(sustained.elapsed)
                    ),
                );
        }
        table
            .row(
                "first flush",
                s(self.first_flush),
                &format!(
                    "setup end → every account checkpointed; {:.1} logical bytes/account",
                    self.first_store.bytes() as f64 / f64::from(self.args.accounts)
                ),
            )
            .row(
                "quiet wait after it",
                s(self.settle.0),
                &format!(
                    "{} bytes written meanwhile{}",
                    thousands(self.settle.1),
                    if self.settle.2 { "" } else { ", never quiet" }
                ),
            )
            .row(
                "data folder at the end",
                crate::report::mib(self.data_bytes),
                "log + account tables",
            )
            .row(
                "setup (untimed)",
                format!("{:.1} s", self.setup.as_secs_f64()),
                "accounts through the log",
            );
        table
    }

    /// The JSON object (headline keys first).
    pub fn json(&self) -> Value {
        let per = |dirty: u32, pick: fn(&DirtyRound) -> f64| {
            self.round_of(dirty).map(|round| round3(pick(round)))
        };
        let headline = self.headline();
        let rounds: Vec<Value> = self
            .rounds
            .iter()
            .map(|r| {
                let tables: serde_json::Map<String, Value> = r
                    .store
                    .tables
                    .iter()
                    .map(|(table, bytes)| {
                        ((*table).to_owned(), json!({"rows": bytes.rows, "bytes": bytes.bytes}))
                    })
                    .collect();
                json!({
                    "dirty": r.dirty,
                    "flushes": r.flushes,
                    "bytes_per_dirty_account": round3(r.bytes_per_dirty_account()),
                    "total_bytes_per_dirty_account": round3(r.total_bytes_per_dirty_account()),
                    "store_logical_bytes_per_dirty_account": round3(r.store_bytes_per_dirty_account()),
                    "log_disk_bytes_per_dirty_account": round3(r.per_account(r.log_disk_bytes)),
                    "log_record_bytes_per_event": round3(r.per_account(r.log_record_bytes)),
                    "deferred_disk_bytes_per_dirty_account": round3(r.per_account(r.deferred_disk_bytes)),
                    "deferred_wait_s": round(r.deferred_wait.as_secs_f64(), 3),
                    "deferred_quiet": r.deferred_quiet,
                    "flush_ms": round(r.flush_time().as_secs_f64() * 1e3, 2),
                    "flush_wall_ms": round(r.flush_wall.as_secs_f64() * 1e3, 2),
                    "store_write_ms": round(r.store.write_time.as_secs_f64() * 1e3, 2),
                    "accounts_per_s": r.accounts_per_s().round() as u64,
                    "log_append_ms": round(r.log_append.as_secs_f64() * 1e3, 2),
                    "dir_growth_bytes": r.dir_growth_bytes,
                    "store_tables": tables,
                })
            })
            .collect();
        let sustained = self.sustained.as_ref();
        let mut out = json!({
            "scenario": "flush",
            "idle_write_bytes_per_s": round(self.idle_write_bytes_per_s(), 1),
            "target_idle_write_bytes_per_s": TARGET_IDLE_WRITE_BYTES_PER_S,
            "bytes_per_dirty_account": headline.map(|round| round3(round.bytes_per_dirty_account())),
            "bytes_per_dirty_account_1k": per(1_000, DirtyRound::bytes_per_dirty_account),
            "bytes_per_dirty_account_100k": per(100_000, DirtyRound::bytes_per_dirty_account),
            "bytes_per_dirty_account_1m": per(1_000_000, DirtyRound::bytes_per_dirty_account),
            "row_bytes": round3(self.row_bytes()),
            "ratio_vs_row_bytes": self.ratio_vs_row_bytes().map(round3),
            "target_ratio_vs_row_bytes": TARGET_RATIO_VS_ROW_BYTES,
            "total_bytes_per_dirty_account_1k": per(1_000, DirtyRound::total_bytes_per_dirty_account),
            "total_bytes_per_dirty_account_100k": per(100_000, DirtyRound::total_bytes_per_dirty_account),
            "total_bytes_per_dirty_account_1m": per(1_000_000, DirtyRound::total_bytes_per_dirty_account),
            "store_logical_bytes_per_dirty_account_1k": per(1_000, DirtyRound::store_bytes_per_dirty_account),
            "store_logical_bytes_per_dirty_account_100k": per(100_000, DirtyRound::store_bytes_per_dirty_account),
            "store_logical_bytes_per_dirty_account_1m": per(1_000_000, DirtyRound::store_bytes_per_dirty_account),
            "flush_100k_ms": self.round_of(100_000).map(|r| round(r.flush_time().as_secs_f64() * 1e3, 2)),
            "flush_100k_accounts_per_s": self.round_of(100_000).map(|r| r.accounts_per_s().round() as u64),
            "flush_accounts_per_s": headline.map(|round| round.accounts_per_s().round() as u64),
            "idle_s": round(self.idle.as_secs_f64(), 3),
            "idle_disk_bytes": self.idle_disk_bytes,
            "idle_dir_growth_bytes": self.idle_dir_growth_bytes,
            "idle_store_writes": self.idle_store.writes,
            "idle_flushes": self.idle_flushes,
            "rounds": rounds,
            "first_flush_s": round(self.first_flush.as_secs_f64(), 3),
            "first_flush_logical_bytes_per_account": round3(self.first_store.bytes() as f64 / f64::from(self.args.accounts)),
            "settle_s": round(self.settle.0.as_secs_f64(), 3),
            "settle_disk_bytes": self.settle.1,
            "data_bytes": self.data_bytes,
            "accounts": self.args.accounts,
            "shards": self.args.shards,
            "flush_interval_ms": EngineConfig::default().flush_interval_ms,
            "setup_s": round(self.setup.as_secs_f64(), 2),
        });
        let series = json!({
            "sustained_bytes_per_dirty_account": sustained.map(|sustained| round3(sustained.bytes_per_dirty_account())),
            "sustained_ratio_vs_row_bytes": sustained.filter(|_| self.row_bytes() > 0.0).map(|sustained| round3(sustained.bytes_per_dirty_account() / self.row_bytes())),
            "sustained_total_bytes_per_dirty_account": sustained.map(|sustained| round3(sustained.total_bytes_per_dirty_account())),
            "sustained_store_logical_bytes_per_dirty_account": sustained.map(|sustained| round3(sustained.store_bytes_per_dirty_account())),
            "sustained_rounds": sustained.map(|sustained| sustained.rounds),
            "sustained_dirty": sustained.map(|sustained| sustained.dirty),
            "sustained_flush_ms_per_round": sustained.map(|sustained| round(sustained.flush_time.as_secs_f64() * 1e3 / f64::from(sustained.rounds.max(1)), 2)),
            "sustained_s": sustained.map(|sustained| round(sustained.elapsed.as_secs_f64(), 3)),
            "sustained_quiet": sustained.map(|sustained| sustained.quiet),
            "sustained_dir_growth_bytes": sustained.map(|sustained| sustained.dir_growth_bytes),
        });
        if let (Value::Object(out), Value::Object(series)) = (&mut out, series) {
            out.extend(series);
        }
        out
    }
}

fn round3(value: f64) -> f64 {
    round(value, 3)
}

/// `table rows×bytes/row, …` of what a round handed the store.
fn tables_text(metered: &Metered) -> String {
    metered
        .tables
        .iter()
        .map(|(table, bytes)| {
            format!(
                "{table} {}×{:.0}",
                thousands(bytes.rows),
                bytes.bytes as f64 / bytes.rows.max(1) as f64
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs the scenario; checks every round's flush wrote each dirty account once and the
/// balances moved by exactly one credit per event, never a time or a byte count.
pub fn run(args: &FlushArgs) -> anyhow::Result<FlushReport> {
    let names = harness::names('c', args.accounts);
    let mut levels: Vec<u32> = args
        .dirty
        .iter()
        .copied()
        .filter(|&dirty| dirty >= 1 && dirty <= args.accounts)
        .collect();
    levels.sort_unstable();
    levels.dedup();
    ensure!(
        !levels.is_empty(),
        "no --dirty level between 1 and --accounts {}",
        args.accounts
    );
    let quiet = Duration::from_millis(args.quiet_ms);
    let quiet_max = Duration::from_millis(args.quiet_max_ms);
    let data = TempDir::new(args.data_dir.as_deref(), "flush")?;
    let meter = Arc::new(Mutex::new(Metered::default()));
    let metered = || meter.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let server = Server::start_with(data.path(), args.shards, EngineConfig::default(), |inner| {
        Arc::new(KvAccountStore::new(MeteredStore {
            inner,
            meter: Arc::clone(&meter),
        })) as Arc<dyn AccountStore>
    })?;
    let http = Http::new(server.addr)?;
    harness::put_catalog(&http)?;
    let setup = harness::create_accounts(
        &server,
        &names,
        AccountSetup {
            grant_whole: GRANT,
            auto_recharge: false,
        },
    )?;
    let engine = server.engine().clone();

    // The first flush: every account in a checkpoint.
    let first_flush = harness::wait_flushed(&engine, u64::from(args.accounts), FLUSH_DEADLINE)?;
    let first_store = metered();
    let settle = wait_quiet(quiet, quiet_max)?;

    // Idle.
    let versions_before = checkpoint_versions(&engine)?;
    let store_before = metered();
    let dir_before = data.size_bytes();
    let io_before = write_bytes()?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(args.idle_ms));
    let idle_disk_bytes = write_bytes()? - io_before;
    let idle = started.elapsed();
    let idle_dir_growth_bytes = signed(data.size_bytes()) - signed(dir_before);
    let idle_store = metered().since(&store_before);
    let idle_flushes = moved(&versions_before, &checkpoint_versions(&engine)?);

    // Dirty rounds.
    let mut rounds = Vec::with_capacity(levels.len());
    let mut events = 0_u64;
    for (round_index, &dirty) in levels.iter().enumerate() {
        rounds.push(dirty_round(
            &engine,
            &data,
            &names[..dirty as usize],
            round_index,
            &metered,
            Some((quiet, quiet_max)),
        )?);
        events += u64::from(dirty);
    }

    // Sustained: rounds back to back, each on the next window of accounts.
    let sustained = if args.sustained_rounds == 0 {
        None
    } else {
        let dirty = args.sustained_dirty.min(args.accounts);
        let mut series = Sustained {
            rounds: args.sustained_rounds,
            dirty,
            ..Sustained::default()
        };
        let dir_before = data.size_bytes();
        let io_before = write_bytes()?;
        let started = Instant::now();
        for round in 0..args.sustained_rounds {
            let window: Vec<String> = (0..u64::from(dirty))
                .map(|index| {
                    let at =
                        (u64::from(round) * u64::from(dirty) + index) % u64::from(args.accounts);
                    names[at as usize].clone()
                })
                .collect();
            let done = dirty_round(
                &engine,
                &data,
                &window,
                levels.len() + round as usize,
                &metered,
                None,
            )?;
            series.log_disk_bytes += done.log_disk_bytes;
            series.flush_disk_bytes += done.flush_disk_bytes;
            series.store_bytes += done.store.bytes();
            series.flush_time += done.flush_time();
            events += u64::from(dirty);
        }
        let (_, _, quiet) = wait_quiet(quiet, quiet_max)?;
        series.quiet = quiet;
        series.elapsed = started.elapsed();
        series.rest_disk_bytes = (write_bytes()? - io_before)
            .saturating_sub(series.log_disk_bytes + series.flush_disk_bytes);
        series.dir_growth_bytes = signed(data.size_bytes()) - signed(dir_before);
        Some(series)
    };

    // The balances moved by exactly one credit per event, and the flushed rows agree.
    let mut moved = 0_u64;
    for name in &names {
        let micros = engine
            .balance(name, CREDIT_TYPE)
            .with_context(|| format!("no balance for {name}"))?
            .micros();
        moved +=
            u64::try_from(GRANT * MICROS_PER_UNIT - micros).context("balance above the grant")?;
    }
    ensure!(
        moved == events * MICROS_PER_UNIT.unsigned_abs(),
        "balances moved {moved} µcredits, the events sum to {events} credits"
    );
    let first = &names[0];
    let balance = engine
        .balance(first, CREDIT_TYPE)
        .map(|credits| credits.micros());
    let rows = engine.accounts().balances(first)?;
    ensure!(
        rows.first().map(|row| row.balance_micros) == balance,
        "{first}: the engine has {balance:?} µcredits, the balances table {rows:?}"
    );
    drop(engine);
    drop(http);
    server.stop()?;
    let data_bytes = data.size_bytes();

    Ok(FlushReport {
        args: args.clone(),
        setup,
        first_flush,
        first_store,
        settle,
        idle,
        idle_disk_bytes,
        idle_dir_growth_bytes,
        idle_store,
        idle_flushes,
        rounds,
        sustained,
        data_bytes,
    })
}

/// One usage event to each of `names`, one log record per shard, then the wait for every
/// shard's checkpoint to move and, with `settle` (quiet, at most), for the disk to get quiet.
fn dirty_round(
    engine: &Engine,
    data: &TempDir,
    names: &[String],
    round_index: usize,
    metered: &dyn Fn() -> Metered,
    settle: Option<(Duration, Duration)>,
) -> anyhow::Result<DirtyRound> {
    let dirty = u32::try_from(names.len()).context("dirty accounts beyond u32")?;
    let mut per_shard: Vec<Vec<Input>> = vec![Vec::new(); engine.shards() as usize];
    for (index, name) in names.iter().enumerate() {
        per_shard[engine.shard_of(name) as usize].push(testkit::usage(
            name,
            &format!("f{round_index}-{index:07}"),
            FEATURE,
            Quantity::from_micros(MICROS_PER_UNIT),
        ));
    }
    // The engine encodes each record so; its size is what the log holds.
    let log_record_bytes = per_shard
        .iter()
        .filter(|inputs| !inputs.is_empty())
        .map(|inputs| {
            postcard::to_stdvec(&LogBatch {
                at: now(),
                inputs: inputs.clone(),
                sources: None,
            })
            .map(|record| record.len() as u64)
        })
        .sum::<Result<u64, _>>()?;
    let touched: Vec<bool> = per_shard.iter().map(|inputs| !inputs.is_empty()).collect();

    let versions_before = checkpoint_versions(engine)?;
    let store_before = metered();
    let engine_before = flush_seconds();
    let dir_before = data.size_bytes();
    let io_start = write_bytes()?;
    let started = Instant::now();
    for (shard, inputs) in (0_u32..).zip(per_shard) {
        if !inputs.is_empty() {
            engine
                .append(shard, inputs)
                .with_context(|| format!("appending the usage of shard {shard}"))?;
        }
    }
    let log_append = started.elapsed();
    let io_appended = write_bytes()?;
    let appended = Instant::now();
    // Landed: every touched shard's checkpoint moved and every dirty account's balance row
    // was handed the store.
    loop {
        let versions = checkpoint_versions(engine)?;
        let all_moved = versions
            .iter()
            .zip(&versions_before)
            .zip(&touched)
            .all(|((now, before), touched)| !touched || now > before);
        let balances = metered().since(&store_before).rows_of(BALANCES);
        if all_moved && balances >= u64::from(dirty) {
            break;
        }
        ensure!(
            appended.elapsed() < FLUSH_DEADLINE,
            "the flush of {dirty} dirty accounts did not land in {FLUSH_DEADLINE:?} \
             ({balances} balance rows written; failures {:?})",
            engine.failures()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let flush_wall = appended.elapsed();
    let io_flushed = write_bytes()?;
    let store = metered().since(&store_before);
    let flushes = moved(&versions_before, &checkpoint_versions(engine)?);
    // A worker records its flush's duration just after the write returns: wait for every
    // flush of the round to be counted (or give up and report the wall time).
    let flush_engine = engine_before.and_then(|(sum_before, count_before)| {
        let waited = Instant::now();
        loop {
            let (sum, count) = flush_seconds()?;
            if count >= count_before + flushes {
                return Some(Duration::from_secs_f64((sum - sum_before).max(0.0)));
            }
            if waited.elapsed() > Duration::from_secs(2) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    let (deferred_wait, _, deferred_quiet) = match settle {
        Some((quiet, quiet_max)) => wait_quiet(quiet, quiet_max)?,
        None => (Duration::ZERO, 0, false),
    };
    let io_end = write_bytes()?;
    ensure!(
        store.rows_of(BALANCES) == u64::from(dirty),
        "expected {dirty} balance rows, the flushes wrote {}",
        store.rows_of(BALANCES)
    );
    Ok(DirtyRound {
        dirty,
        flushes,
        log_append,
        log_record_bytes,
        log_disk_bytes: io_appended - io_start,
        flush_wall,
        flush_disk_bytes: io_flushed - io_appended,
        flush_engine,
        store,
        deferred_disk_bytes: io_end - io_flushed,
        deferred_wait,
        deferred_quiet,
        dir_growth_bytes: signed(data.size_bytes()) - signed(dir_before),
    })
}

/// Σ of how far each shard's checkpoint version moved.
fn moved(before: &[u64], after: &[u64]) -> u64 {
    after
        .iter()
        .zip(before)
        .map(|(after, before)| after.saturating_sub(*before))
        .sum()
}

fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_flush_run_writes_each_dirty_account_once_and_nothing_when_idle() {
        let report = run(&FlushArgs {
            accounts: 3_000,
            idle_ms: 1_500,
            dirty: vec![1_000, 2_000, 1_000_000],
            sustained_rounds: 3,
            sustained_dirty: 1_200,
            shards: 2,
            quiet_ms: 100,
            quiet_max_ms: 1_000,
            data_dir: None,
        })
        .expect("flush scenario runs");
        // Other tests write to disk in this process meanwhile: only the store's own
        // counts are checked, never the process's bytes.
        assert_eq!(
            report.idle_store.writes, 0,
            "an idle engine flushes nothing"
        );
        assert_eq!(report.idle_flushes, 0);
        let dirty: Vec<u32> = report.rounds.iter().map(|round| round.dirty).collect();
        assert_eq!(dirty, [1_000, 2_000], "levels above --accounts are skipped");
        for round in &report.rounds {
            assert_eq!(round.store.rows_of(BALANCES), u64::from(round.dirty));
            assert_eq!(round.store.rows_of(ACCOUNT_STATE), u64::from(round.dirty));
            assert_eq!(round.store.rows_of(LEDGER_ENTRIES), u64::from(round.dirty));
            assert_eq!(round.flushes, 2, "one flush per shard");
        }
        assert!(
            report.row_bytes() > 50.0,
            "row bytes {}",
            report.row_bytes()
        );
        let sustained = report.sustained.as_ref().expect("a sustained series");
        assert_eq!((sustained.rounds, sustained.dirty), (3, 1_200));
        assert!(sustained.store_bytes > 3 * 1_200 * 200);
        assert!(report.table().render().contains("dirty"));
        let json = report.json();
        for key in [
            "scenario",
            "idle_write_bytes_per_s",
            "bytes_per_dirty_account",
            "bytes_per_dirty_account_1k",
            "bytes_per_dirty_account_100k",
            "bytes_per_dirty_account_1m",
            "row_bytes",
            "ratio_vs_row_bytes",
            "flush_100k_ms",
            "flush_accounts_per_s",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "flush");
        assert!(json["bytes_per_dirty_account_1k"].is_number());
        assert!(json["bytes_per_dirty_account_100k"].is_null());
    }
}
