//! The generic test body of the account-state port: every implementation of
//! [`AccountStore`] (the key-value one over the embedded store, the CQL one) runs these same
//! checks from its tests, so a restore reads the same rows whichever store wrote them.
//! Enabled by the cargo feature `conformance`.
//!
//! Each check panics with what it expected and what it found. [`account_store_conformance`]
//! runs them all; the single checks are public too, for finer tests. The fixtures are two
//! closures: `create` opens a new, empty store, `reopen` closes one (it receives the handle)
//! and opens the same storage again.

use crate::StoreError;
use crate::accounts::{
    AccountStateRow, AccountStore, AttemptRow, BalanceRow, CheckpointRow, CustomerStateRow,
    DedupChunkRow, Flush, LedgerRow, ShardRows,
};

/// A plausible time (ms since the epoch) the fixtures start from.
const T0_MS: i64 = 1_767_225_600_000;

/// Runs every account-state check. `create()` opens a new, empty store; `reopen(store)`
/// closes `store` and opens the same store again.
pub fn account_store_conformance<A: AccountStore>(
    create: impl Fn() -> A + Sync,
    reopen: impl Fn(A) -> A,
) {
    accounts_rows_read_back_exactly(&create);
    accounts_newer_balance_replaces_older(&create);
    accounts_load_without_checkpoint_is_empty(&create);
    accounts_load_restores_slots_and_dedup(&create);
    accounts_partial_flush_is_invisible_to_restore(&create);
    accounts_missing_state_is_corrupt(&create);
    accounts_shards_are_independent(&create);
    accounts_decimals_round_trip(&create);
    accounts_many_accounts_restore(&create);
    accounts_reopen_keeps_everything(&create, &reopen);
}

