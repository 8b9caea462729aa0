//! The generic test body of the storage ports: every implementation of [`Log`] and [`Store`]
//! (embedded today, Kafka and CQL later) runs these same checks from its tests, so they all
//! keep one contract. Enabled by the cargo feature `conformance`.
//!
//! Each check panics with what it expected and what it found. [`log_conformance`] and
//! [`store_conformance`] run them all; the single checks are public too, for finer tests.
//!
//! The fixtures are two closures: `create` opens a new, empty log or store, `reopen` closes
//! one (it receives the handle) and opens the same storage again. Tables written by the store
//! checks are listed in [`STORE_TABLES`], for implementations with a fixed schema.

use std::collections::HashSet;
use std::sync::mpsc::channel;
use std::thread;
use std::time::{Duration, Instant};

use crate::{Log, LogRecord, Store, StoreError, Write};

/// Tables the store checks write to.
pub const STORE_TABLES: [&str; 3] = [TABLE_A, TABLE_B, TABLE_A_LONGER];
const TABLE_A: &str = "conformance_a";
const TABLE_B: &str = "conformance_b";
/// A table whose name extends [`TABLE_A`]'s, to catch encodings that mix them.
const TABLE_A_LONGER: &str = "conformance_a1";

/// One append of the concurrency check: partition, offset it got, its records.
type Appended = (u32, u64, Vec<Vec<u8>>);

/// Threads that append or write at once in the concurrency checks.
const THREADS: usize = 4;
/// Appends (or store writes) per thread in the concurrency checks.
const CALLS_PER_THREAD: usize = 25;
/// How long a wait must last when nothing arrives.
const SHORT_WAIT: Duration = Duration::from_millis(100);
/// A wait that should be cut short by a wake-up; reaching it means the wake-up was lost.
const LONG_WAIT: Duration = Duration::from_secs(30);

/// Runs every log check. `create(partitions)` opens a new, empty log; `reopen(log)` closes
/// `log` and opens the same log again.
pub fn log_conformance<L: Log>(create: impl Fn(u32) -> L + Sync, reopen: impl Fn(L) -> L) {
    log_offsets_are_dense_from_zero_per_partition(&create);
    log_reads_page(&create);
    log_concurrent_appends_are_neither_lost_nor_duplicated(&create);
    log_wait_beyond_wakes_on_append_and_times_out_otherwise(&create);
    log_rejects_a_partition_it_does_not_have(&create);
    log_reopen_keeps_everything(&create, &reopen);
}

/// Runs every store check. `create()` opens a new, empty store; `reopen(store)` closes
/// `store` and opens the same store again.
pub fn store_conformance<S: Store>(create: impl Fn() -> S + Sync, reopen: impl Fn(S) -> S) {
    store_get_put_delete(&create);
    store_batch_applies_whole_and_in_order(&create);
    store_scan_keeps_prefix_start_max_and_order(&create);
    store_scan_pages(&create);
    store_concurrent_writes_all_land(&create);
    store_reopen_keeps_everything(&create, &reopen);
}

/// Offsets start at 0 in every partition, grow by one per record, and partitions are
/// independent; records read back as appended, in order; an empty append writes nothing.
pub fn log_offsets_are_dense_from_zero_per_partition<L: Log>(create: &(impl Fn(u32) -> L + Sync)) {
    let log = create(3);
    assert_eq!(
        log.partitions(),
        3,
        "expected the partition count asked for"
    );
    for p in 0..3 {
        assert_eq!(
            ok("end_offset of a new log", log.end_offset(p)),
            0,
            "expected a new partition {p} to end at 0"
        );
        assert!(
            ok("read of a new log", log.read(p, 0, 10)).is_empty(),
            "expected a new partition {p} to be empty"
        );
    }
    assert_eq!(
        ok("append", log.append(0, &[b"a"])),
        0,
        "expected the first append to get offset 0"
    );
    assert_eq!(
        ok("append", log.append(0, &[b"b", b"c"])),
        1,
        "expected the second append to follow the first"
    );
    assert_eq!(
        ok("append", log.append(1, &[b"x"])),
        0,
        "expected partition 1 to start at 0 whatever partition 0 holds"
    );
    assert_eq!(
        ok("end_offset", log.end_offset(0)),
        3,
        "expected partition 0 to end after its 3 records"
    );
    assert_eq!(
        ok("end_offset", log.end_offset(1)),
        1,
        "expected partition 1 to end after its record"
    );
    assert_eq!(
        ok("end_offset", log.end_offset(2)),
        0,
        "expected untouched partition 2 to stay empty"
    );
    assert_eq!(
        ok("read", log.read(0, 0, 10)),
        records(0, &[b"a", b"b", b"c"]),
        "expected partition 0 as appended"
    );
    assert_eq!(
        ok("read", log.read(1, 0, 10)),
        records(0, &[b"x"]),
        "expected partition 1 as appended"
    );

    assert_eq!(
        ok("empty append", log.append(0, &[])),
        3,
        "expected an empty append to return the end offset"
    );
    assert_eq!(
        ok("end_offset", log.end_offset(0)),
        3,
        "expected an empty append to write nothing"
    );

    let big = vec![0xa5u8; 1 << 20];
    let first = ok("append of odd sizes", log.append(2, &[b"", &big, &[0u8]]));
    assert_eq!(first, 0, "expected partition 2's first append at 0");
    assert_eq!(
        ok("read of odd sizes", log.read(2, 0, 10)),
        records(0, &[b"", &big, &[0u8]]),
        "expected an empty record, a 1 MiB record and a zero byte back intact"
    );
}

