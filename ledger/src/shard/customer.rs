//! Customers: the record the shard keeps per customer, small because there is one per
//! idle account too, and its state row (customer rows and snapshots), which keeps the
//! encoding customers had when every customer held its own account list and grant-key
//! map, so rows written before still read.

use std::collections::BTreeMap;

use compact_str::CompactString;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

use super::grant_keys::{GrantKeys, NO_KEY};
use super::index::NO_ACCOUNT;
use crate::ids::{CustomerId, GrantId, IdempotencyKey, PaymentMethodId, PlanId, ProductId};
use crate::time::TimestampMs;

/// A customer of this shard.
///
/// 96 bytes and no heap block for the usual customer (one account, a payment method and a
/// name of up to 24 bytes, which stay inline): its first account is kept here (and in the
/// index), its grant keys in the shard's [`GrantKeys`], and what few customers have (an
/// email, a second account, subscriptions) in a box made on demand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Customer {
    /// Its id.
    pub id: CustomerId,
    /// Default payment method.
    pub payment_method: Option<PaymentMethodId>,
    /// Display name.
    pub(crate) name: Option<CompactString>,
    /// Number of the next grant.
    pub(crate) next_grant: u64,
    /// Its first account, or [`NO_ACCOUNT`].
    pub(crate) first_account: u32,
    /// The first of its entries in the shard's grant keys, or [`NO_KEY`].
    pub(crate) grant_keys: u32,
    /// Rarely used fields, boxed to keep idle customers small.
    pub(crate) details: Option<Box<CustomerDetails>>,
}

/// A customer's rarely used fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerDetails {
    /// Email.
    pub email: Option<String>,
    /// Its accounts after the first, in the order they were opened.
    pub(crate) more_accounts: Vec<u32>,
    /// Active subscriptions by product.
    pub subscriptions: BTreeMap<ProductId, Subscription>,
}

/// A customer's subscription to a product.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The plan.
    pub plan: PlanId,
    /// When it started.
    pub started_at: TimestampMs,
    /// The grant it made.
    pub grant: GrantId,
}

impl Customer {
    /// A customer seen for the first time.
    pub(crate) fn new(id: CustomerId) -> Self {
        Self {
            id,
            payment_method: None,
            name: None,
            next_grant: 1,
            first_account: NO_ACCOUNT,
            grant_keys: NO_KEY,
            details: None,
        }
    }

    /// Display name, if set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Email, if set.
    pub fn email(&self) -> Option<&str> {
        self.details.as_deref()?.email.as_deref()
    }

    /// Its rarely used fields, if any were set.
    pub fn details(&self) -> Option<&CustomerDetails> {
        self.details.as_deref()
    }

    /// Its accounts (indexes), in the order they were opened.
    pub(crate) fn account_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        let more = self
            .details
            .as_deref()
            .map_or(&[][..], |details| &details.more_accounts);
        (self.first_account != NO_ACCOUNT)
            .then_some(self.first_account)
            .into_iter()
            .chain(more.iter().copied())
    }

    /// The box of rarely used fields, made if missing.
    pub(crate) fn details_mut(&mut self) -> &mut CustomerDetails {
        self.details.get_or_insert_with(Box::default)
    }
}

/// A customer's state row as it is written: the fields in the order and shape of the
/// original `Customer` (its accounts as (credit type, account) pairs, the grant keys in a
/// map sorted by key inside the details), so the bytes do not depend on the layout above.
#[derive(Serialize)]
#[serde(rename = "Customer")]
pub(super) struct CustomerRowRef<'a> {
    id: &'a CustomerId,
    payment_method: &'a Option<PaymentMethodId>,
    accounts: Vec<(u32, u32)>,
    next_grant: u64,
    details: Option<DetailsRowRef<'a>>,
}

#[derive(Serialize)]
#[serde(rename = "CustomerDetails")]
struct DetailsRowRef<'a> {
    name: Option<&'a str>,
    email: Option<&'a str>,
    grant_keys: KeysRef<'a>,
    subscriptions: &'a BTreeMap<ProductId, Subscription>,
}

/// Grant keys sorted by key, written as a map.
struct KeysRef<'a>(Vec<(&'a IdempotencyKey, (u32, GrantId))>);

impl Serialize for KeysRef<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, made) in &self.0 {
            map.serialize_entry(key, made)?;
        }
        map.end()
    }
}