/// Balances, ledger entries and attempts read back exactly as flushed: per customer in
/// credit type order, per account in seq order with `from_seq`/`limit` paging, never mixed
/// with a customer (or credit type) whose id extends another's.
pub fn accounts_rows_read_back_exactly<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    let store = create();
    // Given out of order, so the store's order is what the reads show.
    let balances = vec![
        balance("acme", "storage", 3_000_000, 1, 0),
        balance("acme2", "api", 7_000_000, 1, 0),
        balance("acme", "api", 1_000_000, 1, 0),
        balance("acm", "api", 9_000_000, 1, 1),
        balance("acme", "compute", -2_500_000, 1, 0),
        balance("acme", "api2", 4_000_000, 1, 0),
    ];
    let mut entries = Vec::new();
    for seq in (0..10).rev() {
        entries.push(entry("acme", "api", seq));
    }
    for seq in 0..3 {
        entries.push(entry("acme", "api2", seq));
        entries.push(entry("acme", "compute", seq));
        entries.push(entry("acme2", "api", seq));
    }
    let mut attempts = Vec::new();
    for seq in (0..5).rev() {
        attempts.push(attempt("acme", "api", seq));
    }
    attempts.push(attempt("acme2", "api", 0));
    attempts.push(attempt("acme", "api2", 0));
    ok(
        "flush",
        store.flush(&Flush {
            balances: balances.clone(),
            entries: entries.clone(),
            attempts: attempts.clone(),
            checkpoint: Some(checkpoint(0, 1, 0, 0, 0)),
            ..Flush::default()
        }),
    );

    let of = |customer: &str| -> Vec<BalanceRow> {
        let mut rows: Vec<BalanceRow> = balances
            .iter()
            .filter(|row| row.customer_id == customer)
            .cloned()
            .collect();
        rows.sort_by(|a, b| a.credit_type.cmp(&b.credit_type));
        rows
    };
    for customer in ["acme", "acme2", "acm"] {
        assert_eq!(
            ok("balances", store.balances(customer)),
            of(customer),
            "expected the balances of {customer:?} exactly as flushed, in credit type order, \
             and no row of a customer whose id extends or prefixes it"
        );
    }
    for customer in ["ac", "acme3", "", "nobody"] {
        assert_eq!(
            ok("balances", store.balances(customer)),
            Vec::new(),
            "expected no balance for customer {customer:?}, which was never flushed"
        );
    }

    let ledger_of = |customer: &str, credit_type: &str| -> Vec<LedgerRow> {
        let mut rows: Vec<LedgerRow> = entries
            .iter()
            .filter(|row| row.customer_id == customer && row.credit_type == credit_type)
            .cloned()
            .collect();
        rows.sort_by_key(|row| row.seq);
        rows
    };
    for (customer, credit_type) in [
        ("acme", "api"),
        ("acme", "api2"),
        ("acme", "compute"),
        ("acme2", "api"),
    ] {
        assert_eq!(
            ok("ledger", store.ledger(customer, credit_type, 0, 1000)),
            ledger_of(customer, credit_type),
            "expected the ledger of {customer}/{credit_type} exactly as flushed, in seq order, \
             and nothing of another account"
        );
    }
    let all = ledger_of("acme", "api");
    let mut pages = Vec::new();
    let mut from = 0;
    loop {
        let page = ok("ledger page", store.ledger("acme", "api", from, 4));
        let Some(last) = page.last() else { break };
        from = last.seq + 1;
        pages.push(page);
        assert!(
            pages.len() <= 3,
            "expected 10 entries in 3 pages of at most 4, found more pages: {pages:?}"
        );
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [4, 4, 2],
        "expected 10 entries in pages of 4, 4 and 2"
    );
    assert_eq!(
        pages.concat(),
        all,
        "expected the pages to be the ledger in order"
    );
    assert_eq!(
        ok("ledger", store.ledger("acme", "api", 7, 2)),
        all[7..9].to_vec(),
        "expected entries 7 and 8 from seq 7 with limit 2"
    );
    assert_eq!(
        ok("ledger", store.ledger("acme", "api", 3, 0)),
        Vec::new(),
        "expected nothing for limit 0"
    );
    assert_eq!(
        ok("ledger", store.ledger("acme", "api", 10, 10)),
        Vec::new(),
        "expected nothing from past the last seq"
    );
    assert_eq!(
        ok("ledger", store.ledger("acme", "api", u64::MAX, 10)),
        Vec::new(),
        "expected nothing from seq u64::MAX"
    );
    assert_eq!(
        ok("ledger", store.ledger("acme", "ap", 0, 10)),
        Vec::new(),
        "expected nothing for credit type \"ap\", a prefix of one flushed"
    );
    assert_eq!(
        ok("ledger", store.ledger("acm", "api", 0, 10)),
        Vec::new(),
        "expected no ledger for customer \"acm\", a prefix of one flushed"
    );

    let attempts_of = |customer: &str, credit_type: &str| -> Vec<AttemptRow> {
        let mut rows: Vec<AttemptRow> = attempts
            .iter()
            .filter(|row| row.customer_id == customer && row.credit_type == credit_type)
            .cloned()
            .collect();
        rows.sort_by_key(|row| row.seq);
        rows
    };
    for (customer, credit_type) in [("acme", "api"), ("acme", "api2"), ("acme2", "api")] {
        assert_eq!(
            ok("attempts", store.attempts(customer, credit_type, 0, 1000)),
            attempts_of(customer, credit_type),
            "expected the attempts of {customer}/{credit_type} exactly as flushed, in seq order"
        );
    }
    assert_eq!(
        ok("attempts", store.attempts("acme", "api", 2, 2)),
        attempts_of("acme", "api")[2..4].to_vec(),
        "expected attempts 2 and 3 from seq 2 with limit 2"
    );
    assert_eq!(
        ok("attempts", store.attempts("acme", "api", 0, 0)),
        Vec::new(),
        "expected no attempt for limit 0"
    );
    assert_eq!(
        ok("attempts", store.attempts("acme", "compute", 0, 10)),
        Vec::new(),
        "expected no attempt for an account that had none"
    );

    // A later flush rewriting an attempt (its status moved on) replaces it in place.
    let mut settled = attempt("acme", "api", 4);
    settled.status = "succeeded".into();
    settled.reason = None;
    settled.cost_minor_units = Some(1_999);
    settled.currency = Some("EUR".into());
    settled.at_ms += 5_000;
    ok(
        "flush",
        store.flush(&Flush {
            attempts: vec![settled.clone()],
            checkpoint: Some(checkpoint(0, 2, 0, 0, 0)),
            ..Flush::default()
        }),
    );
    let mut expected = attempts_of("acme", "api");
    expected[4] = settled;
    assert_eq!(
        ok("attempts", store.attempts("acme", "api", 0, 100)),
        expected,
        "expected attempt 4 replaced by its newer flush, the others untouched"
    );
}

