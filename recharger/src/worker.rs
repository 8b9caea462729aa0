//! The recharge worker: one command at a time, the spend decision made durable before any
//! charge (reserve + persist → charge → finish + persist), the command id as the gateway's
//! idempotency key on every attempt and after every restart, so a command pays at most once
//! and never passes the period's spend limit.
//!
//! State: the [`SpendBook`] in postcard bytes under table [`TABLE`], key
//! [`SPEND_BOOK_KEY`], rewritten whole after each change, plus one row per reserved command
//! (`pending/<command id>`, the command itself) so a restart can resume it without a
//! redelivery. Both change in one atomic store write.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use refill_ledger::amount::Credits;
use refill_ledger::effects::RechargeCommand;
use refill_ledger::ids::CommandId;
use refill_ledger::input::{RechargeOutcome, RechargeResult};
use refill_ledger::money::Money;
use refill_ledger::spend::{Begin, CommandState, SpendBook};
use refill_store::{Store, StoreError, Write};

use crate::error::RechargerError;
use crate::gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};

/// The store table of the recharger.
pub const TABLE: &str = "recharger";
/// Key of the spend book (postcard bytes) in [`TABLE`].
pub const SPEND_BOOK_KEY: &[u8] = b"spend-book";
/// Key prefix of reserved commands (postcard [`RechargeCommand`]) in [`TABLE`].
pub const PENDING_PREFIX: &[u8] = b"pending/";

/// Rows read per scan when loading reserved commands.
const SCAN_PAGE: usize = 1024;

/// How the worker retries the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RechargerConfig {
    /// Gateway calls per delivery before giving up with
    /// [`RechargerError::GatewayUnavailable`] (at least 1).
    pub charge_attempts_max: u32,
    /// Pause before the first retry; it doubles on each further retry.
    pub retry_backoff_ms: u64,
    /// Longest pause between two retries.
    pub retry_backoff_max_ms: u64,
}

impl Default for RechargerConfig {
    fn default() -> Self {
        Self {
            charge_attempts_max: 5,
            retry_backoff_ms: 200,
            retry_backoff_max_ms: 10_000,
        }
    }
}

impl RechargerConfig {
    /// The pause after failed attempt number `attempt` (from 1).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1_u64 << attempt.saturating_sub(1).min(20);
        Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(self.retry_backoff_max_ms),
        )
    }
}

/// Applies recharge commands one at a time: spend check, charge, outcome.
#[derive(Debug)]
pub struct Recharger<G: Gateway, S: Store> {
    gateway: G,
    store: Arc<S>,
    config: RechargerConfig,
    book: SpendBook,
    pending: BTreeMap<CommandId, RechargeCommand>,
}

impl<G: Gateway, S: Store> Recharger<G, S> {
    /// Loads the recharger's state from `store` (empty when there is none yet).
    pub async fn open(
        gateway: G,
        store: Arc<S>,
        config: RechargerConfig,
    ) -> Result<Self, RechargerError> {
        let (book, pending) = blocking(&store, load).await?;
        Ok(Self {
            gateway,
            store,
            config,
            book,
            pending,
        })
    }

    /// Applies `command` once and returns the outcome for the owning shard. A redelivered
    /// command answers its recorded result without calling the gateway; one left reserved
    /// (by a crash, or an earlier error) is charged again with the same idempotency key.
    ///
    /// On error the command stays where the store says it is: deliver it again later.
    pub async fn process(
        &mut self,
        command: &RechargeCommand,
    ) -> Result<RechargeOutcome, RechargerError> {
        let (credits, cost) = match self.begin(command).await? {
            Begin::Finished(result) => return Ok(outcome(command, result)),
            Begin::Charge { credits, cost } => (credits, cost),
        };
        let verdict = self.charge(command, credits, cost).await?;
        let result = self.finish(command, verdict).await?;
        Ok(outcome(command, result))
    }

    /// Processes every command left reserved in the store (after a restart), in command
    /// id order; stops at the first error.
    pub async fn resume(&mut self) -> Result<Vec<RechargeOutcome>, RechargerError> {
        let commands: Vec<RechargeCommand> = self.pending.values().cloned().collect();
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in &commands {
            outcomes.push(self.process(command).await?);
        }
        Ok(outcomes)
    }

    /// Commands reserved but not finished, in command id order.
    pub fn pending(&self) -> impl Iterator<Item = &RechargeCommand> {
        self.pending.values()
    }

    /// The spend book as stored.
    pub fn book(&self) -> &SpendBook {
        &self.book
    }

    /// The gateway.
    pub fn gateway(&self) -> &G {
        &self.gateway
    }

    /// The retry settings.
    pub fn config(&self) -> &RechargerConfig {
        &self.config
    }

    /// Decides, and makes a new decision durable before anything is charged.
    async fn begin(&mut self, command: &RechargeCommand) -> Result<Begin, RechargerError> {
        if self.book.command(&command.id).is_some() {
            // Known: `begin` only reads the recorded state.
            return Ok(self.book.begin(command));
        }
        let mut next = self.book.clone();
        let decision = next.begin(command);
        let mut writes = vec![book_write(&next)?];
        let reserved = matches!(decision, Begin::Charge { .. });
        if reserved {
            writes.push(Write::Put {
                table: TABLE,
                key: pending_key(&command.id),
                value: encode(command)?,
            });
        }
        self.write(writes).await?;
        self.book = next;
        if reserved {
            self.pending.insert(command.id.clone(), command.clone());
        }
        Ok(decision)
    }

