//! `CqlAccountStore` against the conformance body of the account-state port, plus what the
//! typed tables add: `migrate` creating them (twice is fine), plain decimals an operator
//! reads with the real `cqlsh`, decimals that are not exact micro-credits refused as
//! corrupt, a checkpoint that stays put when a row write fails, and the figures of a flush
//! and restore of 100 000 accounts (printed, not asserted).
//!
//! Without `REFILL_CASSANDRA` (or without cqlsh, for the cqlsh test) the tests print that
//! they were skipped; with `CI` set they fail instead, so a CI job cannot pass by skipping.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use refill_store::accounts::{
    AccountStateRow, AccountStore, BalanceRow, CheckpointRow, CustomerStateRow, Flush, LedgerRow,
};
use refill_store::{StoreError, accounts_conformance};
use refill_store_cql::{CqlAccountStore, CqlStore};

use crate::{Keyspaces, server};

/// Tables `migrate` creates for the account-state port.
const ACCOUNT_TABLES: [&str; 8] = [
    "balances",
    "ledger_entries",
    "recharge_attempts",
    "account_state",
    "customer_state",
    "dedup_chunks",
    "dedup_generations",
    "checkpoints",
];

/// True when the environment is a CI run, where skipping is a failure.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| !value.trim().is_empty())
}

/// The server's address; `None` (printed) when the test is to be skipped, a panic in CI.
fn cassandra() -> Option<String> {
    let address = server();
    assert!(
        address.is_some() || !in_ci(),
        "expected REFILL_CASSANDRA to be set in CI (deploy/local/up cassandra), found it unset"
    );
    address
}

/// The cqlsh binary: `REFILL_CQLSH`, else the venv `deploy/local/up cassandra` installs in
/// its cache (`${REFILL_CACHE:-$HOME/.cache/refill}/cqlsh-*/bin/cqlsh`). `None` (printed)
/// when absent, a panic in CI.
fn cqlsh() -> Option<PathBuf> {
    let found = std::env::var_os("REFILL_CQLSH")
        .map(PathBuf::from)
        .filter(|path| path.is_file())
        .or_else(|| {
            let cache = std::env::var_os("REFILL_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/refill"))
                })?;
            let mut venvs: Vec<PathBuf> = std::fs::read_dir(&cache)
                .ok()?
                .flatten()
                .filter(|entry| entry.file_name().to_string_lossy().starts_with("cqlsh-"))
                .map(|entry| entry.path().join("bin/cqlsh"))
                .filter(|path| path.is_file())
                .collect();
            venvs.sort();
            venvs.pop()
        });
    if found.is_none() {
        assert!(
            !in_ci(),
            "expected cqlsh in CI (REFILL_CQLSH, or the venv of deploy/local/up cassandra), \
             found none"
        );
        println!("skipped: cqlsh not found (set REFILL_CQLSH or run deploy/local/up cassandra)");
    }
    found
}

/// An account store on a new, migrated keyspace.
fn fresh(keyspaces: &Keyspaces) -> CqlAccountStore {
    CqlAccountStore::new(Arc::new(keyspaces.fresh()))
}

/// Closes `store` and connects again to the same keyspace.
fn reopen(store: CqlAccountStore) -> CqlAccountStore {
    let address = store.store().address().to_owned();
    let keyspace = store.store().keyspace().to_owned();
    drop(store);
    let cql = CqlStore::connect(&address, &keyspace).expect("reconnects");
    CqlAccountStore::new(Arc::new(cql))
}

#[test]
fn cql_account_store_passes_conformance() {
    let Some(address) = cassandra() else { return };
    let keyspaces = Keyspaces::new(&address);
    accounts_conformance::account_store_conformance(|| fresh(&keyspaces), reopen);
}