/// A newer flush of a balance replaces the whole row, optional fields included (set or
/// cleared).
pub fn accounts_newer_balance_replaces_older<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    let store = create();
    let mut first = balance("acme", "api", 10_000_000, 1, 0);
    first.auto_recharge_status = Some("paused".into());
    first.paused_reason = Some("spend_limit_reached".into());
    ok(
        "flush 1",
        store.flush(&Flush {
            balances: vec![first.clone(), balance("acme", "compute", 1, 1, 0)],
            checkpoint: Some(checkpoint(0, 1, 0, 0, 0)),
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("balances", store.balances("acme")),
        vec![first, balance("acme", "compute", 1, 1, 0)],
        "expected the first flush's balances"
    );
    let mut second = balance("acme", "api", -250_000, 2, 0);
    second.overdraft_micros = 250_000;
    second.auto_recharge_status = None;
    second.paused_reason = None;
    second.as_of_ms = T0_MS + 60_000;
    ok(
        "flush 2",
        store.flush(&Flush {
            balances: vec![second.clone()],
            checkpoint: Some(checkpoint(0, 2, 0, 0, 0)),
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("balances", store.balances("acme")),
        vec![second.clone(), balance("acme", "compute", 1, 1, 0)],
        "expected the api balance replaced whole by flush 2 (status and reason cleared), the \
         compute balance as flush 1 left it"
    );
    let mut third = second;
    third.version = 3;
    third.auto_recharge_status = Some("active".into());
    ok(
        "flush 3",
        store.flush(&Flush {
            balances: vec![third.clone()],
            checkpoint: Some(checkpoint(0, 3, 0, 0, 0)),
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("balances", store.balances("acme")),
        vec![third, balance("acme", "compute", 1, 1, 0)],
        "expected the status set again by flush 3"
    );
}

/// A shard that never completed a flush restores as empty, even when an incomplete first
/// flush left rows behind.
pub fn accounts_load_without_checkpoint_is_empty<A: AccountStore>(
    create: &(impl Fn() -> A + Sync),
) {
    let store = create();
    assert_eq!(
        ok("load_shard", store.load_shard(0)),
        ShardRows::default(),
        "expected an empty restore of a new store"
    );
    assert_eq!(
        ok("checkpoint", store.checkpoint(0)),
        None,
        "expected no checkpoint in a new store"
    );
    ok(
        "partial flush",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 1), account(0, 1, 0, 1)],
            customers: vec![customer(0, 0, 0, 1, "acme")],
            dedup: vec![chunk(0, 0, 1)],
            balances: vec![balance("acme", "api", 5, 1, 0)],
            checkpoint: None,
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("load_shard", store.load_shard(0)),
        ShardRows::default(),
        "expected an empty restore after a first flush that never wrote its checkpoint"
    );
    assert_eq!(
        ok("checkpoint", store.checkpoint(0)),
        None,
        "expected no checkpoint after a flush without one"
    );
}

/// After complete flushes a restore gets the checkpoint, per handle and index the slot
/// holding the newest state at or below it (dense vectors of the checkpoint's counts), and
/// the dedup chunks of live generations in (generation, flush) order; the flush raising
/// `dedup_generation_min` drops the chunks of the generations below it.
pub fn accounts_load_restores_slots_and_dedup<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    let store = create();
    let flush1 = Flush {
        accounts: vec![
            account(0, 2, 0, 1),
            account(0, 0, 0, 1),
            account(0, 1, 0, 1),
        ],
        customers: vec![customer(0, 1, 0, 1, "beta"), customer(0, 0, 0, 1, "acme")],
        dedup: vec![chunk(0, 1, 1), chunk(0, 0, 1)],
        checkpoint: Some(checkpoint(0, 1, 3, 2, 0)),
        ..Flush::default()
    };
    ok("flush 1", store.flush(&flush1));
    assert_eq!(
        ok("load_shard after flush 1", store.load_shard(0)),
        ShardRows {
            checkpoint: flush1.checkpoint.clone(),
            accounts: vec![state(0, 0, 0, 1), state(0, 1, 0, 1), state(0, 2, 0, 1)],
            customers: vec![customer_state(0, 0, 0, 1), customer_state(0, 1, 0, 1)],
            dedup: vec![chunk(0, 0, 1), chunk(0, 1, 1)],
        },
        "expected flush 1's states (slot 0) and chunks in (generation, flush) order"
    );
    assert_eq!(
        ok("checkpoint", store.checkpoint(0)),
        flush1.checkpoint,
        "expected flush 1's checkpoint"
    );

    // Handle 1 changes (into slot 1), handle 3 is new; customer 0 changes.
    let mut checkpoint2 = checkpoint(0, 2, 4, 2, 0);
    checkpoint2.sources = None;
    checkpoint2.log_next = 77;
    let flush2 = Flush {
        accounts: vec![account(0, 3, 0, 2), account(0, 1, 1, 2)],
        customers: vec![customer(0, 0, 1, 2, "acme")],
        dedup: vec![chunk(0, 2, 2), chunk(0, 1, 2)],
        checkpoint: Some(checkpoint2.clone()),
        ..Flush::default()
    };
    ok("flush 2", store.flush(&flush2));
    assert_eq!(
        ok("load_shard after flush 2", store.load_shard(0)),
        ShardRows {
            checkpoint: Some(checkpoint2),
            accounts: vec![
                state(0, 0, 0, 1),
                state(0, 1, 1, 2),
                state(0, 2, 0, 1),
                state(0, 3, 0, 2),
            ],
            customers: vec![customer_state(0, 0, 1, 2), customer_state(0, 1, 0, 1)],
            dedup: vec![
                chunk(0, 0, 1),
                chunk(0, 1, 1),
                chunk(0, 1, 2),
                chunk(0, 2, 2)
            ],
        },
        "expected per handle the newest slot at or below flush 2, and every chunk of \
         generations 0..=2 in (generation, flush) order"
    );

    // Handle 1 changes again: back into slot 0, which held flush 1's state.
    let checkpoint3 = checkpoint(0, 3, 4, 2, 2);
    let flush3 = Flush {
        accounts: vec![account(0, 1, 0, 3)],
        dedup: vec![chunk(0, 2, 3), chunk(0, 3, 3)],
        checkpoint: Some(checkpoint3.clone()),
        ..Flush::default()
    };
    ok("flush 3", store.flush(&flush3));
    let restored3 = ShardRows {
        checkpoint: Some(checkpoint3),
        accounts: vec![
            state(0, 0, 0, 1),
            state(0, 1, 0, 3),
            state(0, 2, 0, 1),
            state(0, 3, 0, 2),
        ],
        customers: vec![customer_state(0, 0, 1, 2), customer_state(0, 1, 0, 1)],
        dedup: vec![chunk(0, 2, 2), chunk(0, 2, 3), chunk(0, 3, 3)],
    };
    assert_eq!(
        ok("load_shard after flush 3", store.load_shard(0)),
        restored3,
        "expected handle 1 from slot 0 (flush 3), and only the chunks of generations 2 and 3 \
         once dedup_generation_min is 2"
    );

    // Lowering the minimum again is nothing a shard does; it shows whether flush 3 really
    // dropped the chunks of generations 0 and 1 rather than hiding them.
    let checkpoint4 = checkpoint(0, 4, 4, 2, 0);
    ok(
        "flush 4",
        store.flush(&Flush {
            checkpoint: Some(checkpoint4.clone()),
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("load_shard after flush 4", store.load_shard(0)),
        ShardRows {
            checkpoint: Some(checkpoint4),
            ..restored3
        },
        "expected the chunks of generations 0 and 1 gone for good: dropped by the flush that \
         raised dedup_generation_min to 2"
    );
}

/// A flush cut short before its checkpoint (rows written into the other slots, chunks of the
/// new flush) changes nothing a restore reads; the same flush completed then does.
pub fn accounts_partial_flush_is_invisible_to_restore<A: AccountStore>(
    create: &(impl Fn() -> A + Sync),
) {
    let store = create();
    let checkpoint1 = checkpoint(0, 1, 2, 1, 0);
    ok(
        "flush 1",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 1), account(0, 1, 0, 1)],
            customers: vec![customer(0, 0, 0, 1, "acme")],
            dedup: vec![chunk(0, 0, 1)],
            balances: vec![balance("acme", "api", 1_000_000, 1, 0)],
            checkpoint: Some(checkpoint1.clone()),
            ..Flush::default()
        }),
    );
    let restored1 = ShardRows {
        checkpoint: Some(checkpoint1.clone()),
        accounts: vec![state(0, 0, 0, 1), state(0, 1, 0, 1)],
        customers: vec![customer_state(0, 0, 0, 1)],
        dedup: vec![chunk(0, 0, 1)],
    };
    assert_eq!(
        ok("load_shard after flush 1", store.load_shard(0)),
        restored1,
        "expected flush 1's states"
    );

    let checkpoint2 = checkpoint(0, 2, 3, 1, 0);
    let flush2 = Flush {
        accounts: vec![
            account(0, 0, 1, 2),
            account(0, 1, 1, 2),
            account(0, 2, 0, 2),
        ],
        customers: vec![customer(0, 0, 1, 2, "acme")],
        dedup: vec![chunk(0, 0, 2), chunk(0, 1, 2)],
        balances: vec![balance("acme", "api", 2_000_000, 2, 0)],
        checkpoint: None,
        ..Flush::default()
    };
    ok("partial flush 2", store.flush(&flush2));
    assert_eq!(
        ok("load_shard after partial flush 2", store.load_shard(0)),
        restored1,
        "expected exactly flush 1's states and chunks after a flush 2 that never wrote its \
         checkpoint (its slot-1 states, its new handle and its chunks ignored)"
    );
    assert_eq!(
        ok("checkpoint", store.checkpoint(0)),
        Some(checkpoint1),
        "expected flush 1's checkpoint still"
    );
    assert_eq!(
        ok("balances", store.balances("acme")),
        vec![balance("acme", "api", 2_000_000, 2, 0)],
        "expected the operator's view one incomplete flush ahead of the checkpoint"
    );

    // The retried flush 2, complete this time.
    ok(
        "flush 2",
        store.flush(&Flush {
            checkpoint: Some(checkpoint2.clone()),
            ..flush2
        }),
    );
    let restored2 = ShardRows {
        checkpoint: Some(checkpoint2),
        accounts: vec![state(0, 0, 1, 2), state(0, 1, 1, 2), state(0, 2, 0, 2)],
        customers: vec![customer_state(0, 0, 1, 2)],
        dedup: vec![chunk(0, 0, 1), chunk(0, 0, 2), chunk(0, 1, 2)],
    };
    assert_eq!(
        ok("load_shard after flush 2", store.load_shard(0)),
        restored2,
        "expected flush 2's states once its checkpoint is written"
    );

    // A partial flush 3 overwrites the slots flush 1 used (slot 0): still flush 2's states.
    ok(
        "partial flush 3",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 3), account(0, 2, 1, 3)],
            customers: vec![customer(0, 0, 0, 3, "acme")],
            dedup: vec![chunk(0, 1, 3)],
            checkpoint: None,
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("load_shard after partial flush 3", store.load_shard(0)),
        restored2,
        "expected exactly flush 2's states after a partial flush 3 into the other slots"
    );
}

