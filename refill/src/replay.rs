//! `refill replay` on the embedded default: rebuilds every shard in memory from genesis out
//! of the log `refill serve --data DIR` wrote, and with `--verify` proves that the store's
//! balances, checkpoint state rows, ledger entries and recharge attempts are what the log
//! gives (invariant 10). It never appends to the log, never writes a row, never flushes and
//! never calls a gateway: the rebuilt shards live in memory only and their effects are
//! counted, not carried out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use refill_ingest::engine::{EngineConfig, LogBatch};
use refill_ingest::rows::{self, BatchOffsets};
use refill_ledger::{AccountHandle, Effects, Shard, TimestampMs};
use refill_store::embedded::Embedded;
use refill_store::kv_accounts::BALANCES;
use refill_store::{
    AccountStore, AttemptRow, BalanceRow, CheckpointRow, KvAccountStore, LedgerRow, Log, ShardRows,
    Store, StoreError,
};
use serde_json::{Value, json};

/// Differences listed in full; the rest are only counted.
pub const DIFFERENCES_SHOWN_MAX: usize = 100;

/// Rows read from the store per call (ledger entries, attempts, balance keys).
const STORE_PAGE_ROWS_MAX: usize = 4_096;

/// How often the progress bar's events/s is recomputed.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// Exit code when the store and the log agree (or no `--verify`).
pub const EXIT_EQUAL: i32 = 0;
/// Exit code when `--verify` found differences.
pub const EXIT_DIFFERENT: i32 = 1;
/// Exit code when the replay could not run: bad input or an unreadable data folder.
pub const EXIT_CANNOT_RUN: i32 = 2;

const EXAMPLES: &str = "\
Examples:
  refill replay --data ./refill-data
      rebuild every shard from the log and print what it applied, per shard and in total
  refill replay --data ./refill-data --verify
      also compare balances, checkpoint state, ledger entries and recharge attempts with the
      store: exit 0 when all equal, 1 with the differences listed, 2 when it cannot run
  refill replay --data ./refill-data --verify --json | tail -n 1 | jq .differences
      the same, as one JSON object on the last line of stdout

Stop `refill serve` first: the embedded store is locked by the process that holds it.";

/// Arguments of `refill replay`.
#[derive(clap::Args, Clone, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ReplayArgs {
    /// Folder of the embedded log and store, as given to `refill serve --data` (never
    /// written to). Example: `--data ./refill-data`.
    #[arg(long, env = "REFILL_DATA", default_value = "./refill-data")]
    pub data: PathBuf,
    /// Compare what the log gives with what the store holds: every account's balance row,
    /// each shard's checkpoint (account and customer state, byte for byte), every ledger
    /// entry and recharge attempt up to the checkpoint. Example: `--verify`.
    #[arg(long)]
    pub verify: bool,
    /// Print the result as one JSON object on the last line of stdout instead of a table.
    /// Example: `--json`.
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bar (it is drawn on stderr, and only when stderr is a terminal).
    /// Example: `--quiet`.
    #[arg(long)]
    pub quiet: bool,
}

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// `--data` names nothing, or not a folder.
    #[error("no data folder at {} (expected the --data folder of `refill serve`)", .0.display())]
    NoSuchFolder(PathBuf),
    /// `--data` is a folder, but not one `refill serve` made.
    #[error("{} is not a Refill data folder: {why}", path.display())]
    NotADataFolder {
        /// The folder.
        path: PathBuf,
        /// What is missing or wrong.
        why: String,
    },
    /// The log or the store failed while reading.
    #[error("cannot read the data folder: {0}")]
    Store(#[from] StoreError),
    /// A log record that is not a `LogBatch`: the log is corrupt (or of another version).
    #[error("log record {partition}:{offset} does not decode: {why}")]
    CorruptRecord {
        /// Its partition (= shard).
        partition: u32,
        /// Its offset.
        offset: u64,
        /// The decoder's complaint.
        why: String,
    },
}