/// No subscriptions, written as an empty map.
const NO_SUBSCRIPTIONS: &BTreeMap<ProductId, Subscription> = &BTreeMap::new();

impl<'a> CustomerRowRef<'a> {
    /// The row of `customer`; `credit_type` names an account's credit type.
    pub fn new(
        customer: &'a Customer,
        keys: &'a GrantKeys,
        credit_type: impl Fn(u32) -> u32,
    ) -> Self {
        let keys = keys.of_customer(customer.grant_keys);
        let email = customer.email();
        let subscriptions = customer
            .details
            .as_deref()
            .map(|details| &details.subscriptions)
            .filter(|subscriptions| !subscriptions.is_empty());
        // The original record made its details on the first name, email, key or
        // subscription, and never lost one, so it had details exactly when one is held.
        let details = (customer.name.is_some()
            || email.is_some()
            || !keys.is_empty()
            || subscriptions.is_some())
        .then(|| DetailsRowRef {
            name: customer.name(),
            email,
            grant_keys: KeysRef(keys),
            subscriptions: subscriptions.unwrap_or(NO_SUBSCRIPTIONS),
        });
        Self {
            id: &customer.id,
            payment_method: &customer.payment_method,
            accounts: customer
                .account_indexes()
                .map(|account| (credit_type(account), account))
                .collect(),
            next_grant: customer.next_grant,
            details,
        }
    }
}

/// A customer's grant keys as its row holds them: key → (account, grant).
pub(super) type KeyMap = BTreeMap<IdempotencyKey, (u32, GrantId)>;

/// A customer's state row as it is read (see [`CustomerRowRef`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename = "Customer")]
pub(super) struct CustomerRow {
    pub id: CustomerId,
    pub payment_method: Option<PaymentMethodId>,
    pub accounts: Vec<(u32, u32)>,
    pub next_grant: u64,
    pub details: Option<DetailsRow>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename = "CustomerDetails")]
pub(super) struct DetailsRow {
    pub name: Option<String>,
    pub email: Option<String>,
    pub grant_keys: KeyMap,
    pub subscriptions: BTreeMap<ProductId, Subscription>,
}

