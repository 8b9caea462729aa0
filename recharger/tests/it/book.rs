//! One test body per guarantee of the [`RechargeBook`] port, run against every book: the
//! embedded [`StoreBook`] (over the in-memory store fake) always, and the [`CqlBook`] on a
//! fresh keyspace of the real CQL server when `REFILL_CASSANDRA` is set (else that half
//! prints that it was skipped and why).

use std::sync::Arc;

use refill_ledger::input::{RechargeOutcome, RechargeResult};
use refill_ledger::spend::CommandState;
use refill_ledger::testkit::{cents, credits};
use refill_recharger::{
    CqlBook, Gateway, RechargeBook, Recharger, RechargerConfig, RechargerError, SandboxGateway,
    StoreBook,
};
use refill_store_cql::CqlStore;

use crate::support::{Down, LosesAnswers, MemStore, command};

fn fast() -> RechargerConfig {
    RechargerConfig {
        charge_attempts_max: 3,
        retry_backoff_ms: 1,
        retry_backoff_max_ms: 4,
    }
}

fn charged(whole: i64, cost_cents: i64) -> RechargeResult {
    RechargeResult::Charged {
        credits: credits(whole),
        cost: cents(cost_cents),
    }
}

/// A book implementation under test: handles on one durable state.
trait Harness {
    /// The book type.
    type Book: RechargeBook;
    /// A new handle on the state, as a restarted process opens it (drop the old one first
    /// when the book has a single writer).
    fn reopen(&self) -> Arc<Self::Book>;
    /// Handles that may run at the same time (two recharger processes).
    fn concurrent(&self) -> (Arc<Self::Book>, Arc<Self::Book>);
}

/// The embedded book over the in-memory store fake.
struct Embedded {
    store: Arc<MemStore>,
}

impl Embedded {
    fn new() -> Self {
        Self {
            store: Arc::new(MemStore::default()),
        }
    }
}

impl Harness for Embedded {
    type Book = StoreBook<MemStore>;

    fn reopen(&self) -> Arc<Self::Book> {
        Arc::new(StoreBook::open(Arc::clone(&self.store)).expect("the book loads"))
    }

    fn concurrent(&self) -> (Arc<Self::Book>, Arc<Self::Book>) {
        // One writer per store: concurrent recharger tasks share the one book.
        let book = self.reopen();
        (Arc::clone(&book), book)
    }
}

/// The CQL book on a fresh keyspace, dropped at the end.
struct Cql {
    address: String,
    keyspace: String,
}

impl Cql {
    fn new() -> Option<Self> {
        let address = match std::env::var("REFILL_CASSANDRA") {
            Ok(address) if !address.trim().is_empty() => address.trim().to_owned(),
            _ => {
                println!(
                    "skipped (cql half): REFILL_CASSANDRA not set (deploy/local/up cassandra \
                     starts it)"
                );
                return None;
            }
        };
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let keyspace = format!(
            "refill_test_{}_r{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let store = CqlStore::connect(&address, &keyspace).expect("connects");
        store.migrate().expect("the schema applies");
        Some(Self { address, keyspace })
    }

    fn store(&self) -> Arc<CqlStore> {
        Arc::new(CqlStore::connect(&self.address, &self.keyspace).expect("connects"))
    }
}

impl Drop for Cql {
    fn drop(&mut self) {
        if let Err(error) = self.store().drop_keyspace() {
            eprintln!("could not drop test keyspace {}: {error}", self.keyspace);
        }
    }
}

impl Harness for Cql {
    type Book = CqlBook;

    fn reopen(&self) -> Arc<Self::Book> {
        Arc::new(CqlBook::new(self.store()))
    }

    fn concurrent(&self) -> (Arc<Self::Book>, Arc<Self::Book>) {
        // Two connections: two processes on one keyspace.
        (self.reopen(), self.reopen())
    }
}

fn recharger<G: Gateway, B: RechargeBook>(gateway: G, book: Arc<B>) -> Recharger<G, B> {
    Recharger::new(gateway, book, fast())
}

/// Runs `body` against the embedded book, then the CQL one when the server is there.
macro_rules! against_every_book {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                super::$body(&super::Embedded::new()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn cql() {
                let Some(harness) = super::Cql::new() else { return };
                super::$body(&harness).await;
            }
        }
    )*};
}

