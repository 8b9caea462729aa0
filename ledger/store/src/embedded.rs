//! The embedded default behind `refill serve` with no flags: one fjall database holds both
//! the log and the store, and one syncer thread makes concurrent writes durable together
//! (group commit), because one fsync costs milliseconds on the disks we run on.
//!
//! Layout (fjall keyspaces):
//! - `meta`: `format` and `partitions`, each a big-endian `u32`, written at first open.
//! - `log`: key = partition (`u32` BE) ++ offset (`u64` BE), value = the record bytes.
//! - `table.<name>`, one per store table, created at its first use: the table's keys and
//!   values, each key behind one byte [`KEY_TAG`] (fjall takes no empty key; the port does).
//!   One keyspace a table, not one for all with the table name in every
//!   key: shorter keys in every memtable, journal and table file, and smaller memtables to
//!   search (format 1 had the one keyspace).
//!
//! Write path: callers enqueue a request and block on its answer. The syncer takes what is
//! queued (up to [`GROUP_BYTES_MAX`]), assigns log offsets, writes everything as one fjall
//! write batch synced with `SyncAll`, then publishes the new end offsets and answers every
//! caller of the group. fjall applies a batch to its memtables only after the journal sync
//! returns, and only the syncer writes, so reads (`read`, `get`, `scan`) never see a write a
//! crash could lose; the end offsets move only after the sync too. fjall applies a batch's
//! items one by one and then publishes its sequence number: `get` and `scan` read through a
//! snapshot (published batches only) so they never see half a batch; `read` needs none, as it
//! stops at the end offsets, which move only once the whole batch is applied.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable as _, Slice};

use crate::{Entry, Log, LogRecord, Store, StoreError, Write};

/// The most payload bytes one group commit takes from the queue (it always takes at least
/// one request): bounds the memory of one fjall batch and the latency of one commit.
pub const GROUP_BYTES_MAX: usize = 64 << 20;
/// The longest table name: fjall names a keyspace in at most 255 bytes, ours with
/// [`TABLE_KEYSPACE_PREFIX`] first.
pub const TABLE_NAME_BYTES_MAX: usize = u8::MAX as usize - TABLE_KEYSPACE_PREFIX.len();
/// The longest store key: fjall's bound (65,535 bytes) less [`KEY_TAG`].
pub const STORE_KEY_BYTES_MAX: usize = 65_535 - 1;
/// The byte before every store key in its table's keyspace.
const KEY_TAG: u8 = 0;
/// What a table's keyspace name starts with (the rest is the table name).
pub const TABLE_KEYSPACE_PREFIX: &str = "table.";
/// The largest record or value fjall takes.
pub const VALUE_BYTES_MAX: usize = u32::MAX as usize;
/// The most journal bytes the database keeps before it writes the oldest memtables to
/// table files (and can drop the journal behind them).
pub const JOURNAL_BYTES_MAX: u64 = 128 << 20;
/// Records preallocated by one `read`, whatever `max` says.
const READ_PREALLOCATE_MAX: usize = 4096;

/// The on-disk layout this code writes and reads.
const FORMAT_VERSION: u32 = 2;
const META_FORMAT: &[u8] = b"format";
const META_PARTITIONS: &[u8] = b"partitions";
const LOG_KEY_BYTES: usize = 12;

/// The embedded log and store: one database directory, `Send + Sync`, meant to be shared
/// behind an `Arc` (as `Arc<dyn Log>` and `Arc<dyn Store>` at once). Dropping it finishes
/// the queued writes and closes the database.
pub struct Embedded {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
    dir: PathBuf,
}

/// What the callers and the syncer thread share.
struct Shared {
    db: Database,
    log: Keyspace,
    /// The store tables' keyspaces opened so far, by table name.
    tables: RwLock<HashMap<&'static str, Keyspace>>,
    partitions: u32,
    queue: Mutex<Queue>,
    /// Signalled when a request is queued or the queue closes.
    work: Condvar,
    /// Durable end offset per partition. Written only by the syncer, with `Release`, after
    /// the batch that holds the records is synced and applied (and while `ends_lock` is
    /// held, so `wait_beyond` cannot miss the wake-up); read with `Acquire`, so a reader
    /// that sees an end also sees the records below it.
    ends: Box<[AtomicU64]>,
    ends_lock: Mutex<()>,
    /// Signalled (under `ends_lock`) whenever end offsets move.
    advanced: Condvar,
    /// Durable commits (syncs) made since open; statistics only, hence `Relaxed`.
    commits: AtomicU64,
}

