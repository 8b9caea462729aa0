//! `CqlStore` against the conformance body of the store port, plus what the CQL layout adds:
//! scans that merge the root partition with zero-byte buckets (checked against an in-memory
//! model), bytewise unsigned key order, large values in chunks, the schema, bad input, and
//! use from async callers.

use std::collections::BTreeMap;

use refill_store::{Store, StoreError, Write, conformance};
use refill_store_cql::{
    CHUNK_BYTES, CqlStore, INLINE_VALUE_BYTES_MAX, KEY_BYTES_MAX, WRITE_BYTES_MAX,
};

use crate::{Keyspaces, reopen, server};

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

#[test]
fn cql_store_passes_conformance() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    conformance::store_conformance(|| keyspaces.fresh(), reopen);
}

#[test]
fn keys_order_bytewise_unsigned() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let keys: [&[u8]; 7] = [
        &[0x80],
        &[0x01],
        &[0x7f],
        &[0xff],
        &[],
        &[0x7f, 0xff],
        &[0x80, 0x00],
    ];
    store
        .write(keys.iter().map(|k| put("order", k, b"v")).collect())
        .expect("write");
    let found: Vec<Vec<u8>> = store
        .scan("order", b"", b"", 100)
        .expect("scan")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let expected: [&[u8]; 7] = [
        &[],
        &[0x01],
        &[0x7f],
        &[0x7f, 0xff],
        &[0x80],
        &[0x80, 0x00],
        &[0xff],
    ];
    assert_eq!(
        found,
        expected.map(<[u8]>::to_vec),
        "expected unsigned bytewise order, shorter first on a common prefix"
    );
}

/// A small deterministic generator (no dependency needed for a test model).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A short key over bytes that exercise the bucket boundaries.
    fn key(&mut self) -> Vec<u8> {
        const BYTES: [u8; 5] = [0x00, 0x01, b'a', b'b', 0xff];
        let len = self.below(5) as usize;
        (0..len).map(|_| BYTES[self.below(5) as usize]).collect()
    }
}

#[test]
fn scans_across_buckets_match_a_model() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut rng = Lcg(7);
    for round in 0..30 {
        let mut batch = Vec::new();
        for i in 0..8 {
            let key = rng.key();
            if rng.below(4) == 0 {
                model.remove(&key);
                batch.push(del("model", &key));
            } else {
                let value = format!("r{round}-{i}").into_bytes();
                model.insert(key.clone(), value.clone());
                batch.push(put("model", &key, &value));
            }
        }
        store.write(batch).expect("write");
    }
    for _ in 0..300 {
        let prefix = rng.key();
        let prefix = &prefix[..prefix.len().min(2)];
        let start = rng.key();
        let max = [0, 1, 2, 3, 5, 100][rng.below(6) as usize];
        let expected: Vec<(Vec<u8>, Vec<u8>)> = model
            .range(start.clone()..)
            .filter(|(k, _)| k.starts_with(prefix))
            .take(max)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let found = store.scan("model", prefix, &start, max).expect("scan");
        assert_eq!(
            found, expected,
            "expected scan(prefix {prefix:?}, start {start:?}, max {max}) as the model"
        );
    }
    for (key, value) in &model {
        assert_eq!(
            store.get("model", key).expect("get"),
            Some(value.clone()),
            "expected key {key:?} as the model"
        );
    }
}