/// A handle or index below the checkpoint's counts with no state at or below it fails the
/// restore with `Corrupt`, naming the table.
pub fn accounts_missing_state_is_corrupt<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    let store = create();
    // Shard 0: handle 1 was never written.
    ok(
        "flush shard 0",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 1), account(0, 2, 0, 1)],
            checkpoint: Some(checkpoint(0, 1, 3, 0, 0)),
            ..Flush::default()
        }),
    );
    expect_corrupt(store.load_shard(0), "account_state", "a missing handle 1");
    // Shard 1: handle 0 holds only a state of a later, incomplete flush.
    ok(
        "flush shard 1",
        store.flush(&Flush {
            accounts: vec![account(1, 0, 1, 5)],
            checkpoint: Some(checkpoint(1, 4, 1, 0, 0)),
            ..Flush::default()
        }),
    );
    expect_corrupt(
        store.load_shard(1),
        "account_state",
        "a handle whose only state is above the checkpoint",
    );
    // Shard 2: customer 1 was never written.
    ok(
        "flush shard 2",
        store.flush(&Flush {
            accounts: vec![account(2, 0, 0, 1)],
            customers: vec![customer(2, 0, 0, 1, "acme")],
            checkpoint: Some(checkpoint(2, 1, 1, 2, 0)),
            ..Flush::default()
        }),
    );
    expect_corrupt(
        store.load_shard(2),
        "customer_state",
        "a missing customer 1",
    );
}