/// Requests waiting for the syncer.
struct Queue {
    requests: VecDeque<Request>,
    closed: bool,
}

/// One caller's write, waiting for its group.
enum Request {
    Append {
        partition: u32,
        records: Vec<Slice>,
        bytes: usize,
        answer: SyncSender<Result<u64, StoreError>>,
    },
    Write {
        ops: Vec<StoreOp>,
        bytes: usize,
        answer: SyncSender<Result<u64, StoreError>>,
    },
}

/// One store write of a group: table, key, and the value (`None`: delete).
type StoreOp = (&'static str, Vec<u8>, Option<Vec<u8>>);

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Self::Append { bytes, .. } | Self::Write { bytes, .. } => *bytes,
        }
    }
}

impl Embedded {
    /// Opens (creating if needed) the database in `dir` with a log of `partitions`
    /// partitions. The partition count is stored at first open; a later open with another
    /// count fails with [`StoreError::PartitionsChanged`]. After a crash the log continues
    /// at the end offset of what was durable.
    pub fn open(dir: &Path, partitions: u32) -> Result<Self, StoreError> {
        if partitions == 0 {
            return Err(StoreError::InvalidRequest(
                "expected at least 1 partition, found 0".to_owned(),
            ));
        }
        // The journal holds what is not yet in table files, and an open replays all of it:
        // fjall's default allows 512 MiB (seconds of replay at start, seen in
        // `refill-bench restart` once each table had its own memtable); a quarter of that
        // keeps a restart quick at the cost of flushing memtables a little sooner.
        let db = Database::builder(dir)
            .max_journaling_size(JOURNAL_BYTES_MAX)
            .open()
            .map_err(backend("open database"))?;
        let meta = db
            .keyspace("meta", KeyspaceCreateOptions::default)
            .map_err(backend("open keyspace meta"))?;
        let log = db
            .keyspace("log", KeyspaceCreateOptions::default)
            .map_err(backend("open keyspace log"))?;
        check_or_write_meta(&db, &meta, partitions)?;
        let ends = (0..partitions)
            .map(|p| recover_end(&log, p).map(AtomicU64::new))
            .collect::<Result<Box<[_]>, _>>()?;
        let shared = Arc::new(Shared {
            db,
            log,
            tables: RwLock::new(HashMap::new()),
            partitions,
            queue: Mutex::new(Queue {
                requests: VecDeque::new(),
                closed: false,
            }),
            work: Condvar::new(),
            ends,
            ends_lock: Mutex::new(()),
            advanced: Condvar::new(),
            commits: AtomicU64::new(0),
        });
        let for_syncer = Arc::clone(&shared);
        let syncer = std::thread::Builder::new()
            .name("refill-store-sync".to_owned())
            .spawn(move || sync_loop(&for_syncer))
            .map_err(|e| StoreError::Backend(format!("spawn syncer thread: {e}")))?;
        Ok(Self {
            shared,
            syncer: Some(syncer),
            dir: dir.to_owned(),
        })
    }

    /// The directory the database lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Durable commits (each one sync) made since open: appends and writes divided by this
    /// is the mean group size.
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// The end-offset slot of `partition`, or the error for a partition it does not have.
    fn end_slot(&self, partition: u32) -> Result<&AtomicU64, StoreError> {
        self.shared
            .ends
            .get(partition as usize)
            .ok_or(StoreError::NoSuchPartition {
                partitions: self.shared.partitions,
                found: partition,
            })
    }

    /// Queues `request` for the syncer and waits for its group to be durable.
    fn submit(
        &self,
        request: Request,
        answer: &Receiver<Result<u64, StoreError>>,
    ) -> Result<u64, StoreError> {
        {
            let mut queue = lock(&self.shared.queue);
            if queue.closed {
                return Err(StoreError::Backend(
                    "expected an open database, found it closing".to_owned(),
                ));
            }
            queue.requests.push_back(request);
        }
        self.shared.work.notify_one();
        answer.recv().map_err(|_| {
            StoreError::Backend("expected the syncer thread to answer, found it stopped".to_owned())
        })?
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.work.notify_one();
        if let Some(syncer) = self.syncer.take() {
            // A panicked syncer has already failed its callers; nothing more to report here.
            let _ = syncer.join();
        }
    }
}

impl Log for Embedded {
    fn partitions(&self) -> u32 {
        self.shared.partitions
    }

