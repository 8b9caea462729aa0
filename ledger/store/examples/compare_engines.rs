//! Measures the candidate embedded databases (fjall, redb) on this machine for the ingest
//! path, so the choice behind `Embedded` rests on figures: threads append batches of
//! 100-byte records and each append waits until it is durable.
//!
//! Both engines run behind the same group committer (one syncer thread writes everything
//! queued as one transaction and syncs once), which is what `Embedded` does; `Embedded`
//! itself (the crate's implementation on the chosen engine) is measured the same way.
//!
//! Run: `cargo run --release -p refill-store --example compare_engines` (options:
//! `--seconds 2 --repeats 3 --engines fjall,redb,embedded`). `--seconds 0.05 --repeats 1`
//! is a smoke run.

#![allow(
    clippy::float_arithmetic,
    reason = "rates and medians of a benchmark, never money"
)]

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use refill_store::Log;
use refill_store::embedded::Embedded;

/// Bytes per record, about one usage event.
const RECORD_BYTES: usize = 100;
/// Partitions: one per appending thread, so threads never contend for a partition's offsets.
const PARTITIONS: u32 = 4;

type Result<T> = std::result::Result<T, String>;

/// One append of a group: records of one partition from `first` on.
struct Append {
    partition: u32,
    first: u64,
    records: Vec<Vec<u8>>,
}

/// What the group committer needs from a database: one durable, atomic commit of a group.
trait Engine: Send + Sync + 'static {
    fn commit(&self, group: &[Append]) -> Result<()>;
}

fn log_key(partition: u32, offset: u64) -> [u8; 12] {
    let mut key = [0u8; 12];
    key[..4].copy_from_slice(&partition.to_be_bytes());
    key[4..].copy_from_slice(&offset.to_be_bytes());
    key
}

/// fjall: one keyspace, one write batch per group, journal synced with `SyncAll`.
struct Fjall {
    db: fjall::Database,
    log: fjall::Keyspace,
}

impl Fjall {
    fn open(dir: &Path) -> Result<Self> {
        let db = fjall::Database::builder(dir)
            .open()
            .map_err(|e| format!("fjall open: {e}"))?;
        let log = db
            .keyspace("log", fjall::KeyspaceCreateOptions::default)
            .map_err(|e| format!("fjall keyspace: {e}"))?;
        Ok(Self { db, log })
    }
}

impl Engine for Fjall {
    fn commit(&self, group: &[Append]) -> Result<()> {
        let mut batch = self
            .db
            .batch()
            .durability(Some(fjall::PersistMode::SyncAll));
        for append in group {
            for (i, record) in append.records.iter().enumerate() {
                batch.insert(
                    &self.log,
                    log_key(append.partition, append.first + i as u64),
                    record.as_slice(),
                );
            }
        }
        batch.commit().map_err(|e| format!("fjall commit: {e}"))
    }
}

const REDB_LOG: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("log");

/// redb: one write transaction per group, committed with `Durability::Immediate`.
struct Redb {
    db: redb::Database,
}

impl Redb {
    fn open(dir: &Path) -> Result<Self> {
        let db =
            redb::Database::create(dir.join("log.redb")).map_err(|e| format!("redb open: {e}"))?;
        Ok(Self { db })
    }
}

impl Engine for Redb {
    fn commit(&self, group: &[Append]) -> Result<()> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| format!("redb begin: {e}"))?;
        {
            let mut table = tx
                .open_table(REDB_LOG)
                .map_err(|e| format!("redb table: {e}"))?;
            for append in group {
                for (i, record) in append.records.iter().enumerate() {
                    let key = log_key(append.partition, append.first + i as u64);
                    table
                        .insert(key.as_slice(), record.as_slice())
                        .map_err(|e| format!("redb insert: {e}"))?;
                }
            }
        }
        tx.commit().map_err(|e| format!("redb commit: {e}"))
    }
}

/// A request waiting for the syncer.
struct Pending {
    partition: u32,
    records: Vec<Vec<u8>>,
    done: SyncSender<Result<u64>>,
}

struct Queue {
    pending: Vec<Pending>,
    closed: bool,
}

struct Shared<E> {
    engine: E,
    queue: Mutex<Queue>,
    work: Condvar,
}

/// Appenders enqueue; one syncer thread commits all that is queued in one durable commit
/// and answers every appender of the group.
struct GroupCommitter<E: Engine> {
    shared: Arc<Shared<E>>,
    syncer: Option<JoinHandle<u64>>,
}