#[test]
fn a_customer_prefix_is_one_partition() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let row = |customer: &str, seq: u64| {
        let mut key = format!("{customer}\0usd\0").into_bytes();
        key.extend_from_slice(&seq.to_be_bytes());
        key
    };
    let mut writes = Vec::new();
    for customer in ["cus_a", "cus_b", "cus_c"] {
        for seq in 0..20 {
            writes.push(put("ledger", &row(customer, seq), &seq.to_be_bytes()));
        }
    }
    store.write(writes).expect("write");
    let ks = store.keyspace().to_owned();
    assert_eq!(
        keyspaces.count(&format!(
            "SELECT COUNT(*) FROM {ks}.kv WHERE tbl = 'ledger' AND bucket = 0x6375735f6200"
        )),
        20,
        "expected customer cus_b's 20 rows in the partition of bucket 'cus_b\\0'"
    );
    assert_eq!(
        keyspaces.count(&format!(
            "SELECT COUNT(*) FROM {ks}.kv_buckets WHERE tbl = 'ledger'"
        )),
        3,
        "expected one directory row per customer"
    );
    let page = store
        .scan("ledger", b"cus_b\0usd\0", &row("cus_b", 5), 3)
        .expect("scan");
    let seqs: Vec<Vec<u8>> = page.into_iter().map(|(_, v)| v).collect();
    assert_eq!(
        seqs,
        [5u64, 6, 7].map(|s| s.to_be_bytes().to_vec()),
        "expected rows 5, 6, 7 of cus_b"
    );
    let all = store.scan("ledger", b"cus_", b"", 1000).expect("scan");
    assert_eq!(
        all.len(),
        60,
        "expected every customer's rows under prefix cus_"
    );
    assert!(
        all.windows(2).all(|w| w[0].0 < w[1].0),
        "expected the rows of all customers in key order"
    );
}

#[test]
fn large_values_are_chunked_replaced_and_dropped() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let ks = store.keyspace().to_owned();
    let chunks = |key: &str| {
        keyspaces.count(&format!(
            "SELECT COUNT(*) FROM {ks}.kv_chunks WHERE tbl = 'big' AND key = {key}"
        ))
    };
    let first: Vec<u8> = (0..3 * CHUNK_BYTES + 17).map(|i| (i % 251) as u8).collect();
    store
        .write(vec![
            put("big", b"snapshot", &first),
            put("big", b"small", b"s"),
        ])
        .expect("write of a 3 MiB value");
    assert_eq!(
        store.get("big", b"snapshot").expect("get"),
        Some(first.clone())
    );
    assert_eq!(
        chunks("0x736e617073686f74"),
        4,
        "expected 4 chunks of 1 MiB"
    );
    let scanned = store.scan("big", b"", b"", 10).expect("scan");
    assert_eq!(
        scanned,
        vec![
            (b"small".to_vec(), b"s".to_vec()),
            (b"snapshot".to_vec(), first)
        ],
        "expected the scan to resolve the chunked value"
    );

    let second = vec![0x5a; INLINE_VALUE_BYTES_MAX + 1];
    store
        .write(vec![put("big", b"snapshot", &second)])
        .expect("overwrite");
    assert_eq!(store.get("big", b"snapshot").expect("get"), Some(second));
    assert_eq!(
        chunks("0x736e617073686f74"),
        1,
        "expected the older version's chunks range-deleted by the overwrite"
    );

    let at_limit = vec![7u8; INLINE_VALUE_BYTES_MAX];
    store
        .write(vec![put("big", b"inline", &at_limit)])
        .expect("write");
    assert_eq!(store.get("big", b"inline").expect("get"), Some(at_limit));
    assert_eq!(
        chunks("0x696e6c696e65"),
        0,
        "expected a 64 KiB value inline"
    );

    store.write(vec![del("big", b"snapshot")]).expect("delete");
    assert_eq!(store.get("big", b"snapshot").expect("get"), None);
    assert_eq!(
        chunks("0x736e617073686f74"),
        0,
        "expected the delete to drop the chunks"
    );
    let store = reopen(store);
    assert_eq!(
        store.get("big", b"small").expect("get"),
        Some(b"s".to_vec())
    );
}

#[test]
fn migrate_twice_changes_nothing() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    store.write(vec![put("t", b"k", b"v")]).expect("write");
    store.migrate().expect("a second migrate");
    let store = reopen(store);
    store.migrate().expect("a migrate from another connection");
    assert_eq!(store.get("t", b"k").expect("get"), Some(b"v".to_vec()));
}