/// `read` returns at most `max` records from `from` on, and nothing past the end.
pub fn log_reads_page<L: Log>(create: &(impl Fn(u32) -> L + Sync)) {
    let log = create(1);
    let all: Vec<Vec<u8>> = (0..25u32)
        .map(|i| format!("record-{i}").into_bytes())
        .collect();
    let mut next = 0;
    for chunk in all.chunks(7) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        assert_eq!(
            ok("append", log.append(0, &refs)),
            next,
            "expected appends to follow each other"
        );
        next += chunk.len() as u64;
    }
    let mut from = 0;
    let mut pages = Vec::new();
    loop {
        let page = ok("read page", log.read(0, from, 10));
        if page.is_empty() {
            break;
        }
        assert!(
            page.len() <= 10,
            "expected at most 10 records per page, found {}",
            page.len()
        );
        from += page.len() as u64;
        pages.push(page.len());
        assert!(
            pages.len() <= 3,
            "expected 3 pages of 25 records, found more: {pages:?}"
        );
    }
    assert_eq!(
        pages,
        [10, 10, 5],
        "expected 25 records in full pages of 10 and a last of 5"
    );
    let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    assert_eq!(
        ok("read", log.read(0, 0, 100)),
        records(0, &refs),
        "expected all 25 records in order"
    );
    assert_eq!(
        ok("read", log.read(0, 7, 3)),
        records(7, &refs[7..10]),
        "expected records 7, 8, 9"
    );
    assert!(
        ok("read", log.read(0, 3, 0)).is_empty(),
        "expected nothing for max 0"
    );
    assert!(
        ok("read", log.read(0, 25, 10)).is_empty(),
        "expected nothing from the end offset"
    );
    assert!(
        ok("read", log.read(0, 1000, 10)).is_empty(),
        "expected nothing past the end offset"
    );
    assert_eq!(
        ok("read", log.read(0, 24, usize::MAX)),
        records(24, &refs[24..]),
        "expected the last record for a huge max"
    );
}

