//! The LWT helpers against the real server: a command id is claimed once, the spend row moves
//! only by compare-and-set on its version, and of concurrent attempts from tasks exactly one
//! wins while the others learn the winner's row.

use std::sync::{Arc, Barrier};

use refill_store_cql::{CasOutcome, SpendPeriod, SpendRow};

use crate::{Keyspaces, server};

#[test]
fn a_command_id_is_inserted_once() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    assert_eq!(store.command_state("cus_1/usd/1").expect("read"), None);
    assert!(
        store
            .insert_if_absent("cus_1/usd/1", b"reserved")
            .expect("insert"),
        "expected the first insert to apply"
    );
    assert!(
        !store
            .insert_if_absent("cus_1/usd/1", b"other")
            .expect("insert again"),
        "expected the second insert of the same id not to apply"
    );
    assert_eq!(
        store.command_state("cus_1/usd/1").expect("read"),
        Some(b"reserved".to_vec()),
        "expected the first state kept"
    );
    assert!(
        store.insert_if_absent("cus_1/usd/2", b"").expect("insert"),
        "expected another id to apply"
    );
    assert_eq!(
        store.command_state("cus_1/usd/2").expect("read"),
        Some(Vec::new())
    );
}

#[test]
fn spend_moves_only_from_the_expected_version() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let cas = |expected: i64, reserved: i64| {
        store
            .compare_and_set_spend("cus_1", "usd", 1_767_225_600_000, expected, reserved)
            .expect("compare_and_set_spend")
    };
    let outcome = |applied, current_version, current_reserved| CasOutcome {
        applied,
        current_version,
        current_reserved,
    };
    assert_eq!(
        store
            .spend_period("cus_1", "usd", 1_767_225_600_000)
            .expect("read"),
        None
    );
    assert_eq!(
        cas(1, 500),
        outcome(false, 0, 0),
        "expected no row to update at version 1"
    );
    assert_eq!(
        cas(0, 1_000),
        outcome(true, 1, 1_000),
        "expected the row created"
    );
    assert_eq!(
        cas(0, 9_999),
        outcome(false, 1, 1_000),
        "expected the create to apply once"
    );
    assert_eq!(
        cas(1, 2_500),
        outcome(true, 2, 2_500),
        "expected version 1 to move to 2"
    );
    assert_eq!(
        cas(1, 7_000),
        outcome(false, 2, 2_500),
        "expected a stale version refused"
    );
    assert_eq!(
        cas(5, 7_000),
        outcome(false, 2, 2_500),
        "expected a future version refused"
    );
    assert_eq!(
        store
            .spend_period("cus_1", "usd", 1_767_225_600_000)
            .expect("read"),
        Some(SpendPeriod {
            version: 2,
            reserved_minor: 2_500
        })
    );
    assert_eq!(
        store
            .compare_and_set_spend("cus_1", "usd", 1_769_904_000_000, 0, 10)
            .expect("another period"),
        outcome(true, 1, 10),
        "expected periods independent"
    );
    assert!(
        store
            .compare_and_set_spend("cus_1", "usd", 0, -1, 0)
            .is_err()
    );
}

