//! Test doubles and builders: an in-memory fake of the `Store` port (with injectable write
//! failures), gateway wrappers that lose answers, and recharge commands.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use refill_ledger::effects::{AccountHandle, RechargeCommand};
use refill_ledger::ids::CommandId;
use refill_ledger::money::{Currency, UnitPrice};
use refill_ledger::testkit;
use refill_ledger::time::{SpendPeriod, SpendReset};
use refill_recharger::{ChargeRequest, ChargeResult, Gateway, GatewayError};
use refill_store::{Store, StoreError, Write};
use rust_decimal::Decimal;

type Rows = BTreeMap<(&'static str, Vec<u8>), Vec<u8>>;

/// A fake of the store port: a BTreeMap behind a Mutex. `fail_writes_after(n)` lets `n`
/// more writes through and fails the rest, whole (nothing of a failed batch applies).
#[derive(Debug, Default)]
pub struct MemStore {
    rows: Mutex<Rows>,
    writes_ok_left: Mutex<Option<usize>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemStore {
    /// Lets `n` more writes succeed, then fails every write until [`Self::heal`].
    pub fn fail_writes_after(&self, n: usize) {
        *lock(&self.writes_ok_left) = Some(n);
    }

    /// Lets every write succeed again.
    pub fn heal(&self) {
        *lock(&self.writes_ok_left) = None;
    }
}

impl Store for MemStore {
    fn write(&self, writes: Vec<Write>) -> Result<(), StoreError> {
        {
            let mut left = lock(&self.writes_ok_left);
            match left.as_mut() {
                Some(0) => return Err(StoreError::Backend("injected write failure".to_owned())),
                Some(n) => *n -= 1,
                None => {}
            }
        }
        let mut rows = lock(&self.rows);
        for write in writes {
            match write {
                Write::Put { table, key, value } => {
                    rows.insert((table, key), value);
                }
                Write::Delete { table, key } => {
                    rows.remove(&(table, key));
                }
            }
        }
        Ok(())
    }

    fn get(&self, table: &'static str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(lock(&self.rows).get(&(table, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        table: &'static str,
        prefix: &[u8],
        start: &[u8],
        max: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        Ok(lock(&self.rows)
            .range((table, start.to_vec())..)
            .take_while(|((t, key), _)| *t == table && key.starts_with(prefix))
            .take(max)
            .map(|((_, key), value)| (key.clone(), value.clone()))
            .collect())
    }
}

/// A gateway that passes charges on to `inner` but loses the first `lose` answers after
/// the charge was made (a timeout after the payment, a crash before recording it).
#[derive(Debug)]
pub struct LosesAnswers<G> {
    /// The real gateway.
    pub inner: G,
    lose: AtomicU32,
}

impl<G> LosesAnswers<G> {
    /// Loses the next `lose` answers.
    pub fn new(inner: G, lose: u32) -> Self {
        Self {
            inner,
            lose: AtomicU32::new(lose),
        }
    }
}

impl<G: Gateway> Gateway for LosesAnswers<G> {
    async fn charge(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        let answer = self.inner.charge(request).await;
        let lost = self
            .lose
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            return Err(GatewayError::Transient(
                "answer lost after the charge (timeout)".to_owned(),
            ));
        }
        answer
    }
}

/// A gateway that is down: every call fails transiently before reaching anything.
#[derive(Debug, Default)]
pub struct Down {
    /// Calls made.
    pub calls: AtomicU32,
}

impl Gateway for Down {
    fn charge(
        &self,
        _request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err(GatewayError::Transient(
            "connection refused".to_owned(),
        )))
    }
}

/// Credits at $0.10, as in the product's worked example.
pub fn ten_cents() -> UnitPrice {
    UnitPrice::new(Decimal::new(10, 2), Currency::USD).expect("price")
}

/// Recharge command `seq` of `customer`: buy `whole` credits at $0.10 with `method`, in
/// November 2026, under a monthly limit of `limit_cents`.
pub fn command(
    customer: &str,
    seq: u64,
    whole: i64,
    limit_cents: i64,
    method: &str,
) -> RechargeCommand {
    let unit_price = ten_cents();
    let credits = testkit::credits(whole);
    let issued_at = testkit::at("2026-11-25T10:00:00Z");
    RechargeCommand {
        id: CommandId {
            customer: testkit::customer(customer),
            credit_type: testkit::credit_type(testkit::example::CREDIT_TYPE),
            seq,
        },
        account: AccountHandle(0),
        credits,
        cost: unit_price.cost_of(credits).expect("cost"),
        unit_price,
        spend_limit: testkit::cents(limit_cents),
        period: SpendPeriod::containing(SpendReset::Month, issued_at).expect("period"),
        payment_method: testkit::payment_method(method),
        issued_at,
    }
}