/// Threads appending at once: every record lands exactly once, each append's records are
/// contiguous at the offset it returned, and one thread's appends keep their order.
pub fn log_concurrent_appends_are_neither_lost_nor_duplicated<L: Log>(
    create: &(impl Fn(u32) -> L + Sync),
) {
    let log = create(2);
    let log = &log;
    let appended: Vec<Vec<Appended>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                scope.spawn(move || {
                    let partition = (t % 2) as u32;
                    (0..CALLS_PER_THREAD)
                        .map(|a| {
                            let batch: Vec<Vec<u8>> = (0..=(a % 4))
                                .map(|r| format!("t{t}-a{a}-r{r}").into_bytes())
                                .collect();
                            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                            let first = ok("concurrent append", log.append(partition, &refs));
                            (partition, first, batch)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("an appending thread panicked"))
            .collect()
    });
    let stored: Vec<Vec<LogRecord>> = (0..2).map(|p| read_all(log, p)).collect();
    for (t, appends) in appended.iter().enumerate() {
        let mut last_first = None;
        for (partition, first, batch) in appends {
            if let Some(last) = last_first {
                assert!(
                    *first > last,
                    "expected thread {t}'s appends in order, found offset {first} after {last}"
                );
            }
            last_first = Some(*first);
            let partition_records = &stored[*partition as usize];
            for (i, record) in batch.iter().enumerate() {
                let offset = first + i as u64;
                let found = usize::try_from(offset)
                    .ok()
                    .and_then(|o| partition_records.get(o));
                assert_eq!(
                    found.map(|r| &r.bytes),
                    Some(record),
                    "expected the record appended at offset {offset} of partition {partition} there"
                );
            }
        }
    }
    for (p, partition_records) in stored.iter().enumerate() {
        let appended_here: usize = appended
            .iter()
            .flatten()
            .filter(|(q, _, _)| *q as usize == p)
            .map(|(_, _, b)| b.len())
            .sum();
        assert_eq!(
            partition_records.len(),
            appended_here,
            "expected partition {p} to hold exactly what was appended to it"
        );
        let distinct: HashSet<&Vec<u8>> = partition_records.iter().map(|r| &r.bytes).collect();
        assert_eq!(
            distinct.len(),
            partition_records.len(),
            "expected no duplicate record in partition {p}"
        );
    }
}

/// `wait_beyond` returns at once when the end is already past, wakes when an append moves
/// the end past the offset, and otherwise returns the end once the timeout has elapsed.
pub fn log_wait_beyond_wakes_on_append_and_times_out_otherwise<L: Log>(
    create: &(impl Fn(u32) -> L + Sync),
) {
    let log = create(2);
    ok("append", log.append(0, &[b"first"]));

    let started = Instant::now();
    assert_eq!(
        ok("wait_beyond", log.wait_beyond(0, 0, LONG_WAIT)),
        1,
        "expected the end offset 1 for an offset already passed"
    );
    assert!(
        started.elapsed() < LONG_WAIT / 2,
        "expected no wait for an offset already passed"
    );

    let started = Instant::now();
    assert_eq!(
        ok("wait_beyond", log.wait_beyond(0, 1, SHORT_WAIT)),
        1,
        "expected the unchanged end offset on timeout"
    );
    assert!(
        started.elapsed() >= SHORT_WAIT,
        "expected the wait to last the timeout, found {:?}",
        started.elapsed()
    );
    assert_eq!(
        ok("wait_beyond", log.wait_beyond(0, 1000, Duration::ZERO)),
        1,
        "expected a zero timeout to return the end"
    );

    let log = &log;
    let (waiting, is_waiting) = channel();
    let (end, waited, other_end) = thread::scope(|scope| {
        let waiter = scope.spawn(move || {
            let started = Instant::now();
            let _ = waiting.send(());
            let end = ok("wait_beyond", log.wait_beyond(0, 1, LONG_WAIT));
            (end, started.elapsed())
        });
        // Appends to partition 0 must not wake a waiter of partition 1 for good.
        let other = scope.spawn(|| ok("wait_beyond", log.wait_beyond(1, 0, SHORT_WAIT)));
        is_waiting
            .recv()
            .expect("the waiter thread stopped before waiting");
        assert_eq!(
            ok("append", log.append(0, &[b"second"])),
            1,
            "expected the append to get offset 1"
        );
        let (end, waited) = waiter.join().expect("the waiter thread panicked");
        (
            end,
            waited,
            other.join().expect("the other waiter thread panicked"),
        )
    });
    assert!(
        end >= 2,
        "expected the waiter to see the end move past 1, found {end}"
    );
    assert!(
        waited < LONG_WAIT / 2,
        "expected the append to wake the waiter, found a wait of {waited:?}"
    );
    assert_eq!(
        other_end, 0,
        "expected partition 1 to stay empty while partition 0 grew"
    );
}

/// Every call on a partition outside `0..partitions` fails with `NoSuchPartition`.
pub fn log_rejects_a_partition_it_does_not_have<L: Log>(create: &(impl Fn(u32) -> L + Sync)) {
    let log = create(2);
    for bad in [2, u32::MAX] {
        let expect_bad = |what: &str, result: Result<(), StoreError>| match result {
            Err(StoreError::NoSuchPartition {
                partitions: 2,
                found,
            }) if found == bad => {}
            other => panic!(
                "{what}: expected NoSuchPartition {{ partitions: 2, found: {bad} }}, found {other:?}"
            ),
        };
        expect_bad("append", log.append(bad, &[b"x"]).map(|_| ()));
        expect_bad("read", log.read(bad, 0, 10).map(|_| ()));
        expect_bad("end_offset", log.end_offset(bad).map(|_| ()));
        expect_bad(
            "wait_beyond",
            log.wait_beyond(bad, 0, Duration::ZERO).map(|_| ()),
        );
    }
    assert_eq!(
        ok("end_offset", log.end_offset(0)),
        0,
        "expected a refused append to write nothing"
    );
}

/// A reopened log holds every record with its offset and continues at the end offset.
pub fn log_reopen_keeps_everything<L: Log>(
    create: &(impl Fn(u32) -> L + Sync),
    reopen: &impl Fn(L) -> L,
) {
    let log = create(2);
    ok("append", log.append(0, &[b"a", b"b"]));
    ok("append", log.append(1, &[b"x"]));
    ok("append", log.append(0, &[b"c"]));
    let log = reopen(log);
    assert_eq!(
        log.partitions(),
        2,
        "expected the partition count to survive a reopen"
    );
    assert_eq!(
        ok("read after reopen", log.read(0, 0, 10)),
        records(0, &[b"a", b"b", b"c"]),
        "expected partition 0 intact"
    );
    assert_eq!(
        ok("read after reopen", log.read(1, 0, 10)),
        records(0, &[b"x"]),
        "expected partition 1 intact"
    );
    assert_eq!(
        ok("end_offset after reopen", log.end_offset(0)),
        3,
        "expected partition 0 to end at 3 after reopen"
    );
    assert_eq!(
        ok("append after reopen", log.append(0, &[b"d"])),
        3,
        "expected appends to continue at the end offset"
    );
    assert_eq!(
        ok("append after reopen", log.append(1, &[b"y"])),
        1,
        "expected appends to continue at the end offset"
    );
    let log = reopen(log);
    assert_eq!(
        ok("read after second reopen", log.read(0, 0, 10)),
        records(0, &[b"a", b"b", b"c", b"d"]),
        "expected 4 records"
    );
}

/// `get` sees what `write` put, overwrote or deleted; tables are independent.
pub fn store_get_put_delete<S: Store>(create: &(impl Fn() -> S + Sync)) {
    let store = create();
    assert_eq!(
        ok("get of a new store", store.get(TABLE_A, b"k")),
        None,
        "expected a new store to be empty"
    );
    ok(
        "write",
        store.write(vec![
            put(TABLE_A, b"k", b"1"),
            put(TABLE_B, b"k", b"2"),
            put(TABLE_A, b"", b"empty key"),
        ]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"k")),
        Some(b"1".to_vec()),
        "expected the value put in table a"
    );
    assert_eq!(
        ok("get", store.get(TABLE_B, b"k")),
        Some(b"2".to_vec()),
        "expected table b's own value for the same key"
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"")),
        Some(b"empty key".to_vec()),
        "expected the empty key to hold a value"
    );
    assert_eq!(
        ok("get", store.get(TABLE_A_LONGER, b"")),
        None,
        "expected table a1 apart from table a"
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"k\0")),
        None,
        "expected no value for a longer key"
    );

    ok(
        "write",
        store.write(vec![put(TABLE_A, b"k", b"overwritten")]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"k")),
        Some(b"overwritten".to_vec()),
        "expected the overwritten value"
    );
    ok(
        "write",
        store.write(vec![del(TABLE_A, b"k"), del(TABLE_A, b"never there")]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"k")),
        None,
        "expected the deleted key gone"
    );
    assert_eq!(
        ok("get", store.get(TABLE_B, b"k")),
        Some(b"2".to_vec()),
        "expected a delete in table a to leave table b"
    );
    ok("empty write", store.write(Vec::new()));

    let big = vec![0x5au8; 1 << 20];
    ok(
        "write",
        store.write(vec![
            put(TABLE_B, b"big", &big),
            put(TABLE_B, b"nothing", b""),
        ]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_B, b"big")),
        Some(big),
        "expected a 1 MiB value back intact"
    );
    assert_eq!(
        ok("get", store.get(TABLE_B, b"nothing")),
        Some(Vec::new()),
        "expected an empty value, not an absent one"
    );
}

