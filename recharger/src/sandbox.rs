//! The sandbox gateway: an in-memory payment gateway that follows Stripe's test payment
//! methods, so `refill serve` runs with nothing to install and tests can see every
//! decline path (stripe-mock never declines). Idempotent per key, as Stripe is.
//!
//! [`SandboxGateway::durable`] also keeps its charges in a file of JSON lines (one per
//! new charge and per repeated call, each fsynced before the answer), so a restarted
//! process answers a repeated key with the recorded charge, and tests can count charges
//! per command id across processes.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::future::{Future, ready};
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use refill_ledger::money::Currency;
use serde::{Deserialize, Serialize};

use refill_ledger::ids::PaymentMethodId;
use refill_ledger::money::Money;
use refill_ledger::testkit::sandbox_charge;

use crate::gateway::{ChargeRequest, ChargeResult, Gateway, GatewayError};

/// One idempotency key's first request and answer, and how often it was asked.
#[derive(Debug)]
struct KeyRecord {
    request: ChargeRequest,
    result: ChargeResult,
    calls: u32,
}

#[derive(Debug, Default)]
struct Ledger {
    by_key: HashMap<String, KeyRecord>,
    /// Payments that moved money, in order: (idempotency key, amount).
    payments: Vec<(String, Money)>,
    /// The journal file of a durable sandbox.
    journal: Option<File>,
}

/// One line of a durable sandbox's journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum SandboxRecord {
    /// A new idempotency key and the answer every repeat of it gets.
    Charge {
        /// The idempotency key (a recharge command id).
        idempotency_key: String,
        /// The payment id (`pi_sandbox_N`) when money moved, else `None`.
        charge_id: Option<String>,
        /// The amount asked, in minor units of `currency`.
        amount_minor: i64,
        /// ISO 4217 code.
        currency: String,
        /// `succeeded` or `declined`.
        outcome: String,
        /// The decline code when declined.
        decline_code: Option<String>,
        /// The payment method charged.
        payment_method: String,
        /// The customer.
        customer: String,
        /// The description sent.
        description: String,
    },
    /// A repeated call with a known key, answered from the record (no money moved).
    Call {
        /// The idempotency key.
        idempotency_key: String,
    },
}

/// Why a durable sandbox's journal cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("sandbox charges file {path}: {reason}")]
pub struct SandboxJournalError {
    /// The file.
    pub path: PathBuf,
    /// What was expected and found.
    pub reason: String,
}

/// An in-memory gateway following Stripe's test payment methods: `pm_card_visa`,
/// `pm_card_mastercard` and `pm_card_amex` succeed; `pm_card_chargeDeclined` declines with
/// `card_declined`; `pm_card_chargeDeclinedInsufficientFunds` with `insufficient_funds`;
/// anything else with `unknown_payment_method`.
///
/// The same idempotency key returns the first answer without charging again; the key
/// reused with other parameters is [`GatewayError::KeyReused`], as Stripe answers.
#[derive(Debug, Default)]
pub struct SandboxGateway {
    ledger: Mutex<Ledger>,
}