impl CustomerRow {
    /// The record, without its grant keys (the caller enters them in the shard's table)
    /// and its accounts (the caller checks and adds them).
    pub fn into_parts(self) -> (Customer, Vec<(u32, u32)>, KeyMap) {
        let mut customer = Customer::new(self.id);
        customer.payment_method = self.payment_method;
        customer.next_grant = self.next_grant;
        let mut keys = BTreeMap::new();
        if let Some(details) = self.details {
            customer.name = details.name.map(CompactString::from);
            keys = details.grant_keys;
            if details.email.is_some() || !details.subscriptions.is_empty() {
                let more = customer.details_mut();
                more.email = details.email;
                more.subscriptions = details.subscriptions;
            }
        }
        (customer, self.accounts, keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CreditType;
    use crate::grant::GrantKind;
    use crate::input::{CustomerUpdate, Input};
    use crate::money::{Currency, UnitPrice};
    use crate::shard::{Shard, ShardConfig};
    use crate::testkit::{self, example};

    /// The original `Customer` and `CustomerDetails`, as their serde derive wrote them;
    /// the rows must keep these bytes.
    #[derive(Serialize)]
    struct Before {
        id: CustomerId,
        payment_method: Option<PaymentMethodId>,
        accounts: Vec<(u32, u32)>,
        next_grant: u64,
        details: Option<Box<BeforeDetails>>,
    }

    #[derive(Serialize)]
    struct BeforeDetails {
        name: Option<String>,
        email: Option<String>,
        grant_keys: BTreeMap<IdempotencyKey, (u32, GrantId)>,
        subscriptions: BTreeMap<ProductId, Subscription>,
    }

    fn row(shard: &Shard, index: u32) -> Vec<u8> {
        let bytes = shard.customer_state(index);
        assert_eq!(bytes[0], 1, "row format 1");
        bytes[1..].to_vec()
    }

    fn encode(before: &Before) -> Vec<u8> {
        postcard::to_stdvec(before).expect("serializes")
    }

    #[test]
    fn customer_rows_keep_their_bytes_and_round_trip() {
        let now = testkit::at("2026-01-01T00:00:00Z");
        let mut shard = Shard::new(ShardConfig::default(), now);
        let mut inputs = testkit::example_catalog();
        inputs.push(Input::PutCreditType(CreditType {
            id: testkit::credit_type("gpu-credits"),
            name: "GPU credits".into(),
            unit_price: UnitPrice::new(rust_decimal::Decimal::new(5, 1), Currency::USD)
                .expect("price"),
        }));
        // 0: no name, no keys. 1: a name and a key. 2: everything.
        inputs.push(Input::PutCustomer(CustomerUpdate {
            id: testkit::customer("bare"),
            name: None,
            email: None,
            payment_method: None,
        }));
        inputs.push(testkit::put_customer("named", "pm_card_visa"));
        inputs.push(testkit::grant(
            "named",
            5,
            GrantKind::Promotional,
            None,
            None,
            "g",
        ));
        inputs.push(Input::PutCustomer(CustomerUpdate {
            id: testkit::customer("full"),
            name: Some("a name longer than twenty-four bytes".into()),
            email: Some("full@example.com".into()),
            payment_method: None,
        }));
        inputs.push(testkit::grant("full", 5, GrantKind::Paid, None, None, "z"));
        inputs.push(testkit::grant("full", 5, GrantKind::Paid, None, None, "a"));
        inputs.push(testkit::grant("full", 5, GrantKind::Paid, None, None, "a"));
        inputs.push(testkit::subscribe_example("full"));
        let mut gpu = testkit::grant("full", 7, GrantKind::Paid, None, None, "gpu");
        if let Input::Grant(request) = &mut gpu {
            request.credit_type = testkit::credit_type("gpu-credits");
        }
        inputs.push(gpu);
        let fx = shard.apply(now, &inputs);
        assert_eq!(fx.inputs_rejected, 0, "{:?}", fx.outcomes);
        assert_eq!(shard.account_count(), 3);

        let bare = Before {
            id: testkit::customer("bare"),
            payment_method: None,
            accounts: vec![],
            next_grant: 1,
            details: None,
        };
        assert_eq!(row(&shard, 0), encode(&bare));
        let named = Before {
            id: testkit::customer("named"),
            payment_method: Some(testkit::payment_method("pm_card_visa")),
            accounts: vec![(0, 0)],
            next_grant: 2,
            details: Some(Box::new(BeforeDetails {
                name: Some("named".into()),
                email: None,
                grant_keys: BTreeMap::from([(testkit::key("g"), (0, GrantId(1)))]),
                subscriptions: BTreeMap::new(),
            })),
        };
        assert_eq!(row(&shard, 1), encode(&named));
        let full = Before {
            id: testkit::customer("full"),
            payment_method: None,
            accounts: vec![(0, 1), (1, 2)],
            next_grant: 5,
            details: Some(Box::new(BeforeDetails {
                name: Some("a name longer than twenty-four bytes".into()),
                email: Some("full@example.com".into()),
                grant_keys: BTreeMap::from([
                    (testkit::key("a"), (1, GrantId(2))),
                    (testkit::key("gpu"), (2, GrantId(4))),
                    (testkit::key("sub-full"), (1, GrantId(3))),
                    (testkit::key("z"), (1, GrantId(1))),
                ]),
                subscriptions: BTreeMap::from([(
                    ProductId::new(example::PRODUCT).expect("id"),
                    Subscription {
                        plan: PlanId::new(example::PLAN).expect("id"),
                        started_at: now,
                        grant: GrantId(3),
                    },
                )]),
            })),
        };
        assert_eq!(row(&shard, 2), encode(&full));

        // A snapshot round trip keeps every row, and idempotency.
        let restored = Shard::restore(&shard.snapshot()).expect("restores");
        assert_eq!(restored.snapshot(), shard.snapshot());
        for index in 0..3 {
            assert_eq!(row(&restored, index), row(&shard, index));
        }
        let mut restored = restored;
        let again = restored.apply(now, &inputs[inputs.len() - 5..]);
        assert_eq!(again.inputs_rejected, 0, "{again:?}");
        let replayed = again
            .outcomes
            .iter()
            .filter(|(_, outcome)| matches!(outcome, crate::effects::Outcome::GrantReplayed { .. }))
            .count();
        assert_eq!(replayed, 5, "every key is replayed: {again:?}");
        assert_eq!(
            restored.account(crate::AccountHandle(1)).balance(),
            testkit::credits(60)
        );
    }
}
