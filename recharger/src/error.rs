//! Why the recharger could not settle a command. Every error leaves the command where the
//! store says it is, so the caller may redeliver it: a reserved command is charged again
//! with the same idempotency key, never a new one.

use refill_store::StoreError;

use crate::gateway::GatewayError;

/// Why a recharger call failed.
#[derive(Debug, thiserror::Error)]
pub enum RechargerError {
    /// The store failed; nothing was charged after a failed reservation, and a charge
    /// whose result could not be stored is replayed under the same key on redelivery.
    /// (The CQL book's failures come here too.)
    #[error("recharger storage failed: {0}")]
    Store(#[from] StoreError),
    /// Encoding the recharger's state failed.
    #[error("expected the recharger state to encode, it failed: {0}")]
    Encode(String),
    /// A blocking storage task did not finish (it panicked or the runtime is stopping).
    #[error("expected the storage task to finish, it did not: {0}")]
    Task(String),
    /// The gateway kept failing transiently; the command stays reserved and a redelivery
    /// retries it with the same idempotency key.
    #[error("gateway unavailable for command {command} after {attempts} attempts: {source}")]
    GatewayUnavailable {
        /// The command (its text id, which is also the idempotency key).
        command: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: GatewayError,
    },
    /// The gateway gave an answer that settles nothing (our credentials refused, the key
    /// reused with other parameters, an unreadable answer): money may or may not have
    /// moved, so the command stays reserved until an operator looks.
    #[error("gateway answer for command {command} needs an operator: {source}")]
    GatewayNeedsOperator {
        /// The command (its text id).
        command: String,
        /// What the gateway answered.
        #[source]
        source: GatewayError,
    },
    /// The spend book had no reservation for a command being settled (a bug, not an
    /// operational failure).
    #[error("expected command {0} to be reserved before it is settled")]
    NotReserved(String),
    /// Other writers kept moving the rows this command needed (a compare-and-set lost every
    /// attempt): nothing was charged by this call; deliver the command again.
    #[error(
        "expected a compare-and-set for command {command} to apply within {attempts} attempts, \
         found the row moved by other writers every time"
    )]
    Contention {
        /// The command (its text id).
        command: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The Kafka transport failed (consumer, producer, or a delivery report).
    #[error("recharger transport failed: {0}")]
    Transport(String),
    /// The Stripe gateway's settings are unusable.
    #[error("invalid Stripe gateway settings: {0}")]
    Config(String),
}