#[test]
fn accounts_migrate_creates_the_tables_and_twice_is_fine() {
    let Some(address) = cassandra() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = fresh(&keyspaces);
    let keyspace = store.store().keyspace().to_owned();
    store
        .flush(&Flush {
            balances: vec![balance("acme", "api", 50_000_000)],
            ..Flush::default()
        })
        .expect("flush");
    store.store().migrate().expect("a second migrate");
    for table in ACCOUNT_TABLES {
        assert_eq!(
            keyspaces.count(&format!(
                "SELECT COUNT(*) FROM system_schema.tables WHERE keyspace_name = '{keyspace}' \
                 AND table_name = '{table}'"
            )),
            1,
            "expected migrate to create table {table}"
        );
    }
    let store = reopen(store);
    store
        .store()
        .migrate()
        .expect("a migrate from another connection");
    assert_eq!(
        store.balances("acme").expect("balances"),
        vec![balance("acme", "api", 50_000_000)],
        "expected the balance to survive migrating again"
    );
}

#[test]
fn accounts_cqlsh_reads_plain_decimals() {
    let Some(address) = cassandra() else { return };
    let Some(cqlsh) = cqlsh() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = fresh(&keyspaces);
    let keyspace = store.store().keyspace().to_owned();
    let mut row = balance("acme", "api", 50_000_000);
    row.overdraft_micros = 1;
    store
        .flush(&Flush {
            balances: vec![row],
            entries: vec![LedgerRow {
                customer_id: "acme".into(),
                credit_type: "api".into(),
                seq: 0,
                at_ms: 1_767_225_600_000,
                kind: "usage".into(),
                amount_micros: -1_234_567,
                balance_after_micros: 48_765_433,
                reference: "log 0..42".into(),
            }],
            ..Flush::default()
        })
        .expect("flush");
    let (host, port) = address
        .rsplit_once(':')
        .expect("REFILL_CASSANDRA is host:port");
    let query = |cql: String| -> String {
        let output = Command::new(&cqlsh)
            .args([
                host,
                port,
                "--connect-timeout=20",
                "--request-timeout=30",
                "-e",
            ])
            .arg(&cql)
            .output()
            .expect("cqlsh runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "expected cqlsh to run {cql:?}, found {}: {stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let balances = query(format!(
        "SELECT credit_type, balance, overdraft, version FROM {keyspace}.balances \
         WHERE customer_id = 'acme';"
    ));
    println!("{balances}");
    let line = data_line(&balances, "api");
    assert_eq!(
        line,
        ["api", "50.000000", "0.000001", "3"],
        "expected cqlsh to print balance 50 credits as 50.000000 and overdraft 1 micro-credit \
         as 0.000001, found {balances}"
    );
    let ledger = query(format!(
        "SELECT seq, kind, amount, balance_after, reference FROM {keyspace}.ledger_entries \
         WHERE customer_id = 'acme' AND credit_type = 'api' AND seq >= 0 LIMIT 10;"
    ));
    println!("{ledger}");
    let line = data_line(&ledger, "0");
    assert_eq!(
        line,
        ["0", "usage", "-1.234567", "48.765433", "log 0..42"],
        "expected cqlsh to print the entry's amount and balance after as plain decimals, found \
         {ledger}"
    );
}

/// The cells of the data line of cqlsh's table output whose first cell is `first`.
fn data_line(output: &str, first: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| {
            line.split('|')
                .map(|cell| cell.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .find(|cells| cells.len() > 1 && cells[0] == first)
        .unwrap_or_else(|| panic!("expected a line starting with {first:?} in {output}"))
}

#[test]
fn accounts_decimals_that_are_not_micro_credits_are_corrupt() {
    let Some(address) = cassandra() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = fresh(&keyspaces);
    let keyspace = store.store().keyspace().to_owned();
    let inserts = [
        // What an operator might type: whole credits (scale 0) are exact and fine.
        format!(
            "INSERT INTO {keyspace}.balances (customer_id, credit_type, balance, overdraft, \
             as_of, version, shard) VALUES ('typed', 'api', 50, 0, 0, 1, 0)"
        ),
        format!(
            "INSERT INTO {keyspace}.balances (customer_id, credit_type, balance, overdraft, \
             as_of, version, shard) VALUES ('odd', 'api', 1.0000001, 0, 0, 1, 0)"
        ),
        format!(
            "INSERT INTO {keyspace}.ledger_entries (customer_id, credit_type, seq, at, kind, \
             amount, balance_after, reference) VALUES ('huge', 'api', 4, 0, 'grant', \
             100000000000000, 0, 'r')"
        ),
        format!(
            "INSERT INTO {keyspace}.balances (customer_id, credit_type, balance, as_of, \
             version, shard) VALUES ('partial', 'api', 1, 0, 1, 0)"
        ),
    ];
    keyspaces.raw(async move |session| {
        for cql in inserts {
            session
                .query_unpaged(cql.as_str(), ())
                .await
                .unwrap_or_else(|e| panic!("expected {cql} to apply, found {e}"));
        }
    });
    let typed = store
        .balances("typed")
        .expect("balances of an exact decimal");
    assert_eq!(
        typed.first().map(|row| row.balance_micros),
        Some(50_000_000),
        "expected a balance typed as 50 to read as 50 000 000 micro-credits"
    );
    expect_corrupt(
        store.balances("odd").map(|_| ()),
        &["balances", "\"odd\"", "balance", "10000001E-7"],
    );
    expect_corrupt(
        store.ledger("huge", "api", 0, 10).map(|_| ()),
        &["ledger_entries", "\"huge\"", "seq 4", "amount"],
    );
    expect_corrupt(
        store.balances("partial").map(|_| ()),
        &["balances", "\"partial\"", "overdraft", "null"],
    );
}

#[track_caller]
fn expect_corrupt(result: Result<(), StoreError>, parts: &[&str]) {
    match result {
        Err(StoreError::Corrupt(message)) => {
            for part in parts {
                assert!(
                    message.contains(part),
                    "expected the Corrupt error to contain {part:?}, found {message:?}"
                );
            }
        }
        other => panic!("expected Corrupt containing {parts:?}, found {other:?}"),
    }
}

#[test]
fn accounts_a_failed_row_write_leaves_the_checkpoint_as_it_was() {
    let Some(address) = cassandra() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = fresh(&keyspaces);
    let keyspace = store.store().keyspace().to_owned();
    let first = checkpoint(1, 1);
    store
        .flush(&Flush {
            accounts: vec![account(0, 1, b"one")],
            checkpoint: Some(first.clone()),
            ..Flush::default()
        })
        .expect("flush 1");
    // Every write to ledger_entries now fails on the server.
    keyspaces.raw(async move |session| {
        session
            .query_unpaged(format!("DROP TABLE {keyspace}.ledger_entries"), ())
            .await
            .expect("the table drops");
    });
    let failed = store.flush(&Flush {
        accounts: vec![account(1, 2, b"two")],
        entries: (0..5)
            .map(|seq| LedgerRow {
                customer_id: "acme".into(),
                credit_type: "api".into(),
                seq,
                at_ms: 0,
                kind: "usage".into(),
                amount_micros: -1,
                balance_after_micros: 0,
                reference: String::new(),
            })
            .collect(),
        checkpoint: Some(checkpoint(2, 1)),
        ..Flush::default()
    });
    assert!(
        matches!(failed, Err(StoreError::Backend(_))),
        "expected the flush to fail when its ledger rows cannot be written, found {failed:?}"
    );
    assert_eq!(
        store.checkpoint(0).expect("checkpoint"),
        Some(first),
        "expected the checkpoint of flush 1 still, since flush 2's rows did not all land"
    );
    assert_eq!(
        store.load_shard(0).expect("load_shard").accounts,
        vec![(0, b"one".to_vec())],
        "expected flush 1's state in a restore"
    );
}

/// Accounts of the measured flush (two state buckets: 65 536 + 34 464).
const MEASURED_ACCOUNTS: u32 = 100_000;
/// Accounts per customer in it (two credit types each).
const ACCOUNTS_PER_CUSTOMER: u32 = 2;

#[test]
fn accounts_flush_and_restore_of_100k_accounts_measured() {
    let Some(address) = cassandra() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = fresh(&keyspaces);
    let customers = MEASURED_ACCOUNTS / ACCOUNTS_PER_CUSTOMER;
    let state = |handle: u32| -> Vec<u8> {
        // About the size of the core's encoding of an account.
        let mut bytes = format!("account {handle} ").into_bytes();
        bytes.resize(96, 0xa5);
        bytes
    };
    let customer_of = |handle: u32| format!("customer-{:06}", handle / ACCOUNTS_PER_CUSTOMER);
    let credit_type_of =
        |handle: u32| ["api", "compute"][(handle % ACCOUNTS_PER_CUSTOMER) as usize];
    let flush = Flush {
        balances: (0..MEASURED_ACCOUNTS)
            .map(|handle| {
                balance(
                    &customer_of(handle),
                    credit_type_of(handle),
                    i64::from(handle),
                )
            })
            .collect(),
        accounts: (0..MEASURED_ACCOUNTS)
            .map(|handle| AccountStateRow {
                shard: 0,
                handle,
                slot: 0,
                version: 1,
                state: state(handle),
            })
            .collect(),
        customers: (0..customers)
            .map(|index| CustomerStateRow {
                shard: 0,
                index,
                slot: 0,
                version: 1,
                customer_id: format!("customer-{index:06}"),
                state: vec![0x5a; 64],
            })
            .collect(),
        entries: (0..MEASURED_ACCOUNTS)
            .map(|handle| LedgerRow {
                customer_id: customer_of(handle),
                credit_type: credit_type_of(handle).into(),
                seq: 0,
                at_ms: 1_767_225_600_000,
                kind: "grant".into(),
                amount_micros: 100_000_000,
                balance_after_micros: 100_000_000,
                reference: format!("grant-{handle}"),
            })
            .collect(),
        checkpoint: Some(CheckpointRow {
            accounts: MEASURED_ACCOUNTS,
            customers,
            ..checkpoint(1, 0)
        }),
        ..Flush::default()
    };
    let rows =
        flush.balances.len() + flush.accounts.len() + flush.customers.len() + flush.entries.len();
    let started = Instant::now();
    store.flush(&flush).expect("the 100k-account flush");
    let flushed = started.elapsed();

    let started = Instant::now();
    let restored = store.load_shard(0).expect("the 100k-account restore");
    let loaded = started.elapsed();
    assert_eq!(
        restored.accounts.len(),
        MEASURED_ACCOUNTS as usize,
        "expected one state per account, across both buckets"
    );
    for handle in [0, 1, 65_535, 65_536, 65_537, MEASURED_ACCOUNTS - 1] {
        assert_eq!(
            restored.accounts[handle as usize],
            (0, state(handle)),
            "expected handle {handle}'s state at its index"
        );
    }
    assert_eq!(restored.customers.len(), customers as usize);
    let rows_per_second = rows as u128 * 1000 / flushed.as_millis().max(1);
    println!(
        "flush of {MEASURED_ACCOUNTS} accounts ({rows} rows: balances, account and customer \
         states, ledger entries): {} ms, {rows_per_second} rows/s; load_shard: {} ms ({} \
         accounts, {} customers)",
        flushed.as_millis(),
        loaded.as_millis(),
        restored.accounts.len(),
        restored.customers.len()
    );
}

/// A balance row written by flush 3 of shard 0.
fn balance(customer_id: &str, credit_type: &str, balance_micros: i64) -> BalanceRow {
    BalanceRow {
        customer_id: customer_id.into(),
        credit_type: credit_type.into(),
        balance_micros,
        overdraft_micros: 0,
        auto_recharge_status: Some("active".into()),
        paused_reason: None,
        as_of_ms: 1_767_225_600_000,
        version: 3,
        shard: 0,
    }
}

/// The state of account 0 of shard 0 in `slot`, written by flush `version`.
fn account(slot: u8, version: u64, state: &[u8]) -> AccountStateRow {
    AccountStateRow {
        shard: 0,
        handle: 0,
        slot,
        version,
        state: state.to_vec(),
    }
}

/// A checkpoint of shard 0 without Kafka sources.
fn checkpoint(version: u64, accounts: u32) -> CheckpointRow {
    CheckpointRow {
        shard: 0,
        version,
        log_next: version * 10,
        sources: None,
        as_of_ms: 1_767_225_600_000,
        accounts,
        customers: 0,
        dedup_generation_min: 0,
        meta: Vec::new(),
    }
}