impl SandboxGateway {
    /// An empty sandbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// A sandbox whose charges survive a restart: loads the JSON lines of `path` (created
    /// when missing) and appends one per new charge and per repeated call, fsynced before
    /// the answer. A torn last line (a crash while writing it, so never answered) is
    /// ignored; any other unreadable line is an error.
    pub fn durable(path: &Path) -> Result<Self, SandboxJournalError> {
        let error = |reason: String| SandboxJournalError {
            path: path.to_owned(),
            reason,
        };
        let records = Self::journal(path)?;
        let mut ledger = Ledger::default();
        for record in records {
            match record {
                SandboxRecord::Charge {
                    idempotency_key,
                    charge_id,
                    amount_minor,
                    currency,
                    outcome,
                    decline_code,
                    payment_method,
                    customer,
                    description,
                } => {
                    let currency = Currency::from_code(&currency).map_err(|e| {
                        error(format!(
                            "expected an ISO 4217 currency, found {currency:?}: {e}"
                        ))
                    })?;
                    let amount = Money {
                        minor_units: amount_minor,
                        currency,
                    };
                    let result = match (outcome.as_str(), charge_id, decline_code) {
                        ("succeeded", Some(payment_id), _) => {
                            ledger.payments.push((idempotency_key.clone(), amount));
                            ChargeResult::Succeeded { payment_id }
                        }
                        ("declined", _, Some(code)) => ChargeResult::Declined { code },
                        (found, ..) => {
                            return Err(error(format!(
                                "expected outcome succeeded with a charge id or declined with                                  a code for key {idempotency_key:?}, found {found:?}"
                            )));
                        }
                    };
                    let request = ChargeRequest {
                        idempotency_key: idempotency_key.clone(),
                        amount,
                        payment_method,
                        customer,
                        description,
                    };
                    ledger.by_key.insert(
                        idempotency_key,
                        KeyRecord {
                            request,
                            result,
                            calls: 1,
                        },
                    );
                }
                SandboxRecord::Call { idempotency_key } => {
                    if let Some(record) = ledger.by_key.get_mut(&idempotency_key) {
                        record.calls += 1;
                    }
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| error(format!("expected to open it for appending, found {e}")))?;
        // Cut a torn last line, so the next record starts on a line of its own.
        let bytes =
            std::fs::read(path).map_err(|e| error(format!("expected to read it, found {e}")))?;
        let whole = bytes
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |at| at + 1);
        if whole < bytes.len() {
            file.set_len(whole as u64)
                .and_then(|()| file.sync_data())
                .map_err(|e| error(format!("expected to cut its torn last line, found {e}")))?;
        }
        ledger.journal = Some(file);
        Ok(Self {
            ledger: Mutex::new(ledger),
        })
    }

    /// The records of a durable sandbox's file, in order (none when it does not exist).
    pub fn journal(path: &Path) -> Result<Vec<SandboxRecord>, SandboxJournalError> {
        let error = |reason: String| SandboxJournalError {
            path: path.to_owned(),
            reason,
        };
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(error(format!("expected to read it, found {e}"))),
        };
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(|e| error(format!("expected text lines, found {e}")))?;
        let mut records = Vec::with_capacity(lines.len());
        for (index, line) in lines.iter().enumerate() {
            match serde_json::from_str(line) {
                Ok(record) => records.push(record),
                Err(_) if index + 1 == lines.len() => {}
                Err(e) => {
                    return Err(error(format!(
                        "expected a JSON charge record on line {}, found {line:?}: {e}",
                        index + 1
                    )));
                }
            }
        }
        Ok(records)
    }

    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        // The ledger is consistent after every statement, so a panic elsewhere leaves
        // nothing half-done.
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Charges synchronously (the [`Gateway`] call without the future).
    pub fn charge_now(&self, request: &ChargeRequest) -> Result<ChargeResult, GatewayError> {
        let mut ledger = self.ledger();
        if let Some(record) = ledger.by_key.get_mut(&request.idempotency_key) {
            if record.request != *request {
                return Err(GatewayError::KeyReused {
                    key: request.idempotency_key.clone(),
                });
            }
            let result = record.result.clone();
            let key = request.idempotency_key.clone();
            append(
                &mut ledger,
                &SandboxRecord::Call {
                    idempotency_key: key,
                },
            )?;
            if let Some(record) = ledger.by_key.get_mut(&request.idempotency_key) {
                record.calls += 1;
            }
            return Ok(result);
        }
        let verdict = PaymentMethodId::new(&request.payment_method)
            .map_err(|_| "unknown_payment_method")
            .and_then(|method| sandbox_charge(&method));
        let result = match verdict {
            Ok(()) => ChargeResult::Succeeded {
                payment_id: format!("pi_sandbox_{}", ledger.payments.len() + 1),
            },
            Err(code) => ChargeResult::Declined {
                code: code.to_owned(),
            },
        };
        let (outcome, charge_id, decline_code) = match &result {
            ChargeResult::Succeeded { payment_id } => ("succeeded", Some(payment_id.clone()), None),
            ChargeResult::Declined { code } => ("declined", None, Some(code.clone())),
        };
        // Recorded (durably, when durable) before anything is answered or remembered.
        append(
            &mut ledger,
            &SandboxRecord::Charge {
                idempotency_key: request.idempotency_key.clone(),
                charge_id,
                amount_minor: request.amount.minor_units,
                currency: request.amount.currency.code().to_owned(),
                outcome: outcome.to_owned(),
                decline_code,
                payment_method: request.payment_method.clone(),
                customer: request.customer.clone(),
                description: request.description.clone(),
            },
        )?;
        if matches!(result, ChargeResult::Succeeded { .. }) {
            ledger
                .payments
                .push((request.idempotency_key.clone(), request.amount));
        }
        ledger.by_key.insert(
            request.idempotency_key.clone(),
            KeyRecord {
                request: request.clone(),
                result: result.clone(),
                calls: 1,
            },
        );
        Ok(result)
    }

    /// Payments that moved money under `key` (0 or 1: a key never pays twice).
    pub fn charges(&self, key: &str) -> usize {
        self.ledger()
            .payments
            .iter()
            .filter(|(paid_key, _)| paid_key == key)
            .count()
    }

    /// Calls answered under `key`, replays included (a rejected key reuse not counted).
    pub fn calls(&self, key: &str) -> u32 {
        self.ledger()
            .by_key
            .get(key)
            .map_or(0, |record| record.calls)
    }

    /// Every payment that moved money, in order: (idempotency key, amount).
    pub fn payments(&self) -> Vec<(String, Money)> {
        self.ledger().payments.clone()
    }
}

/// Appends `record` to the journal of a durable sandbox and syncs it (nothing for an
/// in-memory one). A failure is transient for the caller: nothing was recorded, so nothing
/// is answered, and a retry with the same key charges anew.
fn append(ledger: &mut Ledger, record: &SandboxRecord) -> Result<(), GatewayError> {
    let Some(file) = ledger.journal.as_mut() else {
        return Ok(());
    };
    let mut line = serde_json::to_string(record)
        .map_err(|e| GatewayError::Transient(format!("sandbox: cannot encode a record: {e}")))?;
    line.push('\n');
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| {
            GatewayError::Transient(format!("sandbox: cannot append to the charges file: {e}"))
        })
}

impl Gateway for SandboxGateway {
    fn charge(
        &self,
        request: &ChargeRequest,
    ) -> impl Future<Output = Result<ChargeResult, GatewayError>> + Send {
        ready(self.charge_now(request))
    }
}