#[test]
fn calls_before_migrate_name_the_missing_tables() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = CqlStore::connect(&address, &keyspaces.name()).expect("connects");
    match store.get("t", b"k") {
        Err(StoreError::Backend(message)) => assert!(
            message.contains("created by migrate"),
            "expected the error to point at migrate, found {message}"
        ),
        other => panic!("expected a Backend error before migrate, found {other:?}"),
    }
    store.migrate().expect("migrate");
    assert_eq!(store.get("t", b"k").expect("get after migrate"), None);
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let long_key = vec![b'k'; KEY_BYTES_MAX + 1];
    let result = store.write(vec![put("t", b"ok", b"v"), put("t", &long_key, b"v")]);
    assert!(
        matches!(result, Err(StoreError::InvalidRequest(_))),
        "expected InvalidRequest for a key above {KEY_BYTES_MAX} bytes, found {result:?}"
    );
    assert_eq!(
        store.get("t", b"ok").expect("get"),
        None,
        "expected nothing of the batch"
    );
    let too_much: Vec<Write> = (0..300u32)
        .map(|i| {
            put(
                "t",
                &i.to_be_bytes(),
                &vec![1u8; INLINE_VALUE_BYTES_MAX - 8],
            )
        })
        .collect();
    let result = store.write(too_much);
    assert!(
        matches!(result, Err(StoreError::InvalidRequest(_))),
        "expected InvalidRequest for a write above {WRITE_BYTES_MAX} bytes, found {result:?}"
    );
    let long_table: &'static str = Box::leak("t".repeat(256).into_boxed_str());
    assert!(matches!(
        store.get(long_table, b"k"),
        Err(StoreError::InvalidRequest(_))
    ));
    assert!(matches!(
        CqlStore::connect(&address, "Not-A-Keyspace"),
        Err(StoreError::InvalidRequest(_))
    ));
    match CqlStore::connect("127.0.0.1:1", "refill") {
        Err(StoreError::Backend(message)) => assert!(
            message.contains("127.0.0.1:1"),
            "expected the error to name the address, found {message}"
        ),
        Err(other) => panic!("expected a Backend error for a closed port, found {other}"),
        Ok(_) => panic!("expected a Backend error for a closed port, found a session"),
    }
}

#[test]
fn async_callers_use_blocking_tasks_and_may_drop_it_anywhere() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = std::sync::Arc::new(keyspaces.fresh());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a caller runtime");
    runtime.block_on(async {
        let tasks: Vec<_> = (0..8u8)
            .map(|i| {
                let store = std::sync::Arc::clone(&store);
                tokio::task::spawn_blocking(move || {
                    store.write(vec![put("async", &[b'k', i], &[i])])
                })
            })
            .collect();
        for task in tasks {
            task.await
                .expect("the task ran")
                .expect("write from a blocking task");
        }
        let found = store.scan("async", b"k", b"", 100).expect("scan");
        assert_eq!(found.len(), 8, "expected the 8 writes");
        // Dropping the last handle inside an async task must not panic.
        drop(store);
    });
}

#[test]
fn a_write_across_many_partitions_lands_whole_or_names_the_server_limit() {
    // 200 customers' rows of 1 KiB: a 200 KiB batch across 200 partitions, above Cassandra's
    // default `batch_size_fail_threshold` (50 KiB). Whatever the server's setting, the write
    // must either land whole or fail whole with an error that names the setting.
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let key = |c: usize| format!("cus_{c:03}\0usd\0").into_bytes();
    let writes = (0..200)
        .map(|c| put("wide", &key(c), &[b'x'; 1024]))
        .collect();
    let landed = store.scan("wide", b"cus_", b"", 1000);
    assert_eq!(landed.expect("scan").len(), 0);
    match store.write(writes) {
        Ok(()) => {
            println!("note: the server took a 200 KiB batch across 200 partitions");
            let landed = store.scan("wide", b"cus_", b"", 1000).expect("scan");
            assert_eq!(landed.len(), 200, "expected the whole batch");
        }
        Err(StoreError::Backend(message)) if message.contains("batch_size_fail_threshold") => {
            println!("note: the server refused a 200 KiB multi-partition batch: {message}");
            let landed = store.scan("wide", b"cus_", b"", 1000).expect("scan");
            assert_eq!(landed.len(), 0, "expected nothing of a refused batch");
        }
        Err(other) => panic!(
            "expected the batch applied, or refused naming batch_size_fail_threshold, found {other}"
        ),
    }
}