/// Two shards' rows never mix: states, chunks, checkpoints, and the dropping of old
/// generations.
pub fn accounts_shards_are_independent<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    let store = create();
    let checkpoint0 = checkpoint(0, 1, 2, 1, 0);
    let checkpoint1 = checkpoint(1, 7, 1, 2, 0);
    ok(
        "flush shard 0",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 1), account(0, 1, 0, 1)],
            customers: vec![customer(0, 0, 0, 1, "acme")],
            dedup: vec![chunk(0, 0, 1), chunk(0, 1, 1)],
            checkpoint: Some(checkpoint0.clone()),
            ..Flush::default()
        }),
    );
    ok(
        "flush shard 1",
        store.flush(&Flush {
            accounts: vec![account(1, 0, 1, 7)],
            customers: vec![customer(1, 0, 0, 7, "zeta"), customer(1, 1, 1, 6, "yak")],
            dedup: vec![chunk(1, 0, 7), chunk(1, 1, 6)],
            checkpoint: Some(checkpoint1.clone()),
            ..Flush::default()
        }),
    );
    let restored0 = ShardRows {
        checkpoint: Some(checkpoint0),
        accounts: vec![state(0, 0, 0, 1), state(0, 1, 0, 1)],
        customers: vec![customer_state(0, 0, 0, 1)],
        dedup: vec![chunk(0, 0, 1), chunk(0, 1, 1)],
    };
    assert_eq!(
        ok("load_shard 0", store.load_shard(0)),
        restored0,
        "expected shard 0's rows only"
    );
    assert_eq!(
        ok("load_shard 1", store.load_shard(1)),
        ShardRows {
            checkpoint: Some(checkpoint1),
            accounts: vec![state(1, 0, 1, 7)],
            customers: vec![customer_state(1, 0, 0, 7), customer_state(1, 1, 1, 6)],
            dedup: vec![chunk(1, 0, 7), chunk(1, 1, 6)],
        },
        "expected shard 1's rows only"
    );
    assert_eq!(
        ok("load_shard 2", store.load_shard(2)),
        ShardRows::default(),
        "expected nothing for shard 2, never flushed"
    );
    // Shard 1 forgets generation 0: shard 0's generation 0 stays.
    let checkpoint1 = checkpoint(1, 8, 1, 2, 1);
    ok(
        "flush 8 of shard 1",
        store.flush(&Flush {
            checkpoint: Some(checkpoint1.clone()),
            ..Flush::default()
        }),
    );
    assert_eq!(
        ok("load_shard 0", store.load_shard(0)),
        restored0,
        "expected shard 0's chunks untouched by shard 1 dropping its generation 0"
    );
    assert_eq!(
        ok("load_shard 1", store.load_shard(1)).dedup,
        vec![chunk(1, 1, 6)],
        "expected shard 1 to keep only its generation 1"
    );
    assert_eq!(
        ok("checkpoint 1", store.checkpoint(1)),
        Some(checkpoint1),
        "expected shard 1's newer checkpoint"
    );
}