impl<E: Engine> GroupCommitter<E> {
    fn new(engine: E) -> Self {
        let shared = Arc::new(Shared {
            engine,
            queue: Mutex::new(Queue {
                pending: Vec::new(),
                closed: false,
            }),
            work: Condvar::new(),
        });
        let for_syncer = Arc::clone(&shared);
        let syncer = thread::spawn(move || sync_loop(&for_syncer));
        Self {
            shared,
            syncer: Some(syncer),
        }
    }

    fn append(&self, partition: u32, records: Vec<Vec<u8>>) -> Result<u64> {
        let (done, answer) = sync_channel(1);
        {
            let mut queue = self
                .shared
                .queue
                .lock()
                .map_err(|_| "queue poisoned".to_owned())?;
            queue.pending.push(Pending {
                partition,
                records,
                done,
            });
        }
        self.shared.work.notify_one();
        answer.recv().map_err(|_| "syncer gone".to_owned())?
    }

    /// Stops the syncer; returns how many commits it made.
    fn close(mut self) -> u64 {
        if let Ok(mut queue) = self.shared.queue.lock() {
            queue.closed = true;
        }
        self.shared.work.notify_one();
        self.syncer
            .take()
            .map_or(0, |syncer| syncer.join().unwrap_or(0))
    }
}

fn sync_loop<E: Engine>(shared: &Shared<E>) -> u64 {
    let mut next = vec![0u64; PARTITIONS as usize];
    let mut commits = 0;
    loop {
        let taken = {
            let Ok(mut queue) = shared.queue.lock() else {
                return commits;
            };
            while queue.pending.is_empty() && !queue.closed {
                let Ok(waited) = shared.work.wait(queue) else {
                    return commits;
                };
                queue = waited;
            }
            if queue.pending.is_empty() {
                return commits;
            }
            std::mem::take(&mut queue.pending)
        };
        let mut group = Vec::with_capacity(taken.len());
        let mut answers = Vec::with_capacity(taken.len());
        for pending in taken {
            let slot = &mut next[pending.partition as usize];
            let first = *slot;
            *slot += pending.records.len() as u64;
            group.push(Append {
                partition: pending.partition,
                first,
                records: pending.records,
            });
            answers.push((pending.done, first));
        }
        let outcome = shared.engine.commit(&group);
        commits += 1;
        for (done, first) in answers {
            let _ = done.send(outcome.clone().map(|()| first));
        }
    }
}

/// What one run achieved.
struct Figures {
    appends: u64,
    records: u64,
    elapsed: Duration,
    commits: u64,
}

/// Runs `threads` appenders of `batch` records each for `seconds`.
fn drive(
    threads: u32,
    batch: usize,
    seconds: f64,
    append: &(dyn Fn(u32, Vec<Vec<u8>>) -> Result<u64> + Sync),
) -> Result<(u64, u64, Duration)> {
    let deadline = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let results: Vec<Result<(u64, u64)>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || -> Result<(u64, u64)> {
                    let mut appends = 0u64;
                    let mut records = 0u64;
                    let mut seq = 0u64;
                    while start.elapsed() < deadline {
                        let batch_records: Vec<Vec<u8>> = (0..batch)
                            .map(|_| {
                                seq += 1;
                                let mut record = vec![b'x'; RECORD_BYTES];
                                record[..8].copy_from_slice(&seq.to_be_bytes());
                                record
                            })
                            .collect();
                        append(t % PARTITIONS, batch_records)?;
                        appends += 1;
                        records += batch as u64;
                    }
                    Ok((appends, records))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("appender panicked".to_owned()))
            })
            .collect()
    });
    let elapsed = start.elapsed();
    let mut appends = 0;
    let mut records = 0;
    for result in results {
        let (a, r) = result?;
        appends += a;
        records += r;
    }
    Ok((appends, records, elapsed))
}

fn run_engine<E: Engine>(engine: E, threads: u32, batch: usize, seconds: f64) -> Result<Figures> {
    let committer = GroupCommitter::new(engine);
    let (appends, records, elapsed) = drive(threads, batch, seconds, &|p, records| {
        committer.append(p, records)
    })?;
    let commits = committer.close();
    Ok(Figures {
        appends,
        records,
        elapsed,
        commits,
    })
}