/// All writes of a batch land, later writes to a key winning over earlier ones.
pub fn store_batch_applies_whole_and_in_order<S: Store>(create: &(impl Fn() -> S + Sync)) {
    let store = create();
    ok(
        "write",
        store.write(vec![
            put(TABLE_A, b"put-then-delete", b"x"),
            del(TABLE_A, b"put-then-delete"),
            put(TABLE_A, b"twice", b"first"),
            put(TABLE_A, b"twice", b"second"),
            put(TABLE_B, b"other table", b"y"),
        ]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"put-then-delete")),
        None,
        "expected the later delete to win"
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"twice")),
        Some(b"second".to_vec()),
        "expected the later put to win"
    );
    assert_eq!(
        ok("get", store.get(TABLE_B, b"other table")),
        Some(b"y".to_vec()),
        "expected the whole batch applied"
    );
    ok(
        "write",
        store.write(vec![
            del(TABLE_A, b"twice"),
            put(TABLE_A, b"twice", b"back"),
        ]),
    );
    assert_eq!(
        ok("get", store.get(TABLE_A, b"twice")),
        Some(b"back".to_vec()),
        "expected a put after a delete to win"
    );
}

/// `scan` returns keys of one table that start with the prefix, from `start` (included) on,
/// in bytewise order, at most `max`.
pub fn store_scan_keeps_prefix_start_max_and_order<S: Store>(create: &(impl Fn() -> S + Sync)) {
    let store = create();
    let keys: [&[u8]; 10] = [
        b"b",
        b"abd",
        b"a",
        b"ab",
        b"ac",
        b"abc",
        &[0xff],
        &[0xff, 0x00],
        &[0xff, 0xff],
        &[0x00],
    ];
    ok(
        "write",
        store.write(keys.iter().map(|k| put(TABLE_A, k, &value_of(k))).collect()),
    );
    ok(
        "write",
        store.write(vec![
            put(TABLE_A_LONGER, b"ab", b"other"),
            put(TABLE_B, b"abc", b"other"),
        ]),
    );
    let check = |prefix: &[u8], start: &[u8], max: usize, expected: &[&[u8]]| {
        let found = ok("scan", store.scan(TABLE_A, prefix, start, max));
        let expected: Vec<(Vec<u8>, Vec<u8>)> =
            expected.iter().map(|k| (k.to_vec(), value_of(k))).collect();
        assert_eq!(
            found, expected,
            "expected scan(prefix {prefix:?}, start {start:?}, max {max})"
        );
    };
    check(b"ab", b"", 10, &[b"ab", b"abc", b"abd"]);
    check(b"ab", b"abc", 10, &[b"abc", b"abd"]);
    check(b"ab", b"abca", 10, &[b"abd"]);
    check(b"ab", b"abe", 10, &[]);
    check(b"ab", b"a", 10, &[b"ab", b"abc", b"abd"]);
    check(b"ab", b"", 1, &[b"ab"]);
    check(b"ab", b"", 0, &[]);
    check(
        b"",
        b"",
        100,
        &[
            &[0x00],
            b"a",
            b"ab",
            b"abc",
            b"abd",
            b"ac",
            b"b",
            &[0xff],
            &[0xff, 0x00],
            &[0xff, 0xff],
        ],
    );
    check(b"", b"ac", 3, &[b"ac", b"b", &[0xff]]);
    check(&[0xff], b"", 10, &[&[0xff], &[0xff, 0x00], &[0xff, 0xff]]);
    check(&[0xff, 0xff], b"", 10, &[&[0xff, 0xff]]);
    check(b"zz", b"", 10, &[]);
    let other = ok("scan", store.scan(TABLE_A_LONGER, b"", b"", 10));
    assert_eq!(
        other,
        vec![(b"ab".to_vec(), b"other".to_vec())],
        "expected table a1 to hold only its own key"
    );
}