#[test]
fn of_concurrent_attempts_from_tasks_exactly_one_wins() {
    const CONTENDERS: i64 = 6;
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = Arc::new(keyspaces.fresh());
    assert!(
        store
            .compare_and_set_spend("cus_race", "usd", 0, 0, 100)
            .expect("create")
            .applied
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(CONTENDERS as usize * 2)
        .enable_all()
        .build()
        .expect("a caller runtime");
    let (outcomes, claims) = runtime.block_on(async {
        // Every contender starts its LWT at the same moment.
        let barrier = Arc::new(Barrier::new(CONTENDERS as usize));
        let spends: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                tokio::task::spawn_blocking(move || {
                    barrier.wait();
                    let outcome = store
                        .compare_and_set_spend("cus_race", "usd", 0, 1, 100 + 10 * (i + 1))
                        .expect("a contender's compare_and_set_spend");
                    (i, outcome)
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in spends {
            outcomes.push(task.await.expect("a contender ran"));
        }
        let barrier = Arc::new(Barrier::new(CONTENDERS as usize));
        let inserts: Vec<_> = (0..CONTENDERS)
            .map(|i| {
                let store = Arc::clone(&store);
                let barrier = Arc::clone(&barrier);
                tokio::task::spawn_blocking(move || {
                    barrier.wait();
                    let state = format!("worker {i}").into_bytes();
                    let applied = store
                        .insert_if_absent("cus_race/usd/7", &state)
                        .expect("a contender's insert_if_absent");
                    (i, applied)
                })
            })
            .collect();
        let mut claims = Vec::new();
        for task in inserts {
            claims.push(task.await.expect("a contender ran"));
        }
        (outcomes, claims)
    });

    let winners: Vec<&(i64, CasOutcome)> = outcomes.iter().filter(|(_, o)| o.applied).collect();
    assert_eq!(
        winners.len(),
        1,
        "expected exactly one compare-and-set from version 1 to win, found {outcomes:?}"
    );
    let (winner, won) = *winners[0];
    assert_eq!(
        won,
        CasOutcome {
            applied: true,
            current_version: 2,
            current_reserved: 100 + 10 * (winner + 1)
        }
    );
    for (i, outcome) in &outcomes {
        if *i != winner {
            assert_eq!(
                (outcome.current_version, outcome.current_reserved),
                (2, won.current_reserved),
                "expected loser {i} to learn the winner's row"
            );
        }
    }
    assert_eq!(
        store.spend_period("cus_race", "usd", 0).expect("read"),
        Some(SpendPeriod {
            version: 2,
            reserved_minor: won.current_reserved
        })
    );

    let claimed: Vec<i64> = claims.iter().filter(|(_, a)| *a).map(|(i, _)| *i).collect();
    assert_eq!(
        claimed.len(),
        1,
        "expected exactly one insert_if_absent of one command id to apply, found {claims:?}"
    );
    assert_eq!(
        store.command_state("cus_race/usd/7").expect("read"),
        Some(format!("worker {}", claimed[0]).into_bytes()),
        "expected the winner's state"
    );
}

#[test]
fn retried_increments_from_two_tasks_add_up() {
    const TASKS: i64 = 2;
    const INCREMENTS: i64 = 10;
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = Arc::new(keyspaces.fresh());
    std::thread::scope(|scope| {
        for _ in 0..TASKS {
            let store = Arc::clone(&store);
            scope.spawn(move || {
                let mut done = 0;
                let mut seen = store
                    .spend_period("cus_sum", "usd", 0)
                    .expect("read")
                    .unwrap_or(SpendPeriod {
                        version: 0,
                        reserved_minor: 0,
                    });
                while done < INCREMENTS {
                    let outcome = store
                        .compare_and_set_spend(
                            "cus_sum",
                            "usd",
                            0,
                            seen.version,
                            seen.reserved_minor + 25,
                        )
                        .expect("compare_and_set_spend");
                    if outcome.applied {
                        done += 1;
                    }
                    seen = SpendPeriod {
                        version: outcome.current_version,
                        reserved_minor: outcome.current_reserved,
                    };
                }
            });
        }
    });
    assert_eq!(
        store.spend_period("cus_sum", "usd", 0).expect("read"),
        Some(SpendPeriod {
            version: TASKS * INCREMENTS,
            reserved_minor: TASKS * INCREMENTS * 25
        }),
        "expected every applied increment counted once"
    );
}

#[test]
fn the_spend_state_moves_with_the_reservation_and_command_states_by_compare_and_set() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let store = keyspaces.fresh();
    let cas = |expected: i64, reserved: i64, state: &[u8]| {
        store
            .compare_and_set_spend_state("cus_1", "usd", 7, expected, reserved, state)
            .expect("compare_and_set_spend_state")
    };
    assert_eq!(store.spend_row("cus_1", "usd", 7).expect("read"), None);
    assert!(cas(0, 300, b"one line"), "expected the row created");
    assert!(!cas(0, 900, b"other"), "expected the create to apply once");
    assert!(
        !cas(2, 900, b"other"),
        "expected no update from a wrong version"
    );
    assert_eq!(
        store.spend_row("cus_1", "usd", 7).expect("read"),
        Some(SpendRow {
            version: 1,
            reserved_minor: 300,
            state: b"one line".to_vec()
        })
    );
    assert!(cas(1, 500, b"two lines"));
    assert_eq!(
        store.spend_period("cus_1", "usd", 7).expect("read"),
        Some(SpendPeriod {
            version: 2,
            reserved_minor: 500
        }),
        "the same row as the plain helpers see it"
    );

    assert!(
        store
            .insert_if_absent("cus_1/usd/1", b"reserved")
            .expect("insert")
    );
    assert!(
        !store
            .replace_command_state("cus_1/usd/1", b"other", b"done")
            .expect("replace"),
        "expected no change from a stale state"
    );
    assert!(
        store
            .replace_command_state("cus_1/usd/1", b"reserved", b"done")
            .expect("replace")
    );
    assert_eq!(
        store.command_state("cus_1/usd/1").expect("read"),
        Some(b"done".to_vec())
    );
    assert!(
        !store
            .replace_command_state("cus_1/usd/2", b"", b"done")
            .expect("replace"),
        "expected no row made by a replace"
    );
}

#[test]
fn migrate_adds_the_state_column_to_an_older_spend_table() {
    let Some(address) = server() else { return };
    let keyspaces = Keyspaces::new(&address);
    let keyspace = keyspaces.name();
    // The table as the first release made it, without `state`.
    keyspaces.raw(async |session| {
        for ddl in [
            format!(
                "CREATE KEYSPACE {keyspace} WITH replication = \
                 {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
            ),
            format!(
                "CREATE TABLE {keyspace}.spend_periods (customer text, credit_type text, \
                 period_start bigint, reserved_minor bigint, version bigint, \
                 PRIMARY KEY ((customer, credit_type), period_start))"
            ),
        ] {
            session.query_unpaged(ddl, ()).await.expect("old schema");
        }
    });
    let store = refill_store_cql::CqlStore::connect(&address, &keyspace).expect("connects");
    store.migrate().expect("migrate adds the column");
    store.migrate().expect("and runs again unchanged");
    assert!(
        store
            .compare_and_set_spend_state("c", "t", 0, 0, 1, b"s")
            .expect("cas")
    );
    assert_eq!(
        store
            .spend_row("c", "t", 0)
            .expect("read")
            .map(|row| row.state),
        Some(b"s".to_vec())
    );
}