/// What one shard's rebuild applied, from its `Effects` counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSummary {
    /// The shard (= log partition).
    pub shard: u32,
    /// Log records applied (one batch each).
    pub records: u64,
    /// Usage events applied.
    pub events_applied: u64,
    /// Usage events refused as duplicates.
    pub events_duplicate: u64,
    /// Inputs rejected (bad input, unknown feature, ...).
    pub inputs_rejected: u64,
    /// Recharge commands issued.
    pub recharge_commands: u64,
    /// Recharge attempts recorded (pending, succeeded, failed, skipped).
    pub recharge_attempts: u64,
    /// Ledger entries made.
    pub ledger_entries: u64,
    /// Accounts at the end of the log.
    pub accounts: u64,
    /// Customers at the end of the log.
    pub customers: u64,
    /// The log offset after the store's checkpoint of this shard, if it has one.
    pub checkpoint_log_next: Option<u64>,
}

impl ShardSummary {
    fn add(&mut self, other: &ShardSummary) {
        self.records += other.records;
        self.events_applied += other.events_applied;
        self.events_duplicate += other.events_duplicate;
        self.inputs_rejected += other.inputs_rejected;
        self.recharge_commands += other.recharge_commands;
        self.recharge_attempts += other.recharge_attempts;
        self.ledger_entries += other.ledger_entries;
        self.accounts += other.accounts;
        self.customers += other.customers;
    }

    fn count(&mut self, effects: &Effects) {
        self.records += 1;
        self.events_applied += effects.events_applied;
        self.events_duplicate += effects.events_duplicate;
        self.inputs_rejected += effects.inputs_rejected;
        self.recharge_commands += effects.commands.len() as u64;
        self.recharge_attempts += effects.attempts.len() as u64;
        self.ledger_entries += effects.entries.len() as u64;
    }
}

/// One place where the store and the log disagree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The customer, or `shard P` for a row no customer can be named for.
    pub customer: String,
    /// The credit type, empty for customer-wide rows.
    pub credit_type: String,
    /// What differs (`balance`, `ledger entry 3`, `account state`, ...).
    pub what: String,
    /// What the store holds (`nothing` when it has no such row).
    pub store: String,
    /// What the log gives (`nothing` when it never made such a row).
    pub log: String,
}

/// The differences `--verify` found: the first [`DIFFERENCES_SHOWN_MAX`] and a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Differences {
    /// The first ones, in the order found (shard, then account order).
    pub shown: Vec<Difference>,
    /// All of them.
    pub count: u64,
}

impl Differences {
    fn push(&mut self, difference: Difference) {
        self.count += 1;
        if self.shown.len() < DIFFERENCES_SHOWN_MAX {
            self.shown.push(difference);
        }
    }
}

/// The result of a replay.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per shard.
    pub shards: Vec<ShardSummary>,
    /// All shards together (`checkpoint_log_next` unused).
    pub total: ShardSummary,
    /// With `--verify`: what differs.
    pub differences: Option<Differences>,
    /// Wall time of the rebuild and verify.
    pub elapsed: Duration,
}

impl Report {
    /// Usage events applied per second of wall time.
    pub fn events_per_second(&self) -> u64 {
        per_second(self.total.events_applied, self.elapsed)
    }

    /// The process exit code this report calls for.
    pub fn exit_code(&self) -> i32 {
        match &self.differences {
            Some(differences) if differences.count > 0 => EXIT_DIFFERENT,
            _ => EXIT_EQUAL,
        }
    }
}

/// Runs `refill replay` and returns the process exit code; prints the table (or the JSON
/// line) on stdout and errors on stderr.
pub fn main(args: &ReplayArgs) -> i32 {
    match replay(args) {
        Ok(report) => {
            if args.json {
                println!("{}", report_json(&report));
            } else {
                print!("{}", report_table(&report));
            }
            report.exit_code()
        }
        Err(error) => {
            eprintln!("refill replay: {error}");
            EXIT_CANNOT_RUN
        }
    }
}