/// Credits round-trip exactly at six decimal places: zero, single micro-credits, negatives,
/// large magnitudes, the ends of `i64`.
pub fn accounts_decimals_round_trip<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    const MICROS: [i64; 14] = [
        0,
        1,
        -1,
        10,
        999_999,
        -999_999,
        1_000_000,
        -1_000_000,
        1_234_567,
        -1_234_567,
        i64::MAX / 2,
        -(i64::MAX / 2),
        i64::MAX,
        i64::MIN,
    ];
    let store = create();
    let mut balances = Vec::new();
    let mut entries = Vec::new();
    let mut attempts = Vec::new();
    for (i, micros) in MICROS.into_iter().enumerate() {
        let credit_type = format!("t{i:02}");
        let mut row = balance("decimals", &credit_type, micros, 1, 0);
        row.overdraft_micros = micros.unsigned_abs().min(i64::MAX as u64) as i64;
        balances.push(row);
        let mut row = entry("decimals", "api", i as u64);
        row.amount_micros = micros;
        row.balance_after_micros = micros.wrapping_neg();
        entries.push(row);
        let mut row = attempt("decimals", "api", i as u64);
        row.credits_micros = micros;
        row.cost_minor_units = Some(micros);
        attempts.push(row);
    }
    ok(
        "flush",
        store.flush(&Flush {
            balances: balances.clone(),
            entries: entries.clone(),
            attempts: attempts.clone(),
            checkpoint: Some(checkpoint(0, 1, 0, 0, 0)),
            ..Flush::default()
        }),
    );
    let found = ok("balances", store.balances("decimals"));
    for (expected, found) in balances.iter().zip(&found) {
        assert_eq!(
            (found.balance_micros, found.overdraft_micros),
            (expected.balance_micros, expected.overdraft_micros),
            "expected balance and overdraft of {} back exactly",
            expected.credit_type
        );
    }
    assert_eq!(found, balances, "expected every balance row back exactly");
    let found = ok("ledger", store.ledger("decimals", "api", 0, 100));
    for (expected, found) in entries.iter().zip(&found) {
        assert_eq!(
            (found.amount_micros, found.balance_after_micros),
            (expected.amount_micros, expected.balance_after_micros),
            "expected amount and balance after of entry {} back exactly",
            expected.seq
        );
    }
    assert_eq!(found, entries, "expected every ledger entry back exactly");
    assert_eq!(
        ok("attempts", store.attempts("decimals", "api", 0, 100)),
        attempts,
        "expected every attempt's credits and cost back exactly"
    );
}

