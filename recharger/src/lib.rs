//! The recharger shell: consumes recharge commands, applies each command id once with the
//! spend-limit check of [`refill_ledger::spend::SpendBook`], charges the payment gateway and
//! sends the outcome back to the owning shard. Not built yet: this crate holds the place of
//! the `refill serve` issue (#4); the pure decision it will run already lives in the ledger.