    fn append(&self, partition: u32, records: &[&[u8]]) -> Result<u64, StoreError> {
        let slot = self.end_slot(partition)?;
        if records.is_empty() {
            return Ok(slot.load(Ordering::Acquire));
        }
        let mut bytes = 0usize;
        let mut owned = Vec::with_capacity(records.len());
        for record in records {
            if record.len() > VALUE_BYTES_MAX {
                return Err(StoreError::InvalidRequest(format!(
                    "expected records of at most {VALUE_BYTES_MAX} bytes, found {}",
                    record.len()
                )));
            }
            bytes = bytes.saturating_add(record.len() + LOG_KEY_BYTES);
            owned.push(Slice::from(*record));
        }
        let (answer, receive) = sync_channel(1);
        self.submit(
            Request::Append {
                partition,
                records: owned,
                bytes,
                answer,
            },
            &receive,
        )
    }

    fn read(&self, partition: u32, from: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        let end = self.end_slot(partition)?.load(Ordering::Acquire);
        if max == 0 || from >= end {
            return Ok(Vec::new());
        }
        let to = end.min(from.saturating_add(u64::try_from(max).unwrap_or(u64::MAX)));
        let want = to - from;
        let mut out = Vec::with_capacity(
            usize::try_from(want).map_or(READ_PREALLOCATE_MAX, |w| w.min(READ_PREALLOCATE_MAX)),
        );
        for guard in self
            .shared
            .log
            .range(log_key(partition, from)..log_key(partition, to))
        {
            let (key, value) = guard.into_inner().map_err(backend("read log"))?;
            let offset = decode_log_key(partition, &key)?;
            let expected = from + out.len() as u64;
            if offset != expected {
                return Err(StoreError::Corrupt(format!(
                    "expected offset {expected} next in partition {partition}, found {offset}"
                )));
            }
            out.push(LogRecord {
                offset,
                bytes: value.to_vec(),
            });
        }
        if out.len() as u64 != want {
            return Err(StoreError::Corrupt(format!(
                "expected records up to offset {to} in partition {partition} (durable end {end}), found them ending at {}",
                from + out.len() as u64
            )));
        }
        Ok(out)
    }

    fn end_offset(&self, partition: u32) -> Result<u64, StoreError> {
        Ok(self.end_slot(partition)?.load(Ordering::Acquire))
    }