    /// Charges the reserved amount, retrying transient failures with the same key.
    async fn charge(
        &self,
        command: &RechargeCommand,
        credits: Credits,
        cost: Money,
    ) -> Result<Verdict, RechargerError> {
        if cost.minor_units == 0 {
            // Credits whose cost rounds to nothing: there is nothing to charge (and Stripe
            // refuses a zero amount).
            return Ok(Verdict::Charged);
        }
        let request = ChargeRequest::for_command(command, credits, cost);
        let attempts_max = self.config.charge_attempts_max.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.gateway.charge(&request).await {
                Ok(ChargeResult::Succeeded { .. }) => return Ok(Verdict::Charged),
                Ok(ChargeResult::Declined { code }) => return Ok(Verdict::Declined(code)),
                // Refused outright (unknown payment method, amount below the minimum): no
                // money moved, and the customer must act, as for a decline.
                Err(GatewayError::Refused { code, .. }) => return Ok(Verdict::Declined(code)),
                Err(error) if error.is_transient() && attempt < attempts_max => {
                    tokio::time::sleep(self.config.backoff(attempt)).await;
                }
                Err(error) if error.is_transient() => {
                    return Err(RechargerError::GatewayUnavailable {
                        command: request.idempotency_key,
                        attempts: attempt,
                        source: error,
                    });
                }
                Err(error) => {
                    return Err(RechargerError::GatewayNeedsOperator {
                        command: request.idempotency_key,
                        source: error,
                    });
                }
            }
        }
    }

    /// Settles the reservation with the gateway's answer, durably.
    async fn finish(
        &mut self,
        command: &RechargeCommand,
        verdict: Verdict,
    ) -> Result<RechargeResult, RechargerError> {
        let mut next = self.book.clone();
        let (charged, code) = match &verdict {
            Verdict::Charged => (true, ""),
            Verdict::Declined(code) => (false, code.as_str()),
        };
        let result = next
            .finish(&command.id, charged, code)
            .ok_or_else(|| RechargerError::NotReserved(command.id.to_string()))?;
        self.write(vec![
            book_write(&next)?,
            Write::Delete {
                table: TABLE,
                key: pending_key(&command.id),
            },
        ])
        .await?;
        self.book = next;
        self.pending.remove(&command.id);
        Ok(result)
    }

    async fn write(&self, writes: Vec<Write>) -> Result<(), RechargerError> {
        blocking(&self.store, move |store| Ok(store.write(writes)?)).await
    }
}

/// The gateway's final answer, as the spend book takes it.
enum Verdict {
    Charged,
    Declined(String),
}

fn outcome(command: &RechargeCommand, result: RechargeResult) -> RechargeOutcome {
    RechargeOutcome {
        command: command.id.clone(),
        result,
    }
}

fn pending_key(id: &CommandId) -> Vec<u8> {
    let mut key = PENDING_PREFIX.to_vec();
    key.extend_from_slice(id.to_string().as_bytes());
    key
}

fn encode<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, RechargerError> {
    postcard::to_stdvec(value).map_err(|error| RechargerError::Encode(error.to_string()))
}

fn book_write(book: &SpendBook) -> Result<Write, RechargerError> {
    Ok(Write::Put {
        table: TABLE,
        key: SPEND_BOOK_KEY.to_vec(),
        value: encode(book)?,
    })
}

/// Runs a blocking store call off the async threads.
async fn blocking<S: Store, T: Send + 'static>(
    store: &Arc<S>,
    call: impl FnOnce(&S) -> Result<T, RechargerError> + Send + 'static,
) -> Result<T, RechargerError> {
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || call(&store))
        .await
        .map_err(|error| RechargerError::Task(error.to_string()))?
}

type Loaded = (SpendBook, BTreeMap<CommandId, RechargeCommand>);

fn load<S: Store>(store: &S) -> Result<Loaded, RechargerError> {
    let book: SpendBook = match store.get(TABLE, SPEND_BOOK_KEY)? {
        Some(bytes) => postcard::from_bytes(&bytes)
            .map_err(|error| StoreError::Corrupt(format!("recharger spend book: {error}")))?,
        None => SpendBook::default(),
    };
    let mut pending = BTreeMap::new();
    let mut start = PENDING_PREFIX.to_vec();
    loop {
        let page = store.scan(TABLE, PENDING_PREFIX, &start, SCAN_PAGE)?;
        for (key, value) in &page {
            let command: RechargeCommand = postcard::from_bytes(value).map_err(|error| {
                StoreError::Corrupt(format!(
                    "recharger row {}: {error}",
                    String::from_utf8_lossy(key)
                ))
            })?;
            pending.insert(command.id.clone(), command);
        }
        match page.last() {
            Some((key, _)) if page.len() == SCAN_PAGE => {
                start = key.clone();
                start.push(0);
            }
            _ => break,
        }
    }
    // Rows are deleted in the same write that finishes a command; keep only what the book
    // still holds as reserved, whatever happened.
    pending.retain(|id, _| matches!(book.command(id), Some(CommandState::Reserved { .. })));
    Ok((book, pending))
}