/// Rebuilds every shard of the data folder (and verifies it against the store when asked).
pub fn replay(args: &ReplayArgs) -> Result<Report, ReplayError> {
    let started = Instant::now();
    let embedded = Arc::new(open_data(&args.data)?);
    let accounts = KvAccountStore::new(Arc::clone(&embedded));
    let partitions = embedded.partitions();
    let ends = (0..partitions)
        .map(|partition| embedded.end_offset(partition))
        .collect::<Result<Vec<u64>, _>>()?;
    let progress = Progress::new(ends.iter().sum(), args.quiet);
    let mut report = Report::default();
    let mut rebuilt = Rebuilt::default();
    let mut differences = Differences::default();
    for (partition, &end) in (0..partitions).zip(&ends) {
        let rows = accounts.load_shard(partition)?;
        let summary = rebuild_shard(
            &embedded,
            partition,
            end,
            &rows,
            args.verify.then_some((&mut rebuilt, &mut differences)),
            &progress,
        )?;
        report.total.add(&summary);
        report.shards.push(summary);
    }
    progress.finish();
    if args.verify {
        verify_accounts(&embedded, &accounts, &rebuilt, &mut differences)?;
        report.differences = Some(differences);
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Opens the embedded store of `data` without creating anything: the folder and its fjall
/// database must exist already (`Embedded::open` would make both), and the partition count
/// is the one stored at creation.
fn open_data(data: &Path) -> Result<Embedded, ReplayError> {
    if !data.is_dir() {
        return Err(ReplayError::NoSuchFolder(data.to_owned()));
    }
    let db = data.join("db");
    // fjall's own marker: without it `Embedded::open` would create a new database there.
    if !db.join("version").is_file() {
        return Err(ReplayError::NotADataFolder {
            path: data.to_owned(),
            why: format!("expected an embedded database in {}", db.display()),
        });
    }
    let not_ours = |error: StoreError| ReplayError::NotADataFolder {
        path: data.to_owned(),
        why: error.to_string(),
    };
    // The partition count is in the database's meta; the only way to it through the port is
    // to ask for some count and read the stored one from the refusal.
    match Embedded::open(&db, 1) {
        Ok(embedded) => Ok(embedded),
        Err(StoreError::PartitionsChanged { stored, .. }) => {
            Embedded::open(&db, stored).map_err(not_ours)
        }
        Err(error) => Err(not_ours(error)),
    }
}

/// What the rebuild gives at each shard's checkpoint, keyed by (customer, credit type), for
/// the per-account comparisons once every shard is rebuilt.
#[derive(Default)]
struct Rebuilt {
    balances: BTreeMap<(String, String), BalanceRow>,
    entries: BTreeMap<(String, String), Vec<LedgerRow>>,
    /// Per account, by sequence: the store keys attempts by `seq`, so a pending attempt's
    /// row is overwritten by its outcome's and only the last one per `seq` is kept.
    attempts: BTreeMap<(String, String), BTreeMap<u64, AttemptRow>>,
}

/// Rebuilds one shard from genesis, as the engine's worker does for a shard without a
/// checkpoint, over the records `0..end`. With `verify`, compares the shard at the store's
/// checkpoint with the checkpoint's rows and keeps its balances, entries and attempts.
fn rebuild_shard(
    log: &Embedded,
    partition: u32,
    end: u64,
    rows: &ShardRows,
    mut verify: Option<(&mut Rebuilt, &mut Differences)>,
    progress: &Progress,
) -> Result<ShardSummary, ReplayError> {
    let config = EngineConfig::default();
    let checkpoint = rows.checkpoint.as_ref();
    let mut summary = ShardSummary {
        shard: partition,
        checkpoint_log_next: checkpoint.map(|checkpoint| checkpoint.log_next),
        ..ShardSummary::default()
    };
    if let (Some(checkpoint), Some((_, differences))) = (checkpoint, verify.as_mut())
        && checkpoint.log_next > end
    {
        differences.push(shard_difference(
            partition,
            "checkpoint",
            format!("a checkpoint at log offset {}", checkpoint.log_next),
            format!("a log that ends at offset {end}"),
        ));
    }
    // From genesis, record n is batch n + 1.
    let offsets = BatchOffsets {
        partition,
        offset_minus_batch: -1,
    };
    let mut shard: Option<Shard> = None;
    let mut effects = Effects::default();
    let mut next = 0;
    while next < end {
        let records = log.read(partition, next, config.read_batch_max)?;
        if records.is_empty() {
            break;
        }
        for record in records.iter().take_while(|record| record.offset < end) {
            let batch: LogBatch = postcard::from_bytes(&record.bytes).map_err(|error| {
                ReplayError::CorruptRecord {
                    partition,
                    offset: record.offset,
                    why: error.to_string(),
                }
            })?;
            // The live worker starts a shard without a checkpoint at its wall clock; the
            // log does not keep that instant, and the first record's time is the nearest
            // one it holds (the README's replay section says what that can change).
            let shard = shard.get_or_insert_with(|| Shard::new(config.shard, batch.at));
            shard.apply_into(batch.at, &batch.inputs, &mut effects);
            summary.count(&effects);
            let before_checkpoint =
                checkpoint.is_some_and(|checkpoint| record.offset < checkpoint.log_next);
            if let Some((rebuilt, differences)) = verify.as_mut() {
                if before_checkpoint {
                    keep_rows(shard, &effects, offsets, rebuilt);
                }
                if let Some(checkpoint) = checkpoint
                    && record.offset + 1 == checkpoint.log_next
                {
                    compare_checkpoint(shard, partition, checkpoint, rows, rebuilt, differences);
                }
            }
            next = record.offset + 1;
            progress.advance(1, effects.events_applied);
        }
    }
    if let Some(shard) = &shard {
        summary.accounts = shard.account_count() as u64;
        summary.customers = shard.customer_count() as u64;
    }
    if let (Some(checkpoint), Some((_, differences))) = (checkpoint, verify)
        && checkpoint.log_next == 0
    {
        differences.push(shard_difference(
            partition,
            "checkpoint",
            "a checkpoint at log offset 0".to_owned(),
            "every checkpoint after a flush record".to_owned(),
        ));
    }
    Ok(summary)
}

/// Keeps the entry and attempt rows of one batch, converted as a flush converts them.
fn keep_rows(shard: &Shard, effects: &Effects, offsets: BatchOffsets, rebuilt: &mut Rebuilt) {
    for entry in &effects.entries {
        let row = rows::entry_row(shard, entry, offsets);
        rebuilt
            .entries
            .entry((row.customer_id.clone(), row.credit_type.clone()))
            .or_default()
            .push(row);
    }
    for attempt in &effects.attempts {
        let row = rows::attempt_row(attempt);
        rebuilt
            .attempts
            .entry((row.customer_id.clone(), row.credit_type.clone()))
            .or_default()
            .insert(row.seq, row);
    }
}

/// Compares the shard, rebuilt up to its checkpoint, with the checkpoint's rows (byte for
/// byte: the encodings a restore reads), and keeps its balances for the account pass.
fn compare_checkpoint(
    shard: &Shard,
    partition: u32,
    checkpoint: &CheckpointRow,
    rows: &ShardRows,
    rebuilt: &mut Rebuilt,
    differences: &mut Differences,
) {
    let accounts = shard.account_count().max(rows.accounts.len());
    for index in 0..accounts {
        let stored = rows.accounts.get(index).map(|(_, state)| state.as_slice());
        let handle = AccountHandle(u32::try_from(index).expect("handles are u32"));
        let (customer, credit_type, made) = if index < shard.account_count() {
            (
                shard.customer_of(handle).id.to_string(),
                shard.credit_type_of(handle).to_string(),
                Some(shard.account_state(handle)),
            )
        } else {
            (
                format!("shard {partition}"),
                format!("handle {index}"),
                None,
            )
        };
        if stored != made.as_deref() {
            differences.push(Difference {
                customer,
                credit_type,
                what: "account state at the checkpoint".to_owned(),
                store: state_text(stored),
                log: state_text(made.as_deref()),
            });
        }
    }
    let customers = shard.customer_count().max(rows.customers.len());
    for index in 0..customers {
        let stored = rows.customers.get(index).map(|(_, state)| state.as_slice());
        let index = u32::try_from(index).expect("customer indexes are u32");
        let (customer, made) = if (index as usize) < shard.customer_count() {
            (
                shard.customer_at(index).id.to_string(),
                Some(shard.customer_state(index)),
            )
        } else {
            (format!("shard {partition} customer {index}"), None)
        };
        if stored != made.as_deref() {
            differences.push(Difference {
                customer,
                credit_type: String::new(),
                what: "customer state at the checkpoint".to_owned(),
                store: state_text(stored),
                log: state_text(made.as_deref()),
            });
        }
    }
    for (index, _) in shard.accounts() {
        let row = rows::balance_row(
            shard,
            index,
            TimestampMs(checkpoint.as_of_ms),
            checkpoint.version,
            partition,
        );
        rebuilt
            .balances
            .insert((row.customer_id.clone(), row.credit_type.clone()), row);
    }
}

/// Compares every account the store or the rebuild knows: its balance row, its ledger
/// entries and its recharge attempts up to the checkpoint.
fn verify_accounts(
    store: &Embedded,
    accounts: &KvAccountStore<Arc<Embedded>>,
    rebuilt: &Rebuilt,
    differences: &mut Differences,
) -> Result<(), ReplayError> {
    let mut stored = BTreeMap::new();
    for customer in stored_customers(store)? {
        for row in accounts.balances(&customer)? {
            stored.insert((row.customer_id.clone(), row.credit_type.clone()), row);
        }
    }
    let keys: BTreeSet<&(String, String)> = stored
        .keys()
        .chain(rebuilt.balances.keys())
        .chain(rebuilt.entries.keys())
        .collect();
    for key in keys {
        let (customer, credit_type) = key;
        let store_balance = stored.get(key).map(balance_text);
        let log_balance = rebuilt.balances.get(key).map(balance_text);
        if store_balance != log_balance {
            differences.push(Difference {
                customer: customer.clone(),
                credit_type: credit_type.clone(),
                what: "balance".to_owned(),
                store: store_balance.unwrap_or_else(|| "nothing".to_owned()),
                log: log_balance.unwrap_or_else(|| "nothing (the log never made it)".to_owned()),
            });
        }
        let store_entries = read_all(
            |from| accounts.ledger(customer, credit_type, from, STORE_PAGE_ROWS_MAX),
            |row| row.seq,
        )?;
        compare_rows(
            key,
            "ledger entry",
            &store_entries,
            rebuilt.entries.get(key).map_or(&[], Vec::as_slice),
            |row| row.seq,
            entry_text,
            differences,
        );
        let store_attempts = read_all(
            |from| accounts.attempts(customer, credit_type, from, STORE_PAGE_ROWS_MAX),
            |row| row.seq,
        )?;
        compare_rows(
            key,
            "recharge attempt",
            &store_attempts,
            &rebuilt
                .attempts
                .get(key)
                .map(|attempts| attempts.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
            |row| row.seq,
            attempt_text,
            differences,
        );
    }
    Ok(())
}

/// Every customer with a row in the store's `balances` table (keys `customer 0x00
/// credit_type 0x00`), so an account the log never made is found too.
fn stored_customers(store: &Embedded) -> Result<BTreeSet<String>, ReplayError> {
    let mut customers = BTreeSet::new();
    let mut start = Vec::new();
    loop {
        let page = store.scan(BALANCES, &[], &start, STORE_PAGE_ROWS_MAX)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        start.clone_from(last);
        start.push(0);
        for (key, _) in &page {
            let customer = key.split(|&byte| byte == 0).next().unwrap_or_default();
            customers.insert(String::from_utf8_lossy(customer).into_owned());
        }
        if page.len() < STORE_PAGE_ROWS_MAX {
            break;
        }
    }
    Ok(customers)
}

/// Reads every row of a paged `(from_seq, limit)` query.
fn read_all<R>(
    mut page: impl FnMut(u64) -> Result<Vec<R>, StoreError>,
    seq: impl Fn(&R) -> u64,
) -> Result<Vec<R>, ReplayError> {
    let mut all = Vec::new();
    let mut from = 0;
    loop {
        let rows = page(from)?;
        let full = rows.len() >= STORE_PAGE_ROWS_MAX;
        if let Some(last) = rows.last() {
            from = seq(last) + 1;
        }
        all.extend(rows);
        if !full {
            return Ok(all);
        }
    }
}

/// Compares two sequences of one account's rows by position, one difference per row that
/// is missing on either side or differs.
fn compare_rows<R: PartialEq>(
    (customer, credit_type): &(String, String),
    what: &str,
    store: &[R],
    log: &[R],
    seq: impl Fn(&R) -> u64,
    text: impl Fn(&R) -> String,
    differences: &mut Differences,
) {
    for index in 0..store.len().max(log.len()) {
        let (stored, made) = (store.get(index), log.get(index));
        if stored == made {
            continue;
        }
        let seq = stored.or(made).map_or(0, &seq);
        differences.push(Difference {
            customer: customer.clone(),
            credit_type: credit_type.clone(),
            what: format!("{what} {seq}"),
            store: stored.map_or_else(|| "nothing".to_owned(), &text),
            log: made.map_or_else(|| "nothing".to_owned(), &text),
        });
    }
}

fn shard_difference(partition: u32, what: &str, store: String, log: String) -> Difference {
    Difference {
        customer: format!("shard {partition}"),
        credit_type: String::new(),
        what: what.to_owned(),
        store,
        log,
    }
}

/// A state row as a short text: its size and a hash, enough to tell two apart in a table.
fn state_text(state: Option<&[u8]>) -> String {
    match state {
        None => "nothing".to_owned(),
        Some(bytes) => format!("{} bytes, fnv {:016x}", bytes.len(), fnv1a(bytes)),
    }
}

/// FNV-1a: a stable hash (std's hashers are seeded per process) for naming a byte string.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn balance_text(row: &BalanceRow) -> String {
    let mut text = format!(
        "balance {} overdraft {}",
        rows::credits_text(row.balance_micros),
        rows::credits_text(row.overdraft_micros)
    );
    if let Some(status) = &row.auto_recharge_status {
        let _ = write!(text, " auto-recharge {status}");
    }
    if let Some(reason) = &row.paused_reason {
        let _ = write!(text, " ({reason})");
    }
    text
}

fn entry_text(row: &LedgerRow) -> String {
    format!(
        "{} {} → {} at {} ms ({})",
        row.kind,
        rows::credits_text(row.amount_micros),
        rows::credits_text(row.balance_after_micros),
        row.at_ms,
        row.reference
    )
}

fn attempt_text(row: &AttemptRow) -> String {
    let mut text = format!(
        "{} {} {} credits at {} ms",
        row.command_id,
        row.status,
        rows::credits_text(row.credits_micros),
        row.at_ms
    );
    if let (Some(cost), Some(currency)) = (row.cost_minor_units, &row.currency) {
        let _ = write!(text, " for {cost} {currency} minor units");
    }
    if let Some(reason) = &row.reason {
        let _ = write!(text, " ({reason})");
    }
    text
}

/// Whole events per second, in integers (money code keeps floats out; a rate needs no
/// fraction).
fn per_second(count: u64, elapsed: Duration) -> u64 {
    let micros = elapsed.as_micros().max(1);
    u64::try_from(u128::from(count) * 1_000_000 / micros).unwrap_or(u64::MAX)
}

/// The progress bar on stderr: records done of the log's total, and events/s.
struct Progress {
    bar: indicatif::ProgressBar,
    started: Instant,
    events: std::cell::Cell<u64>,
    last_tick: std::cell::Cell<Instant>,
}

impl Progress {
    fn new(records: u64, quiet: bool) -> Self {
        let bar = if quiet {
            indicatif::ProgressBar::hidden()
        } else {
            // indicatif draws nothing when stderr is not a terminal (CI, tests, pipes).
            indicatif::ProgressBar::new(records)
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "replay {bar:32} {pos}/{len} records  {msg}  eta {eta}",
        ) {
            bar.set_style(style);
        }
        let started = Instant::now();
        Self {
            bar,
            started,
            events: std::cell::Cell::new(0),
            last_tick: std::cell::Cell::new(started),
        }
    }

    fn advance(&self, records: u64, events: u64) {
        self.bar.inc(records);
        self.events.set(self.events.get() + events);
        let now = Instant::now();
        if now.duration_since(self.last_tick.get()) >= PROGRESS_TICK {
            self.last_tick.set(now);
            self.bar.set_message(format!(
                "{} events/s",
                per_second(self.events.get(), now.duration_since(self.started))
            ));
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The readable table printed at the end.
pub fn report_table(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>9} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
        "shard",
        "records",
        "events",
        "duplicate",
        "rejected",
        "recharges",
        "attempts",
        "entries",
        "accounts",
        "checkpoint"
    );
    let line = |out: &mut String, name: &str, summary: &ShardSummary| {
        let _ = writeln!(
            out,
            "{:<6} {:>9} {:>12} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>11}",
            name,
            summary.records,
            summary.events_applied,
            summary.events_duplicate,
            summary.inputs_rejected,
            summary.recharge_commands,
            summary.recharge_attempts,
            summary.ledger_entries,
            summary.accounts,
            summary
                .checkpoint_log_next
                .map_or_else(|| "-".to_owned(), |next| next.to_string()),
        );
    };
    for summary in &report.shards {
        line(&mut out, &summary.shard.to_string(), summary);
    }
    line(
        &mut out,
        "total",
        &ShardSummary {
            checkpoint_log_next: None,
            ..report.total.clone()
        },
    );
    let _ = writeln!(
        out,
        "{} events in {} ms ({} events/s)",
        report.total.events_applied,
        report.elapsed.as_millis(),
        report.events_per_second()
    );
    match &report.differences {
        None => {}
        Some(differences) if differences.count == 0 => {
            let _ = writeln!(out, "verify: the store holds exactly what the log gives");
        }
        Some(differences) => {
            let _ = writeln!(
                out,
                "verify: {} differences{}",
                differences.count,
                if differences.count > differences.shown.len() as u64 {
                    format!(" (the first {} below)", differences.shown.len())
                } else {
                    String::new()
                }
            );
            for difference in &differences.shown {
                let _ = writeln!(
                    out,
                    "  {} {} {}: store has {}; log gives {}",
                    difference.customer,
                    difference.credit_type,
                    difference.what,
                    difference.store,
                    difference.log
                );
            }
        }
    }
    out
}

/// The report as one JSON object (`--json`).
pub fn report_json(report: &Report) -> Value {
    let summary = |summary: &ShardSummary| {
        json!({
            "records": summary.records,
            "events_applied": summary.events_applied,
            "events_duplicate": summary.events_duplicate,
            "inputs_rejected": summary.inputs_rejected,
            "recharge_commands": summary.recharge_commands,
            "recharge_attempts": summary.recharge_attempts,
            "ledger_entries": summary.ledger_entries,
            "accounts": summary.accounts,
            "customers": summary.customers,
        })
    };
    let shards: Vec<Value> = report
        .shards
        .iter()
        .map(|shard| {
            let mut value = summary(shard);
            value["shard"] = json!(shard.shard);
            value["checkpoint_log_next"] = json!(shard.checkpoint_log_next);
            value
        })
        .collect();
    let differences = report.differences.as_ref().map(|differences| {
        json!({
            "count": differences.count,
            "shown": differences.shown.iter().map(|difference| json!({
                "customer": difference.customer,
                "credit_type": difference.credit_type,
                "what": difference.what,
                "store": difference.store,
                "log": difference.log,
            })).collect::<Vec<_>>(),
        })
    });
    json!({
        "shards": shards,
        "total": summary(&report.total),
        "elapsed_ms": u64::try_from(report.elapsed.as_millis()).unwrap_or(u64::MAX),
        "events_per_second": report.events_per_second(),
        "verified": report.differences.as_ref().map(|differences| differences.count == 0),
        "differences": differences,
    })
}