    fn wait_beyond(
        &self,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> Result<u64, StoreError> {
        let slot = self.end_slot(partition)?;
        let deadline = Instant::now().checked_add(timeout);
        let mut guard = lock(&self.shared.ends_lock);
        loop {
            let end = slot.load(Ordering::Acquire);
            if end > offset {
                return Ok(end);
            }
            let now = Instant::now();
            let remaining = match deadline {
                Some(deadline) if deadline <= now => return Ok(end),
                Some(deadline) => deadline - now,
                // A timeout past the end of time: wait in day-long steps.
                None => Duration::from_secs(86_400),
            };
            guard = self
                .shared
                .advanced
                .wait_timeout(guard, remaining)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Store for Embedded {
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        if writes.is_empty() {
            return Ok(());
        }
        let mut bytes = 0usize;
        let mut ops = Vec::with_capacity(writes.len());
        for write in writes {
            let (table, key, value) = match write {
                Write::Put { table, key, value } => {
                    if value.len() > VALUE_BYTES_MAX {
                        return Err(StoreError::InvalidRequest(format!(
                            "expected values of at most {VALUE_BYTES_MAX} bytes, found {}",
                            value.len()
                        )));
                    }
                    (table, key, Some(value))
                }
                Write::Delete { table, key } => (table, key, None),
            };
            let key = store_key(table, &key)?;
            bytes = bytes.saturating_add(key.len() + value.as_ref().map_or(0, Vec::len));
            ops.push((table, key, value));
        }
        let (answer, receive) = sync_channel(1);
        self.submit(Request::Write { ops, bytes, answer }, &receive)
            .map(|_| ())
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = store_key(table, key)?;
        let keyspace = self.shared.table(table)?;
        // Through a snapshot: a plain keyspace read could see half of a batch being applied.
        let value = self
            .shared
            .db
            .snapshot()
            .get(&keyspace, &key)
            .map_err(backend("get"))?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let prefix = store_key(table, prefix)?;
        let start = store_key(table, start)?;
        let lower = if start > prefix {
            start
        } else {
            prefix.clone()
        };
        let upper = prefix_successor(&prefix).map_or(Bound::Unbounded, Bound::Excluded);
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let keyspace = self.shared.table(table)?;
        // Through a snapshot: a plain keyspace read could see half of a batch being applied.
        let snapshot = self.shared.db.snapshot();
        for guard in snapshot.range::<Vec<u8>, _>(&keyspace, (Bound::Included(lower), upper)) {
            let (key, value) = guard.into_inner().map_err(backend("scan"))?;
            // The bounds keep every key inside the prefix; a key outside it means the
            // iterator and our encoding disagree, which only corrupt data could cause.
            if !key.starts_with(&prefix) {
                return Err(StoreError::Corrupt(format!(
                    "expected scanned keys of table {table:?} to start with the prefix, found {:?}",
                    &key[..]
                )));
            }
            let user_key = &key[1..];
            out.push((user_key.to_vec(), value.to_vec()));
            if out.len() >= max {
                break;
            }
        }
        Ok(out)
    }
}

/// The syncer thread: takes queued requests in groups and makes each group durable with one
/// fjall batch and one sync.
fn sync_loop(shared: &Shared) {
    // Next offset per partition; only this thread appends, so it stays in step with `ends`.
    let mut next: Vec<u64> = shared
        .ends
        .iter()
        .map(|end| end.load(Ordering::Acquire))
        .collect();
    loop {
        let group = {
            let mut queue = lock(&shared.queue);
            while queue.requests.is_empty() && !queue.closed {
                queue = shared
                    .work
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if queue.requests.is_empty() {
                return;
            }
            take_group(&mut queue.requests)
        };
        commit_group(shared, &mut next, group);
    }
}

/// Takes requests from the front of `requests` up to [`GROUP_BYTES_MAX`] (at least one).
fn take_group(requests: &mut VecDeque<Request>) -> Vec<Request> {
    let mut group = Vec::new();
    let mut bytes = 0usize;
    while let Some(request) = requests.front() {
        if !group.is_empty() && bytes.saturating_add(request.bytes()) > GROUP_BYTES_MAX {
            break;
        }
        bytes = bytes.saturating_add(request.bytes());
        group.extend(requests.pop_front());
    }
    group
}

/// Writes one group as one synced fjall batch, publishes the new ends and answers everyone.
fn commit_group(shared: &Shared, next: &mut [u64], group: Vec<Request>) {
    let mut batch = shared.db.batch().durability(Some(PersistMode::SyncAll));
    // Store writes of the group, in the order they were asked for.
    let mut store_ops: Vec<StoreOp> = Vec::new();
    let mut answers = Vec::with_capacity(group.len());
    let mut moved = false;
    for request in group {
        match request {
            Request::Append {
                partition,
                records,
                answer,
                ..
            } => {
                let slot = &mut next[partition as usize];
                let first = *slot;
                for (i, record) in records.into_iter().enumerate() {
                    batch.insert(&shared.log, log_key(partition, first + i as u64), record);
                    *slot += 1;
                }
                moved = true;
                answers.push((answer, first));
            }
            Request::Write { ops, answer, .. } => {
                store_ops.extend(ops);
                answers.push((answer, 0));
            }
        }
    }
    let mut opened: Option<(&'static str, Keyspace)> = None;
    for (table, key, value) in last_write_per_key_in_key_order(store_ops) {
        // Sorted by table first, so each table's keyspace is looked up once per group.
        let keyspace = match &opened {
            Some((name, keyspace)) if *name == table => keyspace,
            _ => match shared.table(table) {
                Ok(keyspace) => &opened.insert((table, keyspace)).1,
                Err(error) => {
                    fail_group(shared, next, answers, &error.to_string());
                    return;
                }
            },
        };
        match value {
            Some(value) => batch.insert(keyspace, key, value),
            None => batch.remove(keyspace, key),
        }
    }
    match batch.commit() {
        Ok(()) => {
            shared.commits.fetch_add(1, Ordering::Relaxed);
            if moved {
                let _guard = lock(&shared.ends_lock);
                for (end, next) in shared.ends.iter().zip(next.iter()) {
                    end.store(*next, Ordering::Release);
                }
                shared.advanced.notify_all();
            }
            for (answer, first) in answers {
                // A caller that went away needs no answer.
                let _ = answer.send(Ok(first));
            }
        }
        Err(e) => fail_group(shared, next, answers, &format!("commit group: {e}")),
    }
}

/// Answers a group that was not written: its offsets go back to the durable ends.
fn fail_group(
    shared: &Shared,
    next: &mut [u64],
    answers: Vec<(SyncSender<Result<u64, StoreError>>, u64)>,
    message: &str,
) {
    for (slot, end) in next.iter_mut().zip(shared.ends.iter()) {
        *slot = end.load(Ordering::Acquire);
    }
    for (answer, _) in answers {
        let _ = answer.send(Err(StoreError::Backend(message.to_owned())));
    }
}

/// The group's store writes sorted by key, the last one asked for per key kept.
///
/// One per key: the batch gives all its items one sequence number, so it must not hold two
/// versions of a key. In key order: each memtable insert then walks the skiplist path the
/// previous one just walked, which is in cache; in arrival order (random keys) every level
/// of a large memtable is a cache miss, and those misses were a third of the engine's CPU
/// under `refill-bench ingest`.
fn last_write_per_key_in_key_order(mut ops: Vec<StoreOp>) -> Vec<StoreOp> {
    // Stable: equal keys stay in the order they were asked for, so the last is the newest.
    ops.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut out: Vec<StoreOp> = Vec::with_capacity(ops.len());
    for op in ops {
        match out.last_mut() {
            Some(last) if last.0 == op.0 && last.1 == op.1 => *last = op,
            _ => out.push(op),
        }
    }
    out
}

/// Checks the stored format and partition count, or stores them on first open.
fn check_or_write_meta(db: &Database, meta: &Keyspace, partitions: u32) -> Result<(), StoreError> {
    let format = meta.get(META_FORMAT).map_err(backend("read meta"))?;
    let stored = meta.get(META_PARTITIONS).map_err(backend("read meta"))?;
    match (format, stored) {
        (None, None) => {
            let mut batch = db.batch().durability(Some(PersistMode::SyncAll));
            batch.insert(meta, META_FORMAT, FORMAT_VERSION.to_be_bytes().as_slice());
            batch.insert(meta, META_PARTITIONS, partitions.to_be_bytes().as_slice());
            batch.commit().map_err(backend("write meta"))
        }
        (Some(format), Some(stored)) => {
            let format = decode_u32("format", &format)?;
            if format != FORMAT_VERSION {
                return Err(StoreError::Corrupt(format!(
                    "expected a data folder of format {FORMAT_VERSION}, found format {format} \
                     (written by another Refill version; this build cannot read it: start \
                     with a new --data-dir)"
                )));
            }
            let stored = decode_u32("partitions", &stored)?;
            if stored != partitions {
                return Err(StoreError::PartitionsChanged {
                    stored,
                    requested: partitions,
                });
            }
            Ok(())
        }
        (format, stored) => Err(StoreError::Corrupt(format!(
            "expected both meta keys or neither, found format {} and partitions {}",
            if format.is_some() {
                "present"
            } else {
                "absent"
            },
            if stored.is_some() {
                "present"
            } else {
                "absent"
            },
        ))),
    }
}

/// The end offset of `partition` as stored: one past its last record.
fn recover_end(log: &Keyspace, partition: u32) -> Result<u64, StoreError> {
    match log.prefix(partition.to_be_bytes()).next_back() {
        None => Ok(0),
        Some(guard) => {
            let key = guard.key().map_err(backend("recover log end"))?;
            let last = decode_log_key(partition, &key)?;
            last.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "expected an offset below u64::MAX in partition {partition}, found it"
                ))
            })
        }
    }
}

fn decode_u32(what: &str, bytes: &[u8]) -> Result<u32, StoreError> {
    let array: [u8; 4] = bytes.try_into().map_err(|_| {
        StoreError::Corrupt(format!(
            "expected meta {what} of 4 bytes, found {}",
            bytes.len()
        ))
    })?;
    Ok(u32::from_be_bytes(array))
}

fn log_key(partition: u32, offset: u64) -> [u8; LOG_KEY_BYTES] {
    let mut key = [0u8; LOG_KEY_BYTES];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

fn decode_log_key(partition: u32, key: &[u8]) -> Result<u64, StoreError> {
    let Ok(array) = <[u8; LOG_KEY_BYTES]>::try_from(key) else {
        return Err(StoreError::Corrupt(format!(
            "expected log keys of {LOG_KEY_BYTES} bytes, found {}",
            key.len()
        )));
    };
    let (stored_partition, offset) = array.split_at(4);
    let stored_partition = u32::from_be_bytes(
        stored_partition
            .try_into()
            .expect("split at 4 of 12 bytes leaves 4"),
    );
    if stored_partition != partition {
        return Err(StoreError::Corrupt(format!(
            "expected a log key of partition {partition}, found {stored_partition}"
        )));
    }
    Ok(u64::from_be_bytes(
        offset.try_into().expect("split at 4 of 12 bytes leaves 8"),
    ))
}

/// `key` as stored in `table`'s keyspace ([`KEY_TAG`] first), checked against fjall's bounds.
fn store_key(table: &str, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    if table.is_empty() || table.len() > TABLE_NAME_BYTES_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected a table name of 1 to {TABLE_NAME_BYTES_MAX} bytes, found {} bytes",
            table.len()
        )));
    }
    if key.len() > STORE_KEY_BYTES_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected keys of at most {STORE_KEY_BYTES_MAX} bytes, found {}",
            key.len()
        )));
    }
    let mut out = Vec::with_capacity(1 + key.len());
    out.push(KEY_TAG);
    out.extend_from_slice(key);
    Ok(out)
}

