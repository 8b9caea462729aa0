//! Effects of a batch: what the shell must carry out (store ledger entries and account
//! state, publish recharge commands, send notifications) and the per-input outcomes.

use serde::{Deserialize, Serialize};

use crate::amount::Credits;
use crate::autorecharge::{PauseReason, SkipReason};
use crate::ids::{CommandId, GrantId, PaymentMethodId};
use crate::money::{Money, UnitPrice};
use crate::rejection::Rejection;
use crate::time::{SpendPeriod, TimestampMs};

/// An account of this shard, by position; stable for the shard's life and across replays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountHandle(pub u32);

/// The kind of a ledger entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// Credits granted by hand or by a plan.
    Grant,
    /// Credits burned by usage.
    Usage,
    /// Credits granted by an automatic recharge.
    Recharge,
    /// A grant's remainder leaving at its expiry.
    Expiry,
    /// A grant's remainder voided.
    Void,
}

/// What a ledger entry points back to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reference {
    /// Usage rolled up per account per flush: the events that name this account in shard
    /// batches `first_batch..=last_batch` (each batch is one log record, so the shell
    /// names the log range).
    Usage {
        /// The shard batch of the first event.
        first_batch: u64,
        /// The shard batch of the last event.
        last_batch: u64,
        /// How many events.
        events: u32,
    },
    /// A grant (grant, expiry and void entries).
    Grant(GrantId),
    /// A recharge and the grant it made.
    Recharge {
        /// The command.
        command: CommandId,
        /// The grant.
        grant: GrantId,
    },
}

/// One line of an account's ledger. Amounts are signed so they sum to the balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The account.
    pub account: AccountHandle,
    /// Position in the account's ledger, from 1.
    pub seq: u64,
    /// When it took effect.
    pub at: TimestampMs,
    /// What kind.
    pub kind: EntryKind,
    /// Positive for grants and recharges, negative for usage, expiry and void.
    pub amount: Credits,
    /// The balance after it.
    pub balance_after: Credits,
    /// What it points back to.
    pub reference: Reference,
}

/// A command to the recharger: buy `credits` for `cost` with `payment_method`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeCommand {
    /// Idempotency key end to end.
    pub id: CommandId,
    /// The account.
    pub account: AccountHandle,
    /// Credits to buy.
    pub credits: Credits,
    /// Their cost, rounded half-even to the minor unit.
    pub cost: Money,
    /// The unit price used, so the recharger can cut consistently.
    pub unit_price: UnitPrice,
    /// The period's spend limit in force when the command was issued.
    pub spend_limit: Money,
    /// The spend period the cost counts against.
    pub period: SpendPeriod,
    /// What to charge.
    pub payment_method: PaymentMethodId,
    /// When it was issued.
    pub issued_at: TimestampMs,
}

/// The status of a recharge attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptStatus {
    /// Sent to the recharger, no result yet.
    Pending,
    /// Charged and granted.
    Succeeded,
    /// The payment was declined.
    Failed,
    /// Suppressed, with a reason.
    Skipped,
}

/// Why an attempt ended as it did.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AttemptReason {
    /// The recharge was suppressed.
    Skipped(SkipReason),
    /// The gateway declined with this code.
    Declined(String),
    /// Cut to what the remaining spend limit buys.
    CutToSpendLimit,
}

impl AttemptReason {
    /// The wire text.
    pub fn as_text(&self) -> &str {
        match self {
            Self::Skipped(reason) => reason.as_str(),
            Self::Declined(code) => code,
            Self::CutToSpendLimit => "cut_to_spend_limit",
        }
    }
}

/// A recharge attempt, created `Pending` or `Skipped` and later updated under the same id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeAttempt {
    /// The account.
    pub account: AccountHandle,
    /// The attempt's id (the command id when one was issued).
    pub id: CommandId,
    /// When this status was reached.
    pub at: TimestampMs,
    /// Credits bought or that would have been.
    pub credits: Credits,
    /// Cost charged or that would have been.
    pub cost: Option<Money>,
    /// Status.
    pub status: AttemptStatus,
    /// Why, where there is more to say.
    pub reason: Option<AttemptReason>,
}