/// Paging a table with `scan`, restarting after the last key, visits every key once.
pub fn store_scan_pages<S: Store>(create: &(impl Fn() -> S + Sync)) {
    let store = create();
    let keys: Vec<Vec<u8>> = (0..25u32)
        .map(|i| format!("page/{i:03}").into_bytes())
        .collect();
    ok(
        "write",
        store.write(keys.iter().map(|k| put(TABLE_B, k, &value_of(k))).collect()),
    );
    ok(
        "write",
        store.write(vec![
            put(TABLE_B, b"pagf", b"after the prefix"),
            put(TABLE_B, b"pagd", b"before"),
        ]),
    );
    let mut start = Vec::new();
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = ok("scan page", store.scan(TABLE_B, b"page/", &start, 10));
        let Some((last, _)) = page.last() else { break };
        start = last.clone();
        start.push(0);
        seen.extend(page.into_iter().map(|(k, _)| k));
        pages += 1;
        assert!(pages <= 3, "expected 3 pages of 25 keys, found more");
    }
    assert_eq!(
        seen, keys,
        "expected every key of the prefix once, in order"
    );
}

/// Threads writing at once: every write lands.
pub fn store_concurrent_writes_all_land<S: Store>(create: &(impl Fn() -> S + Sync)) {
    let store = create();
    let store = &store;
    thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for i in 0..CALLS_PER_THREAD {
                    let key = format!("t{t}/{i:03}").into_bytes();
                    ok(
                        "concurrent write",
                        store.write(vec![
                            put(TABLE_A, &key, &value_of(&key)),
                            put(TABLE_B, &key, b"b"),
                        ]),
                    );
                }
            });
        }
    });
    let all = ok("scan", store.scan(TABLE_A, b"t", b"", usize::MAX));
    assert_eq!(
        all.len(),
        THREADS * CALLS_PER_THREAD,
        "expected every concurrent write to land"
    );
    for (key, value) in &all {
        assert_eq!(
            value,
            &value_of(key),
            "expected key {key:?} to hold its own value"
        );
        assert_eq!(
            ok("get", store.get(TABLE_B, key)),
            Some(b"b".to_vec()),
            "expected the batch's second write too"
        );
    }
}