/// A flush of a few thousand accounts and customers (more than one write batch on any
/// store) restores whole, each at its handle.
pub fn accounts_many_accounts_restore<A: AccountStore>(create: &(impl Fn() -> A + Sync)) {
    const ACCOUNTS: u32 = 2_500;
    const CUSTOMERS: u32 = 1_200;
    let store = create();
    let flush = Flush {
        accounts: (0..ACCOUNTS)
            .rev()
            .map(|handle| account(3, handle, (handle % 2) as u8, 1 + u64::from(handle % 3)))
            .collect(),
        customers: (0..CUSTOMERS)
            .map(|index| customer(3, index, 0, 1, &format!("customer-{index}")))
            .collect(),
        balances: (0..CUSTOMERS)
            .map(|index| balance(&format!("customer-{index}"), "api", i64::from(index), 3, 3))
            .collect(),
        checkpoint: Some(checkpoint(3, 3, ACCOUNTS, CUSTOMERS, 0)),
        ..Flush::default()
    };
    ok("flush", store.flush(&flush));
    let restored = ok("load_shard", store.load_shard(3));
    assert_eq!(
        restored.accounts.len(),
        ACCOUNTS as usize,
        "expected one state per account"
    );
    for handle in 0..ACCOUNTS {
        let expected = state(3, handle, (handle % 2) as u8, 1 + u64::from(handle % 3));
        assert_eq!(
            restored.accounts[handle as usize], expected,
            "expected handle {handle}'s state at its index"
        );
    }
    let customers: Vec<(u8, Vec<u8>)> = (0..CUSTOMERS)
        .map(|index| customer_state(3, index, 0, 1))
        .collect();
    assert_eq!(
        restored.customers, customers,
        "expected every customer's state at its index"
    );
    assert_eq!(
        ok("balances", store.balances("customer-1199")),
        vec![balance("customer-1199", "api", 1199, 3, 3)],
        "expected the last customer's balance"
    );
}

/// Everything flushed is still there after `reopen`.
pub fn accounts_reopen_keeps_everything<A: AccountStore>(
    create: &(impl Fn() -> A + Sync),
    reopen: &impl Fn(A) -> A,
) {
    let store = create();
    let mut balance_row = balance("acme", "api", -1_234_567, 2, 0);
    balance_row.auto_recharge_status = Some("active".into());
    ok(
        "flush 1",
        store.flush(&Flush {
            accounts: vec![account(0, 0, 0, 1), account(0, 1, 0, 1)],
            customers: vec![customer(0, 0, 0, 1, "acme")],
            dedup: vec![chunk(0, 0, 1)],
            checkpoint: Some(checkpoint(0, 1, 2, 1, 0)),
            ..Flush::default()
        }),
    );
    ok(
        "flush 2",
        store.flush(&Flush {
            balances: vec![balance_row],
            accounts: vec![account(0, 1, 1, 2)],
            entries: (0..3).map(|seq| entry("acme", "api", seq)).collect(),
            attempts: vec![attempt("acme", "api", 0)],
            dedup: vec![chunk(0, 1, 2)],
            checkpoint: Some(checkpoint(0, 2, 2, 1, 0)),
            ..Flush::default()
        }),
    );
    let read = |store: &A| {
        (
            ok("load_shard", store.load_shard(0)),
            ok("checkpoint", store.checkpoint(0)),
            ok("balances", store.balances("acme")),
            ok("ledger", store.ledger("acme", "api", 0, 100)),
            ok("attempts", store.attempts("acme", "api", 0, 100)),
        )
    };
    let before = read(&store);
    assert_eq!(
        before.0.accounts,
        vec![state(0, 0, 0, 1), state(0, 1, 1, 2)],
        "expected flush 2's states before reopening"
    );
    let store = reopen(store);
    assert_eq!(
        read(&store),
        before,
        "expected the same restore, checkpoint, balances, ledger and attempts after reopening"
    );
}

/// A balance row of the fixtures.
fn balance(
    customer_id: &str,
    credit_type: &str,
    balance_micros: i64,
    version: u64,
    shard: u32,
) -> BalanceRow {
    BalanceRow {
        customer_id: customer_id.into(),
        credit_type: credit_type.into(),
        balance_micros,
        overdraft_micros: 0,
        auto_recharge_status: Some("active".into()),
        paused_reason: None,
        as_of_ms: T0_MS + version as i64 * 1_000,
        version,
        shard,
    }
}

/// A ledger entry of the fixtures, distinct per (account, seq).
fn entry(customer_id: &str, credit_type: &str, seq: u64) -> LedgerRow {
    let seq_signed = seq as i64;
    LedgerRow {
        customer_id: customer_id.into(),
        credit_type: credit_type.into(),
        seq,
        at_ms: T0_MS + seq_signed * 1_000 + 7,
        kind: if seq == 0 { "grant" } else { "usage" }.into(),
        amount_micros: if seq == 0 {
            100_000_000
        } else {
            -1_500_000 - seq_signed
        },
        balance_after_micros: 100_000_000 - seq_signed * 1_500_001,
        reference: format!("{customer_id}/{credit_type}/log@{seq}"),
    }
}