against_every_book!(
    the_same_command_twice_is_charged_once,
    two_rechargers_racing_never_pass_the_limit,
    a_crash_between_reserve_and_charge_resumes_with_the_same_key,
    a_crash_after_the_charge_resumes_without_paying_again,
    a_decline_releases_the_spend,
    the_limit_cuts_then_stops,
);

async fn the_same_command_twice_is_charged_once(harness: &impl Harness) {
    let sandbox = Arc::new(SandboxGateway::new());
    let recharge = command("acme", 1, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();
    let mut first = recharger(Arc::clone(&sandbox), harness.reopen());
    let outcome = first.process(&recharge).await.expect("first delivery");
    assert_eq!(
        outcome,
        RechargeOutcome {
            command: recharge.id.clone(),
            result: charged(30, 300)
        }
    );
    assert_eq!(first.process(&recharge).await.expect("again"), outcome);
    drop(first);

    let mut restarted = recharger(Arc::clone(&sandbox), harness.reopen());
    assert!(restarted.pending().await.expect("pending").is_empty());
    assert_eq!(
        restarted.process(&recharge).await.expect("after restart"),
        outcome
    );
    assert_eq!(
        sandbox.calls(&key),
        1,
        "redeliveries never reach the gateway"
    );
    assert_eq!(sandbox.payments(), vec![(key, cents(300))]);
    assert_eq!(
        restarted
            .book()
            .spent_in(
                &recharge.id.customer,
                &recharge.id.credit_type,
                recharge.period
            )
            .expect("spent"),
        300,
        "reserved once"
    );
}

async fn two_rechargers_racing_never_pass_the_limit(harness: &impl Harness) {
    // $10.00 a month; sixteen commands of $3.00 from two rechargers at once: at most three
    // whole ones and a cut one ($1.00) fit.
    let sandbox = Arc::new(SandboxGateway::new());
    let (left, right) = harness.concurrent();
    let mut a = recharger(Arc::clone(&sandbox), left);
    let mut b = recharger(Arc::clone(&sandbox), right);
    let commands: Vec<_> = (1..=16)
        .map(|seq| command("acme", seq, 30, 1_000, "pm_card_visa"))
        .collect();
    let (odd, even): (Vec<_>, Vec<_>) = commands.iter().partition(|c| c.id.seq % 2 == 1);
    let run = async |recharger: &mut Recharger<Arc<SandboxGateway>, _>, list: Vec<_>| {
        let mut results = Vec::new();
        for command in list {
            results.push(recharger.process(command).await.expect("processed"));
        }
        results
    };
    let (from_a, from_b) = tokio::join!(run(&mut a, odd), run(&mut b, even));
    let outcomes: Vec<_> = from_a.into_iter().chain(from_b).collect();

    let paid: i64 = sandbox.payments().iter().map(|(_, m)| m.minor_units).sum();
    let granted: i64 = outcomes
        .iter()
        .map(|o| match &o.result {
            RechargeResult::Charged { cost, .. } => cost.minor_units,
            RechargeResult::SpendLimitReached => 0,
            other => panic!("expected charged or limit reached, found {other:?}"),
        })
        .sum();
    assert_eq!(
        paid, 1_000,
        "the whole limit is used, no more: {outcomes:?}"
    );
    assert_eq!(granted, paid);
    assert_eq!(
        a.book()
            .spent_in(
                &commands[0].id.customer,
                &commands[0].id.credit_type,
                commands[0].period
            )
            .expect("spent"),
        1_000
    );
    for command in &commands {
        assert!(sandbox.charges(&command.id.to_string()) <= 1);
    }
    // Every redelivery, from either side, answers what was decided.
    for (command, outcome) in commands
        .iter()
        .filter(|c| c.id.seq % 2 == 1)
        .chain(commands.iter().filter(|c| c.id.seq % 2 == 0))
        .zip(&outcomes)
    {
        assert_eq!(&b.process(command).await.expect("again"), outcome);
    }
}

async fn a_crash_between_reserve_and_charge_resumes_with_the_same_key(harness: &impl Harness) {
    let sandbox = Arc::new(SandboxGateway::new());
    let recharge = command("acme", 3, 30, 500, "pm_card_visa");
    let key = recharge.id.to_string();

    // The gateway is never reached: reserved, not charged, then the process dies.
    let mut crashed = recharger(Down::default(), harness.reopen());
    let failed = crashed.process(&recharge).await;
    assert!(
        matches!(failed, Err(RechargerError::GatewayUnavailable { .. })),
        "{failed:?}"
    );
    assert_eq!(
        crashed.book().command_state(&recharge.id).expect("state"),
        Some(CommandState::Reserved {
            credits: credits(30),
            cost: cents(300)
        })
    );
    drop(crashed);

    let mut restarted = recharger(Arc::clone(&sandbox), harness.reopen());
    let pending: Vec<_> = restarted
        .pending()
        .await
        .expect("pending")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(pending, vec![recharge.id.clone()]);
    // The reservation holds the spend: another command of the account gets what is left.
    let other = command("acme", 4, 30, 500, "pm_card_visa");
    assert_eq!(
        restarted.process(&other).await.expect("other").result,
        charged(20, 200)
    );
    let resumed = restarted.resume().await.expect("resume");
    assert_eq!(
        resumed,
        vec![RechargeOutcome {
            command: recharge.id.clone(),
            result: charged(30, 300)
        }]
    );
    assert!(restarted.pending().await.expect("pending").is_empty());
    assert_eq!(sandbox.charges(&key), 1);
    assert_eq!(
        restarted
            .process(&recharge)
            .await
            .expect("redelivery")
            .result,
        charged(30, 300)
    );
    assert_eq!(sandbox.calls(&key), 1);
}

async fn a_crash_after_the_charge_resumes_without_paying_again(harness: &impl Harness) {
    let sandbox = Arc::new(SandboxGateway::new());
    let recharge = command("acme", 7, 30, 50_000, "pm_card_visa");
    let key = recharge.id.to_string();
    let mut crashed = recharger(
        LosesAnswers::new(Arc::clone(&sandbox), u32::MAX),
        harness.reopen(),
    );
    assert!(crashed.process(&recharge).await.is_err());
    drop(crashed);

    let mut restarted = recharger(Arc::clone(&sandbox), harness.reopen());
    let resumed = restarted.resume().await.expect("resume");
    assert_eq!(resumed.len(), 1);
    assert_eq!(resumed[0].result, charged(30, 300));
    assert_eq!(sandbox.calls(&key), 4, "every attempt used the command id");
    assert_eq!(sandbox.payments(), vec![(key, cents(300))], "one payment");
}

async fn a_decline_releases_the_spend(harness: &impl Harness) {
    let sandbox = Arc::new(SandboxGateway::new());
    let mut worker = recharger(Arc::clone(&sandbox), harness.reopen());
    let declined = command("acme", 1, 30, 500, "pm_card_chargeDeclined");
    assert_eq!(
        worker.process(&declined).await.expect("declined").result,
        RechargeResult::Declined {
            code: "card_declined".to_owned()
        }
    );
    assert_eq!(
        worker
            .book()
            .spent_in(
                &declined.id.customer,
                &declined.id.credit_type,
                declined.period
            )
            .expect("spent"),
        0
    );
    let next = command("acme", 2, 50, 500, "pm_card_visa");
    assert_eq!(
        worker.process(&next).await.expect("charged").result,
        charged(50, 500)
    );
    assert_eq!(
        worker.process(&declined).await.expect("again").result,
        RechargeResult::Declined {
            code: "card_declined".to_owned()
        },
        "the first answer stays"
    );
}

async fn the_limit_cuts_then_stops(harness: &impl Harness) {
    let sandbox = Arc::new(SandboxGateway::new());
    let mut worker = recharger(Arc::clone(&sandbox), harness.reopen());
    let first = command("acme", 1, 30, 500, "pm_card_visa");
    let second = command("acme", 2, 30, 500, "pm_card_visa");
    let third = command("acme", 3, 30, 500, "pm_card_visa");
    assert_eq!(
        worker.process(&first).await.expect("1").result,
        charged(30, 300)
    );
    assert_eq!(
        worker.process(&second).await.expect("2").result,
        charged(20, 200)
    );
    assert_eq!(
        worker.process(&third).await.expect("3").result,
        RechargeResult::SpendLimitReached
    );
    assert_eq!(sandbox.calls(&third.id.to_string()), 0);
    drop(worker);
    let mut restarted = recharger(Arc::clone(&sandbox), harness.reopen());
    assert_eq!(
        restarted.process(&third).await.expect("3 again").result,
        RechargeResult::SpendLimitReached
    );
}