/// A reopened store holds every write, deletes included.
pub fn store_reopen_keeps_everything<S: Store>(
    create: &(impl Fn() -> S + Sync),
    reopen: &impl Fn(S) -> S,
) {
    let store = create();
    ok(
        "write",
        store.write(vec![
            put(TABLE_A, b"kept", b"1"),
            put(TABLE_A, b"deleted", b"2"),
            put(TABLE_B, b"kept", b"3"),
        ]),
    );
    ok(
        "write",
        store.write(vec![
            del(TABLE_A, b"deleted"),
            put(TABLE_A, b"kept", b"1 again"),
        ]),
    );
    let store = reopen(store);
    assert_eq!(
        ok("get after reopen", store.get(TABLE_A, b"kept")),
        Some(b"1 again".to_vec()),
        "expected the last value"
    );
    assert_eq!(
        ok("get after reopen", store.get(TABLE_A, b"deleted")),
        None,
        "expected the delete to survive"
    );
    assert_eq!(
        ok("get after reopen", store.get(TABLE_B, b"kept")),
        Some(b"3".to_vec()),
        "expected table b intact"
    );
    let scanned = ok("scan after reopen", store.scan(TABLE_A, b"", b"", 10));
    assert_eq!(
        scanned,
        vec![(b"kept".to_vec(), b"1 again".to_vec())],
        "expected exactly one key in table a"
    );
}

/// Every record of `partition`, read in pages, with dense offsets from 0.
fn read_all<L: Log>(log: &L, partition: u32) -> Vec<LogRecord> {
    let mut all: Vec<LogRecord> = Vec::new();
    loop {
        let page = ok("read", log.read(partition, all.len() as u64, 64));
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
        ok("end_offset", log.end_offset(partition)),
        all.len() as u64,
        "expected the end offset after the last record"
    );
    all
}

fn records(first: u64, bytes: &[&[u8]]) -> Vec<LogRecord> {
    bytes
        .iter()
        .zip(first..)
        .map(|(b, offset)| LogRecord {
            offset,
            bytes: b.to_vec(),
        })
        .collect()
}

fn put(table: &'static str, key: &[u8], value: &[u8]) -> Write {
    Write::Put {
        table,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn del(table: &'static str, key: &[u8]) -> Write {
    Write::Delete {
        table,
        key: key.to_vec(),
    }
}

fn value_of(key: &[u8]) -> Vec<u8> {
    let mut value = b"value of ".to_vec();
    value.extend_from_slice(key);
    value
}

#[track_caller]
fn ok<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: expected success, found {e}"),
    }
}