/// Something to tell the customer or the operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NotificationKind {
    /// A recharge was charged and granted.
    RechargeSucceeded {
        /// The command.
        command: CommandId,
        /// Credits granted.
        credits: Credits,
        /// Charged.
        cost: Money,
    },
    /// A recharge's payment was declined.
    RechargeFailed {
        /// The command.
        command: CommandId,
        /// Decline code.
        code: String,
    },
    /// Auto-recharge paused.
    AutoRechargePaused {
        /// Why.
        reason: PauseReason,
    },
    /// Auto-recharge resumed.
    AutoRechargeResumed,
    /// Spend this period reached a share of the limit.
    SpendLimitWarning {
        /// 80, 90 or 100.
        percent: u8,
    },
}

/// A notification about one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The account.
    pub account: AccountHandle,
    /// When.
    pub at: TimestampMs,
    /// What.
    pub kind: NotificationKind,
}

/// The result of one input that is not a plainly applied usage event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// The usage event's id was already applied inside the window.
    Duplicate,
    /// Refused; nothing changed.
    Rejected(Rejection),
    /// A grant was made (by hand or by a subscription).
    GrantCreated {
        /// The account.
        account: AccountHandle,
        /// The grant.
        grant: GrantId,
    },
    /// The idempotency key was seen before: the earlier grant stands.
    GrantReplayed {
        /// The account.
        account: AccountHandle,
        /// The earlier grant.
        grant: GrantId,
    },
    /// A grant's remainder was voided.
    GrantVoided {
        /// The account.
        account: AccountHandle,
        /// Credits voided.
        credits: Credits,
    },
    /// A recharge result that does not match the command in flight (a duplicate or a
    /// late delivery); ignored.
    StaleRechargeOutcome,
}

/// Everything a batch produced. Reused across batches to avoid allocation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Effects {
    /// The shard's batch number.
    pub batch: u64,
    /// Outcomes of inputs other than plainly applied usage events, by input index.
    pub outcomes: Vec<(u32, Outcome)>,
    /// New ledger entries, in order per account.
    pub entries: Vec<LedgerEntry>,
    /// Recharge commands to publish.
    pub commands: Vec<RechargeCommand>,
    /// New or updated recharge attempts.
    pub attempts: Vec<RechargeAttempt>,
    /// Notifications to send.
    pub notifications: Vec<Notification>,
    /// Accounts whose state changed, in order of first change.
    pub changed: Vec<AccountHandle>,
    /// Usage events applied.
    pub events_applied: u64,
    /// Usage events dropped as duplicates.
    pub events_duplicate: u64,
    /// Inputs rejected.
    pub inputs_rejected: u64,
    /// What changed since the previous flush, when the batch held [`crate::Input::Flush`].
    pub flush: Option<FlushSet>,
}

/// What one flush of a shard covers: everything that changed since the previous one. The
/// shell writes these accounts' and customers' state rows, the dedup ids, and the
/// batch's (and earlier batches') entries and attempts, then the checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlushSet {
    /// The flush's number (1 for the shard's first).
    pub number: u64,
    /// Accounts changed since the previous flush, in order of first change.
    pub accounts: Vec<AccountHandle>,
    /// Customers changed since the previous flush, by index, ascending.
    pub customers: Vec<u32>,
    /// Dedup fingerprints added since the previous flush: (generation, fingerprints).
    pub dedup: Vec<(u64, Vec<u128>)>,
    /// The oldest dedup generation still live.
    pub dedup_generation_min: u64,
}

impl Effects {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.batch = 0;
        self.outcomes.clear();
        self.entries.clear();
        self.commands.clear();
        self.attempts.clear();
        self.notifications.clear();
        self.changed.clear();
        self.events_applied = 0;
        self.events_duplicate = 0;
        self.inputs_rejected = 0;
        self.flush = None;
    }

    /// The outcome of input `index`, if it has one beyond "applied".
    pub fn outcome_of(&self, index: u32) -> Option<&Outcome> {
        self.outcomes
            .iter()
            .find(|(at, _)| *at == index)
            .map(|(_, outcome)| outcome)
    }
}