fn run_embedded(dir: &Path, threads: u32, batch: usize, seconds: f64) -> Result<Figures> {
    let embedded = Embedded::open(dir, PARTITIONS).map_err(|e| e.to_string())?;
    let (appends, records, elapsed) = drive(threads, batch, seconds, &|p, records| {
        let refs: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
        embedded.append(p, &refs).map_err(|e| e.to_string())
    })?;
    let commits = embedded.commits();
    Ok(Figures {
        appends,
        records,
        elapsed,
        commits,
    })
}

/// Cost of one small write + fdatasync on this disk: the limit every figure is bounded by.
fn fsync_cost(dir: &Path, rounds: u32) -> Result<Duration> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("probe"))
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..rounds {
        file.write_all(&[b'x'; RECORD_BYTES])
            .map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
    }
    Ok(start.elapsed() / rounds)
}

/// One case of one engine: a fresh database, `threads` appenders of `batch` records.
fn run_case(engine: &str, threads: u32, batch: usize, seconds: f64) -> Result<Figures> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    match engine {
        "fjall" => run_engine(Fjall::open(dir.path())?, threads, batch, seconds),
        "redb" => run_engine(Redb::open(dir.path())?, threads, batch, seconds),
        "embedded" => run_embedded(dir.path(), threads, batch, seconds),
        other => Err(format!(
            "expected an engine of fjall, redb, embedded, found {other:?}"
        )),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let mut seconds = 2.0f64;
    let mut repeats = 3usize;
    let mut engines = vec!["fjall".to_owned(), "redb".to_owned(), "embedded".to_owned()];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("expected --seconds <f64>")?
            }
            "--repeats" => {
                repeats = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("expected --repeats <n>")?
            }
            "--engines" => {
                engines = args
                    .next()
                    .ok_or("expected --engines a,b")?
                    .split(',')
                    .map(str::to_owned)
                    .collect()
            }
            other => {
                return Err(format!(
                    "expected --seconds, --repeats or --engines, found {other:?}"
                ));
            }
        }
    }
    let cores = thread::available_parallelism().map_or(0, |n| n.get());
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let probe_rounds = if seconds < 0.5 { 5 } else { 200 };
    let fsync = fsync_cost(scratch.path(), probe_rounds)?;
    println!(
        "cores: {cores}; one 100-byte write + fdatasync: {:.2} ms; {seconds} s per run; median of {repeats} runs, engines interleaved",
        fsync.as_secs_f64() * 1e3
    );
    println!(
        "{:<9} {:>7} {:>6} {:>12} {:>12} {:>10} {:>12} {:>21}",
        "engine",
        "threads",
        "batch",
        "appends/s",
        "records/s",
        "commits/s",
        "appends/sync",
        "appends/s min..max"
    );
    for threads in [1u32, 4] {
        for batch in [1usize, 100, 1000] {
            // Engines take turns within each repeat, so a slow spell of the shared virtual
            // disk hits all of them rather than one.
            let mut runs: Vec<Vec<Figures>> = engines.iter().map(|_| Vec::new()).collect();
            for _ in 0..repeats {
                for (engine, runs) in engines.iter().zip(runs.iter_mut()) {
                    runs.push(run_case(engine, threads, batch, seconds)?);
                }
            }
            for (engine, runs) in engines.iter().zip(runs) {
                let rate = |f: &Figures, n: u64| n as f64 / f.elapsed.as_secs_f64();
                let appends: Vec<f64> = runs.iter().map(|f| rate(f, f.appends)).collect();
                let low = appends.iter().copied().fold(f64::INFINITY, f64::min);
                let high = appends.iter().copied().fold(0.0, f64::max);
                println!(
                    "{:<9} {:>7} {:>6} {:>12.0} {:>12.0} {:>10.0} {:>12.2} {:>21}",
                    engine,
                    threads,
                    batch,
                    median(appends),
                    median(runs.iter().map(|f| rate(f, f.records)).collect()),
                    median(runs.iter().map(|f| rate(f, f.commits)).collect()),
                    median(
                        runs.iter()
                            .map(|f| f.appends as f64 / f.commits.max(1) as f64)
                            .collect()
                    ),
                    format!("{low:.0}..{high:.0}"),
                );
            }
        }
    }
    let fsync = fsync_cost(scratch.path(), probe_rounds)?;
    println!(
        "one 100-byte write + fdatasync at the end: {:.2} ms",
        fsync.as_secs_f64() * 1e3
    );
    Ok(())
}
