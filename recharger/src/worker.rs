//! The recharge worker: one command at a time, the spend decision made durable before any
//! charge (reserve + persist → charge → finish + persist), the command id as the gateway's
//! idempotency key on every attempt and after every restart, so a command pays at most once
//! and never passes the period's spend limit.
//!
//! State: behind the [`RechargeBook`] port: [`StoreBook`] (the whole spend book in a
//! store, the embedded default) or [`CqlBook`](crate::cql::CqlBook) (CQL rows moved by
//! lightweight transactions, shared by any number of recharger processes).

use std::sync::Arc;
use std::time::Duration;

use refill_ledger::amount::Credits;
use refill_ledger::effects::RechargeCommand;
use refill_ledger::input::{RechargeOutcome, RechargeResult};
use refill_ledger::money::Money;
use refill_ledger::spend::Begin;
use refill_store::Store;

use crate::book::{RechargeBook, Settlement, StoreBook};
use crate::error::RechargerError;
use crate::gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};

pub use crate::book::{PENDING_PREFIX, SPEND_BOOK_KEY, TABLE};

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
pub struct Recharger<G: Gateway, B: RechargeBook> {
    gateway: G,
    book: Arc<B>,
    config: RechargerConfig,
}

impl<G: Gateway, S: Store + 'static> Recharger<G, StoreBook<S>> {
    /// Loads the recharger's state from `store` (empty when there is none yet): the
    /// embedded default, one recharger per store.
    pub async fn open(
        gateway: G,
        store: Arc<S>,
        config: RechargerConfig,
    ) -> Result<Self, RechargerError> {
        let book = tokio::task::spawn_blocking(move || StoreBook::open(store))
            .await
            .map_err(|error| RechargerError::Task(error.to_string()))??;
        Ok(Self::new(gateway, Arc::new(book), config))
    }
}

impl<G: Gateway, B: RechargeBook> Recharger<G, B> {
    /// A recharger on `book`; several may share one book (in one process, or through CQL
    /// across processes).
    pub fn new(gateway: G, book: Arc<B>, config: RechargerConfig) -> Self {
        Self {
            gateway,
            book,
            config,
        }
    }

    /// Applies `command` once and returns the outcome for the owning shard. A redelivered
    /// command answers its recorded result without calling the gateway; one left reserved
    /// (by a crash, or an earlier error) is charged again with the same idempotency key.
    ///
    /// On error the command stays where the book says it is: deliver it again later.
    pub async fn process(
        &mut self,
        command: &RechargeCommand,
    ) -> Result<RechargeOutcome, RechargerError> {
        let (credits, cost) = match self.begin(command).await? {
            Begin::Finished(result) => return Ok(outcome(command, result)),
            Begin::Charge { credits, cost } => (credits, cost),
        };
        self.charge_and_finish(command, credits, cost).await
    }

    /// Processes every command left reserved in the book (after a restart), in command id
    /// order; stops at the first error.
    pub async fn resume(&mut self) -> Result<Vec<RechargeOutcome>, RechargerError> {
        let commands = self.pending().await?;
        let mut outcomes = Vec::with_capacity(commands.len());
        for command in &commands {
            outcomes.push(self.process(command).await?);
        }
        Ok(outcomes)
    }

    /// Commands reserved but not finished, in command id order.
    pub async fn pending(&self) -> Result<Vec<RechargeCommand>, RechargerError> {
        self.blocking(|book| book.pending()).await
    }

    /// The book.
    pub fn book(&self) -> &Arc<B> {
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
    async fn begin(&self, command: &RechargeCommand) -> Result<Begin, RechargerError> {
        let command = command.clone();
        self.blocking(move |book| book.begin(&command)).await
    }

    /// Charges a reservation and settles it.
    async fn charge_and_finish(
        &self,
        command: &RechargeCommand,
        credits: Credits,
        cost: Money,
    ) -> Result<RechargeOutcome, RechargerError> {
        let settlement = self.charge(command, credits, cost).await?;
        let result = self.finish(command, settlement).await?;
        Ok(outcome(command, result))
    }

    /// Charges the reserved amount, retrying transient failures with the same key.
    async fn charge(
        &self,
        command: &RechargeCommand,
        credits: Credits,
        cost: Money,
    ) -> Result<Settlement, RechargerError> {
        if cost.minor_units == 0 {
            // Credits whose cost rounds to nothing: there is nothing to charge (and Stripe
            // refuses a zero amount).
            return Ok(Settlement::Charged);
        }
        let request = ChargeRequest::for_command(command, credits, cost);
        let attempts_max = self.config.charge_attempts_max.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.gateway.charge(&request).await {
                Ok(ChargeResult::Succeeded { .. }) => return Ok(Settlement::Charged),
                Ok(ChargeResult::Declined { code }) => {
                    return Ok(Settlement::Declined { code });
                }
                // Refused outright (unknown payment method, amount below the minimum): no
                // money moved, and the customer must act, as for a decline.
                Err(GatewayError::Refused { code, .. }) => {
                    return Ok(Settlement::Declined { code });
                }
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
        &self,
        command: &RechargeCommand,
        settlement: Settlement,
    ) -> Result<RechargeResult, RechargerError> {
        let command = command.clone();
        self.blocking(move |book| book.finish(&command, &settlement))
            .await
    }

    /// Runs a blocking book call off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce(&B) -> Result<T, RechargerError> + Send + 'static,
    ) -> Result<T, RechargerError> {
        let book = Arc::clone(&self.book);
        tokio::task::spawn_blocking(move || call(&book))
            .await
            .map_err(|error| RechargerError::Task(error.to_string()))?
    }
}

fn outcome(command: &RechargeCommand, result: RechargeResult) -> RechargeOutcome {
    RechargeOutcome {
        command: command.id.clone(),
        result,
    }
}
