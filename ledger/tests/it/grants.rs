//! Grants through the shard's batch API: burn-down order, overdraft, expiry at its own
//! instant, voids, idempotency keys, bad input, and snapshots.

use refill_ledger::effects::{EntryKind, Outcome, Reference};
use refill_ledger::grant::GrantKind;
use refill_ledger::ids::GrantId;
use refill_ledger::testkit::*;
use refill_ledger::{Credits, Input, Quantity, Rejection, Shard, ShardConfig, TimestampMs};

fn shard_with_customer() -> (Shard, TimestampMs) {
    let now = at("2026-03-01T00:00:00Z");
    let mut shard = Shard::new(ShardConfig::default(), now);
    let mut setup = example_catalog();
    setup.push(put_customer("acme", "pm_card_visa"));
    shard.apply(now, &setup);
    (shard, now)
}

fn remaining(shard: &Shard) -> Vec<(u64, i64)> {
    let handle = shard
        .find_account("acme", example::CREDIT_TYPE)
        .expect("account");
    shard
        .account(handle)
        .grants()
        .iter()
        .map(|g| (g.id.0, g.remaining.micros() / 1_000_000))
        .collect()
}

fn balance(shard: &Shard) -> Credits {
    let handle = shard
        .find_account("acme", example::CREDIT_TYPE)
        .expect("account");
    shard.account(handle).balance()
}

#[test]
fn burns_by_priority_then_soonest_expiry_then_oldest() {
    let (mut shard, now) = shard_with_customer();
    let later = TimestampMs(now.0 + 86_400_000);
    let sooner = TimestampMs(now.0 + 3_600_000);
    shard.apply(
        now,
        &[
            grant("acme", 10, GrantKind::Paid, Some(5), None, "k1"), // gr_1
            grant(
                "acme",
                10,
                GrantKind::Promotional,
                Some(1),
                Some(later),
                "k2",
            ), // gr_2
            grant(
                "acme",
                10,
                GrantKind::Promotional,
                Some(1),
                Some(sooner),
                "k3",
            ), // gr_3
            grant("acme", 10, GrantKind::Promotional, Some(1), None, "k4"), // gr_4
        ],
    );
    let calls: Vec<Input> = (0..25).map(|i| call("acme", &format!("e{i}"))).collect();
    shard.apply(now, &calls);
    // gr_3 (soonest), gr_2, then 5 of gr_4; gr_1 (priority 5) untouched.
    assert_eq!(remaining(&shard), vec![(4, 5), (1, 10)]);
}

#[test]
fn usage_beyond_grants_is_overdraft_paid_back_first_by_the_next_grant() {
    let (mut shard, now) = shard_with_customer();
    let calls: Vec<Input> = (0..7).map(|i| call("acme", &format!("e{i}"))).collect();
    shard.apply(now, &calls);
    assert_eq!(balance(&shard), credits(-7));
    let fx = shard.apply(now, &[grant("acme", 10, GrantKind::Paid, None, None, "k")]);
    assert_eq!(balance(&shard), credits(3));
    assert_eq!(remaining(&shard), vec![(1, 3)]);
    // The usage not yet rolled up comes first, so the ledger sums to every balance_after.
    assert_eq!(
        (
            fx.entries[0].kind,
            fx.entries[0].amount,
            fx.entries[0].balance_after
        ),
        (EntryKind::Usage, credits(-7), credits(-7))
    );
    assert_eq!(
        fx.entries[1].amount,
        credits(10),
        "the grant entry shows the whole grant"
    );
    assert_eq!(fx.entries[1].balance_after, credits(3));
}

#[test]
fn an_expired_grant_leaves_at_its_expiry_instant_with_an_entry() {
    let (mut shard, now) = shard_with_customer();
    let expires = TimestampMs(now.0 + 3_600_000);
    shard.apply(
        now,
        &[grant(
            "acme",
            10,
            GrantKind::Promotional,
            None,
            Some(expires),
            "k",
        )],
    );
    shard.apply(now, &[call("acme", "e1")]);
    let fx = shard.apply(TimestampMs(expires.0 + 5_000), &[Input::Tick]);
    // The pending usage is rolled up first, at the expiry instant.
    assert_eq!(
        (fx.entries[0].kind, fx.entries[0].at, fx.entries[0].amount),
        (EntryKind::Usage, expires, credits(-1))
    );
    let entry = &fx.entries[1];
    assert_eq!(
        (entry.kind, entry.at, entry.amount, entry.balance_after),
        (EntryKind::Expiry, expires, credits(-9), credits(0))
    );
    assert_eq!(entry.reference, Reference::Grant(GrantId(1)));
    // Usage after expiry is overdraft.
    shard.apply(TimestampMs(expires.0 + 6_000), &[call("acme", "e2")]);
    assert_eq!(balance(&shard), credits(-1));
}

#[test]
fn voiding_takes_what_remains_and_only_once() {
    let (mut shard, now) = shard_with_customer();
    shard.apply(
        now,
        &[grant("acme", 10, GrantKind::Promotional, None, None, "k")],
    );
    shard.apply(now, &[call("acme", "e1")]);
    let void = Input::VoidGrant {
        customer: customer("acme"),
        grant: GrantId(1),
    };
    let fx = shard.apply(now, std::slice::from_ref(&void));
    assert!(
        matches!(fx.outcome_of(0), Some(Outcome::GrantVoided { credits, .. }) if *credits == credits_of(9))
    );
    assert_eq!(
        fx.entries.last().map(|e| (e.kind, e.amount)),
        Some((EntryKind::Void, credits(-9)))
    );
    let fx = shard.apply(now, &[void]);
    assert!(matches!(
        fx.outcome_of(0),
        Some(Outcome::Rejected(Rejection::Conflict { .. }))
    ));
    let fx = shard.apply(
        now,
        &[Input::VoidGrant {
            customer: customer("acme"),
            grant: GrantId(7),
        }],
    );
    assert!(matches!(
        fx.outcome_of(0),
        Some(Outcome::Rejected(Rejection::UnknownGrant(_)))
    ));
}