impl Shared {
    /// The keyspace of `table`, opened (and created) at its first use.
    fn table(&self, table: &'static str) -> Result<Keyspace, StoreError> {
        if let Some(keyspace) = self
            .tables
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(table)
        {
            return Ok(keyspace.clone());
        }
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(keyspace) = tables.get(table) {
            return Ok(keyspace.clone());
        }
        let keyspace = self
            .db
            .keyspace(
                &format!("{TABLE_KEYSPACE_PREFIX}{table}"),
                KeyspaceCreateOptions::default,
            )
            .map_err(|e| StoreError::Backend(format!("open the keyspace of table {table}: {e}")))?;
        tables.insert(table, keyspace.clone());
        Ok(keyspace)
    }
}

/// The least key greater than every key starting with `prefix` (`None`: no such key).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut out = prefix.to_vec();
    while let Some(last) = out.pop() {
        if last < u8::MAX {
            out.push(last + 1);
            return Some(out);
        }
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves its data consistent, so a panic elsewhere while
    // holding the lock does not make the data unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn backend(what: &'static str) -> impl Fn(fjall::Error) -> StoreError {
    move |e| StoreError::Backend(format!("{what}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_keeps_the_last_write_per_key_in_key_order() {
        let put = |key: &[u8], value: u8| ("t", key.to_vec(), Some(vec![value]));
        let ops = vec![
            put(b"b", 1),
            put(b"a", 2),
            ("t", b"b".to_vec(), None),
            put(b"c", 3),
            ("s", b"z".to_vec(), None),
            put(b"a", 4),
        ];
        assert_eq!(
            last_write_per_key_in_key_order(ops),
            vec![
                ("s", b"z".to_vec(), None),
                put(b"a", 4),
                ("t", b"b".to_vec(), None),
                put(b"c", 3)
            ]
        );
    }

    #[test]
    fn prefix_successor_skips_trailing_max_bytes() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff]), None);
        assert_eq!(prefix_successor(&[]), None);
    }

    #[test]
    fn log_keys_round_trip_and_reject_bad_bytes() {
        let key = log_key(3, 77);
        assert_eq!(decode_log_key(3, &key).ok(), Some(77));
        assert!(matches!(
            decode_log_key(4, &key),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            decode_log_key(3, &key[..11]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn tables_are_kept_apart_and_bad_names_refused() {
        let dir = std::env::temp_dir().join(format!("refill-embedded-{}", std::process::id()));
        let store = Embedded::open(&dir, 1).expect("open");
        let put = |table: &'static str, key: &[u8], value: &[u8]| Write::Put {
            table,
            key: key.to_vec(),
            value: value.to_vec(),
        };
        store
            .write(vec![put("t", b"1x", b"a"), put("t1", b"x", b"b")])
            .expect("write");
        assert_eq!(store.get("t", b"1x").expect("get"), Some(b"a".to_vec()));
        assert_eq!(store.get("t1", b"x").expect("get"), Some(b"b".to_vec()));
        assert_eq!(store.get("t", b"x").expect("get"), None);
        assert_eq!(store.scan("t1", b"", b"", 10).expect("scan").len(), 1);
        let long: &'static str = Box::leak("x".repeat(TABLE_NAME_BYTES_MAX + 1).into_boxed_str());
        assert!(matches!(
            store.get(long, b""),
            Err(StoreError::InvalidRequest(_))
        ));
        assert!(matches!(
            store.write(vec![put("", b"k", b"v")]),
            Err(StoreError::InvalidRequest(_))
        ));
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
