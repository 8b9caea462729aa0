//! Durable before acknowledged (DESIGN §4 invariant 8): a child process writes to an
//! `Embedded` and prints each acknowledgement; the test kills it with SIGKILL mid-stream,
//! reopens the database and checks that everything acknowledged is there, intact, with dense
//! offsets, that no reader saw anything the crash lost, and that batches are whole. Two
//! rounds, so the second also checks that writing resumes correctly after a crash.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use refill_store::embedded::Embedded;
use refill_store::{Log, LogRecord, Store};

/// Partitions the helper uses.
const PARTITIONS: u32 = 2;
/// Append acknowledgements to read before the kill.
const APPENDS_BEFORE_KILL: usize = 150;

/// What the child acknowledged.
#[derive(Default)]
struct Acks {
    /// (round, writer, first seq, count, partition, offset).
    appends: Vec<(u32, u32, u64, u64, u32, u64)>,
    /// (round, i) of each store batch.
    puts: Vec<(u32, u64)>,
    /// Highest end offset a reader saw, per partition.
    seen: BTreeMap<u32, u64>,
}

/// Same as the helper's `record`; a mismatch fails the test loudly, never silently.
fn record(round: u32, writer: u32, seq: u64) -> Vec<u8> {
    let mut bytes = format!("round {round} writer {writer} seq {seq} ").into_bytes();
    bytes.resize(100, b'.');
    bytes
}

fn number<T: std::str::FromStr>(field: Option<&str>, line: &str) -> T {
    field
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("expected a number in helper line {line:?}"))
}

/// Runs the helper on `dir` until it acknowledged enough, then kills it with SIGKILL.
fn run_and_kill(dir: &Path, round: u32, acks: &mut Acks) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refill-store-crash-helper"))
        .arg(dir)
        .arg(round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the crash helper starts");
    let stdout = child.stdout.take().expect("the helper's stdout is piped");
    let mut appends = 0;
    let mut puts = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("a line from the helper");
        let mut fields = line.split(' ');
        match fields.next() {
            Some("append") => {
                acks.appends.push((
                    number(fields.next(), &line),
                    number(fields.next(), &line),
                    number(fields.next(), &line),
                    number(fields.next(), &line),
                    number(fields.next(), &line),
                    number(fields.next(), &line),
                ));
                appends += 1;
            }
            Some("put") => {
                acks.puts
                    .push((number(fields.next(), &line), number(fields.next(), &line)));
                puts += 1;
            }
            Some("seen") => {
                let partition = number(fields.next(), &line);
                let end = number(fields.next(), &line);
                let seen = acks.seen.entry(partition).or_default();
                *seen = (*seen).max(end);
            }
            _ => panic!("expected append, put or seen from the helper, found {line:?}"),
        }
        if appends >= APPENDS_BEFORE_KILL && puts > 0 {
            // `Child::kill` sends SIGKILL: no destructor, no flush, no goodbye.
            child.kill().expect("SIGKILL the helper");
            break;
        }
    }
    let status = child.wait().expect("the helper is reaped");
    assert!(
        appends >= APPENDS_BEFORE_KILL && puts > 0,
        "expected {APPENDS_BEFORE_KILL} append acknowledgements and a put before the kill, found {appends} and {puts} \
         (helper exited with {status})"
    );
}

/// Every record of `partition` with dense offsets from 0.
fn read_all(log: &Embedded, partition: u32) -> Vec<LogRecord> {
    let mut all: Vec<LogRecord> = Vec::new();
    loop {
        let page = log
            .read(partition, all.len() as u64, 1000)
            .expect("read after the crash");
        if page.is_empty() {
            break;
        }
        for record in page {
            assert_eq!(
                record.offset,
                all.len() as u64,
                "expected dense offsets in partition {partition}"
            );
            all.push(record);
        }
    }
    assert_eq!(
        log.end_offset(partition).expect("end_offset"),
        all.len() as u64,
        "expected the end after the last record"
    );
    all
}

/// Reopens `dir` and checks it against everything acknowledged so far.
fn check(dir: &Path, acks: &Acks) {
    let reopened = Embedded::open(dir, PARTITIONS).expect("the database reopens after SIGKILL");
    let partitions: Vec<Vec<LogRecord>> = (0..PARTITIONS).map(|p| read_all(&reopened, p)).collect();
    for &(round, writer, seq, count, partition, offset) in &acks.appends {
        let stored = &partitions[partition as usize];
        for i in 0..count {
            let at = offset + i;
            let found = usize::try_from(at)
                .ok()
                .and_then(|at| stored.get(at))
                .map(|r| r.bytes.as_slice());
            assert_eq!(
                found,
                Some(record(round, writer, seq + i).as_slice()),
                "expected acknowledged record {} of writer {writer} in round {round} at offset {at} of partition {partition}",
                seq + i
            );
        }
    }
    for (partition, records) in partitions.iter().enumerate() {
        let distinct: HashSet<&[u8]> = records.iter().map(|r| r.bytes.as_slice()).collect();
        assert_eq!(
            distinct.len(),
            records.len(),
            "expected no duplicate record in partition {partition}"
        );
        let seen = acks.seen.get(&(partition as u32)).copied().unwrap_or(0);
        assert!(
            records.len() as u64 >= seen,
            "expected no reader to have seen a record the crash lost: a reader saw end {seen} of partition {partition}, \
             {} records survived",
            records.len()
        );
    }
    for &(round, i) in &acks.puts {
        let key = format!("{round}/{i}").into_bytes();
        assert_eq!(
            reopened.get("crash_a", &key).expect("get"),
            Some(key.clone()),
            "expected acknowledged put {round}/{i}"
        );
    }
    // A batch is whole: the two tables hold exactly the same keys, acknowledged or not.
    let a = reopened
        .scan("crash_a", b"", b"", usize::MAX)
        .expect("scan a");
    let b = reopened
        .scan("crash_b", b"", b"", usize::MAX)
        .expect("scan b");
    assert_eq!(
        a, b,
        "expected every batch's two puts both present or both absent"
    );
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acks = Acks::default();
    for round in 0..2 {
        run_and_kill(dir.path(), round, &mut acks);
        check(dir.path(), &acks);
    }
}