fn credits_of(whole: i64) -> Credits {
    credits(whole)
}

#[test]
fn an_idempotency_key_grants_once() {
    let (mut shard, now) = shard_with_customer();
    let request = grant("acme", 10, GrantKind::Paid, None, None, "same");
    shard.apply(now, std::slice::from_ref(&request));
    let fx = shard.apply(now, &[request]);
    assert!(matches!(
        fx.outcome_of(0),
        Some(Outcome::GrantReplayed {
            grant: GrantId(1),
            ..
        })
    ));
    assert!(fx.entries.is_empty());
    assert_eq!(balance(&shard), credits(10));
}

#[test]
fn bad_inputs_are_rejected_and_change_nothing() {
    let (mut shard, now) = shard_with_customer();
    shard.apply(now, &[grant("acme", 10, GrantKind::Paid, None, None, "k")]);
    let before = shard.snapshot();
    let fx = shard.apply(
        now,
        &[
            usage("acme", "e1", "no-such-feature", Quantity::from_micros(1)),
            grant("acme", 0, GrantKind::Paid, None, None, "zero"),
            grant(
                "acme",
                5,
                GrantKind::Paid,
                None,
                Some(TimestampMs(now.0 - 1)),
                "past",
            ),
            grant("nobody", 5, GrantKind::Paid, None, None, "who"),
            set_auto_recharge("acme", 30, 10, 100, refill_ledger::time::SpendReset::Day),
        ],
    );
    let codes: Vec<(u32, &str, Option<&str>)> = fx
        .outcomes
        .iter()
        .map(|(index, outcome)| match outcome {
            Outcome::Rejected(rejection) => (*index, rejection.code(), rejection.field()),
            other => panic!("expected rejections only, found {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (0, "unknown_feature", Some("feature_id")),
            (1, "invalid", Some("amount")),
            (2, "invalid", Some("expires_at")),
            (3, "unknown_customer", Some("customer_id")),
            (4, "invalid", Some("target_balance")),
        ]
    );
    // Only the batch counter and clock moved; accounts are as they were.
    let after = Shard::restore(&shard.snapshot()).expect("restore");
    assert_eq!(
        after.account_count(),
        Shard::restore(&before).expect("restore").account_count()
    );
    assert_eq!(balance(&shard), credits(10));
}

#[test]
fn a_refused_event_is_not_remembered_so_its_corrected_retry_applies() {
    let (mut shard, now) = shard_with_customer();
    let fx = shard.apply(
        now,
        &[usage(
            "acme",
            "e1",
            "later-feature",
            Quantity::from_micros(1_000_000),
        )],
    );
    assert_eq!(fx.inputs_rejected, 1);
    let fx = shard.apply(now, &[call("acme", "e1")]);
    assert_eq!((fx.events_applied, fx.events_duplicate), (1, 0));
}

#[test]
fn snapshots_restore_exactly() {
    let (mut shard, now) = shard_with_customer();
    shard.apply(
        now,
        &[
            subscribe_example("acme"),
            example_auto_recharge("acme"),
            grant(
                "acme",
                3,
                GrantKind::Promotional,
                Some(1),
                Some(TimestampMs(now.0 + 1_000)),
                "k",
            ),
        ],
    );
    let calls: Vec<Input> = (0..40).map(|i| call("acme", &format!("e{i}"))).collect();
    shard.apply(now, &calls);
    let bytes = shard.snapshot();
    let mut restored = Shard::restore(&bytes).expect("restore");
    assert_eq!(restored.snapshot(), bytes);
    // Both continue identically, dedup window included.
    let more = [call("acme", "e1"), call("acme", "e99")];
    let later = TimestampMs(now.0 + 2_000);
    assert_eq!(shard.apply(later, &more), restored.apply(later, &more));
    assert_eq!(restored.snapshot(), shard.snapshot());
    assert!(Shard::restore(&bytes[..bytes.len() / 2]).is_err());
    assert!(Shard::restore(&[]).is_err());
}

#[test]
fn usage_that_would_reach_the_lowest_balance_is_refused_not_a_crash() {
    let (mut shard, now) = shard_with_customer();
    // i64::MIN micro-credits cannot be an overdraft (its negation overflows).
    let most = Quantity::from_micros(i64::MAX);
    let fx = shard.apply(now, &[usage("acme", "big-1", example::FEATURE, most)]);
    assert_eq!(fx.events_applied, 1);
    let fx = shard.apply(
        now,
        &[usage(
            "acme",
            "big-2",
            example::FEATURE,
            Quantity::from_micros(1),
        )],
    );
    assert!(
        matches!(
            fx.outcome_of(0),
            Some(Outcome::Rejected(Rejection::Overflow { .. }))
        ),
        "{:?}",
        fx.outcomes
    );
    assert_eq!(balance(&shard), Credits::from_micros(-i64::MAX));
}
