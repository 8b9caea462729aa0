//! `Embedded` against the conformance body of the ports, plus what only the embedded
//! implementation promises (persisted partition count, group commit, whole batches).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread;

use refill_store::embedded::Embedded;
use refill_store::{Log, Store, StoreError, Write, conformance};
use tempfile::TempDir;

/// Temporary directories that live as long as the fixture, one per opened database.
#[derive(Default)]
struct Dirs(Mutex<Vec<TempDir>>);

impl Dirs {
    fn fresh(&self) -> PathBuf {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().to_owned();
        self.0.lock().expect("dirs lock").push(dir);
        path
    }

    fn open(&self, partitions: u32) -> Embedded {
        Embedded::open(&self.fresh(), partitions).expect("a new embedded database opens")
    }
}

fn reopen(embedded: Embedded) -> Embedded {
    let dir = embedded.dir().to_owned();
    let partitions = embedded.partitions();
    drop(embedded);
    Embedded::open(&dir, partitions).expect("the embedded database reopens")
}

#[test]
fn embedded_log_passes_conformance() {
    let dirs = Dirs::default();
    conformance::log_conformance(|partitions| dirs.open(partitions), reopen);
}

#[test]
fn embedded_store_passes_conformance() {
    let dirs = Dirs::default();
    conformance::store_conformance(|| dirs.open(1), reopen);
}

#[test]
fn reopen_with_another_partition_count_is_refused() {
    let dirs = Dirs::default();
    let embedded = dirs.open(4);
    let dir = embedded.dir().to_owned();
    drop(embedded);
    match Embedded::open(&dir, 8) {
        Err(StoreError::PartitionsChanged {
            stored: 4,
            requested: 8,
        }) => {}
        Err(e) => panic!("expected PartitionsChanged {{ stored: 4, requested: 8 }}, found {e}"),
        Ok(_) => panic!(
            "expected PartitionsChanged {{ stored: 4, requested: 8 }}, found the database open"
        ),
    }
    let again = Embedded::open(&dir, 4).expect("the right count still opens");
    assert_eq!(again.partitions(), 4);
}

#[test]
fn zero_partitions_is_refused() {
    let dirs = Dirs::default();
    assert!(matches!(
        Embedded::open(&dirs.fresh(), 0),
        Err(StoreError::InvalidRequest(_))
    ));
}

#[test]
fn one_database_serves_as_log_and_store() {
    let dirs = Dirs::default();
    let embedded = Arc::new(dirs.open(2));
    let log: Arc<dyn Log> = embedded.clone();
    let store: Arc<dyn Store> = embedded;
    assert_eq!(log.append(1, &[b"r"]).expect("append"), 0);
    store
        .write(vec![Write::Put {
            table: "t",
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }])
        .expect("write");
    assert_eq!(store.get("t", b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(log.end_offset(1).expect("end_offset"), 1);
}

#[test]
fn concurrent_appends_share_syncs() {
    const THREADS: u64 = 8;
    const APPENDS: u64 = 20;
    let dirs = Dirs::default();
    let embedded = dirs.open(1);
    let embedded = &embedded;
    thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                for a in 0..APPENDS {
                    let record = format!("{t}/{a}");
                    embedded.append(0, &[record.as_bytes()]).expect("append");
                }
            });
        }
    });
    let commits = embedded.commits();
    // `open` writes no group, so every commit here is one of the appends' groups.
    assert!(
        commits < THREADS * APPENDS,
        "expected concurrent appends to share syncs, found {commits} commits for {} appends",
        THREADS * APPENDS
    );
    assert_eq!(
        embedded.end_offset(0).expect("end_offset"),
        THREADS * APPENDS
    );
}

#[test]
fn a_batch_becomes_visible_whole() {
    // One writer puts the same number under two keys in one batch, again and again; a reader
    // that reads key b first and key a second must never find a older than b.
    const ROUNDS: u64 = 200;
    let dirs = Dirs::default();
    let embedded = dirs.open(1);
    let embedded = &embedded;
    let number = |value: Option<Vec<u8>>| -> u64 {
        value.map_or(0, |v| {
            u64::from_be_bytes(v.try_into().expect("values are 8 bytes"))
        })
    };
    thread::scope(|scope| {
        scope.spawn(move || {
            for i in 1..=ROUNDS {
                let value = i.to_be_bytes().to_vec();
                embedded
                    .write(vec![
                        Write::Put {
                            table: "b",
                            key: b"k".to_vec(),
                            value: value.clone(),
                        },
                        Write::Put {
                            table: "a",
                            key: b"k".to_vec(),
                            value,
                        },
                    ])
                    .expect("write");
            }
        });
        scope.spawn(move || {
            loop {
                let b = number(embedded.get("b", b"k").expect("get b"));
                let a = number(embedded.get("a", b"k").expect("get a"));
                assert!(
                    a >= b,
                    "expected a batch visible whole, found a = {a} after b = {b}"
                );
                if b == ROUNDS {
                    break;
                }
            }
        });
    });
}

#[test]
fn an_invalid_write_applies_nothing_of_its_batch() {
    let dirs = Dirs::default();
    let embedded = dirs.open(1);
    let long_table: &'static str = Box::leak("t".repeat(300).into_boxed_str());
    let result = embedded.write(vec![
        Write::Put {
            table: "t",
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
        Write::Put {
            table: long_table,
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        },
    ]);
    assert!(
        matches!(result, Err(StoreError::InvalidRequest(_))),
        "expected InvalidRequest, found {result:?}"
    );
    assert_eq!(
        embedded.get("t", b"k").expect("get"),
        None,
        "expected nothing of the refused batch"
    );
}