/// A recharge attempt of the fixtures, with the optional fields set on even seqs only.
fn attempt(customer_id: &str, credit_type: &str, seq: u64) -> AttemptRow {
    let even = seq.is_multiple_of(2);
    AttemptRow {
        customer_id: customer_id.into(),
        credit_type: credit_type.into(),
        seq,
        command_id: format!("{customer_id}/{credit_type}/{seq}"),
        at_ms: T0_MS + seq as i64 * 60_000,
        credits_micros: 50_000_000 + seq as i64,
        cost_minor_units: even.then_some(5_000),
        currency: even.then(|| "USD".to_owned()),
        status: if even { "issued" } else { "failed" }.into(),
        reason: (!even).then(|| "card_declined".to_owned()),
    }
}

/// The state bytes the fixtures give an account (telling shard, handle and version apart).
fn state_bytes(shard: u32, handle: u32, version: u64) -> Vec<u8> {
    format!("account s{shard} h{handle} v{version}").into_bytes()
}

/// An account state row of the fixtures.
fn account(shard: u32, handle: u32, slot: u8, version: u64) -> AccountStateRow {
    AccountStateRow {
        shard,
        handle,
        slot,
        version,
        state: state_bytes(shard, handle, version),
    }
}

/// What a restore returns for [`account`]`(shard, handle, slot, version)`.
fn state(shard: u32, handle: u32, slot: u8, version: u64) -> (u8, Vec<u8>) {
    (slot, state_bytes(shard, handle, version))
}

/// The state bytes the fixtures give a customer.
fn customer_bytes(shard: u32, index: u32, version: u64) -> Vec<u8> {
    format!("customer s{shard} i{index} v{version}").into_bytes()
}

/// A customer state row of the fixtures.
fn customer(shard: u32, index: u32, slot: u8, version: u64, customer_id: &str) -> CustomerStateRow {
    CustomerStateRow {
        shard,
        index,
        slot,
        version,
        customer_id: customer_id.into(),
        state: customer_bytes(shard, index, version),
    }
}

/// What a restore returns for [`customer`]`(shard, index, slot, version, _)`.
fn customer_state(shard: u32, index: u32, slot: u8, version: u64) -> (u8, Vec<u8>) {
    (slot, customer_bytes(shard, index, version))
}

/// A dedup chunk of the fixtures: 16-byte fingerprints telling its key apart.
fn chunk(shard: u32, generation: u64, flush: u64) -> DedupChunkRow {
    let mut fingerprints = Vec::with_capacity(32);
    for i in 0..2u8 {
        fingerprints.extend_from_slice(&shard.to_be_bytes());
        fingerprints.extend_from_slice(&generation.to_be_bytes()[4..]);
        fingerprints.extend_from_slice(&flush.to_be_bytes()[4..]);
        fingerprints.extend_from_slice(&[i; 4]);
    }
    DedupChunkRow {
        shard,
        generation,
        flush,
        fingerprints,
    }
}

/// A checkpoint of the fixtures, with both Kafka sources and some meta bytes.
fn checkpoint(
    shard: u32,
    version: u64,
    accounts: u32,
    customers: u32,
    dedup_generation_min: u64,
) -> CheckpointRow {
    CheckpointRow {
        shard,
        version,
        log_next: version * 100,
        sources: Some((version * 10, version * 10 + 1)),
        as_of_ms: T0_MS + version as i64 * 1_000,
        accounts,
        customers,
        dedup_generation_min,
        meta: format!("meta of shard {shard} at flush {version}").into_bytes(),
    }
}

/// Checks that a restore failed with `Corrupt` naming `table`.
#[track_caller]
fn expect_corrupt(result: Result<ShardRows, StoreError>, table: &str, case: &str) {
    match result {
        Err(StoreError::Corrupt(message)) => assert!(
            message.contains(table),
            "expected the Corrupt error for {case} to name table {table}, found {message:?}"
        ),
        Err(other) => panic!("expected Corrupt naming table {table} for {case}, found {other}"),
        Ok(rows) => panic!(
            "expected Corrupt naming table {table} for {case}, found a restore of {} accounts \
             and {} customers",
            rows.accounts.len(),
            rows.customers.len()
        ),
    }
}

#[track_caller]
fn ok<T>(what: &str, result: Result<T, StoreError>) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{what}: expected success, found {e}"),
    }
}
