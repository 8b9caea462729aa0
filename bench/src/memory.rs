//! Scenario `memory` (DESIGN §8): bytes per idle account, target ≤ 200 (10 M accounts on
//! one box). N idle accounts (1 M by default) are created through one shard directly, as
//! the engine would: first every customer (`PutCustomer` with a payment method), then every
//! account (one grant, idempotency key `g`), no usage. The figure is the growth of the
//! resident set (`VmRSS`) across both passes, divided by N: what the box pays, allocator
//! slack and table growth included; each pass's growth is shown too. Also shown: the
//! snapshot's bytes per account (the encoded state, a floor for what must be kept) and what
//! the engine adds outside the shard, its lock-free balance table, measured the same way by
//! filling the engine's `Balances` as the shard workers fill it.

// Bytes per account for the report are floats.
#![allow(clippy::float_arithmetic)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use refill_ingest::engine::{Balances, now};
use refill_ledger::account::Account;
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_ledger::shard::{Customer, CustomerDetails};
use refill_ledger::{Effects, Shard, ShardConfig, testkit};
use serde_json::{Value, json};

use crate::harness::{self, AccountSetup, round};
use crate::report::{self, Table, thousands};

/// DESIGN §8: bytes per idle account.
pub const TARGET_BYTES_PER_IDLE_ACCOUNT: u64 = 200;
/// Whole credits of each idle account's grant.
const GRANT: i64 = 100;
/// Customers per `apply_into` while creating them.
const CUSTOMERS_PER_BATCH: usize = 4_096;

/// The two passes of account creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Customers,
    Grants,
}

/// Options of the `memory` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct MemoryArgs {
    /// Idle accounts to create.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
}

/// Every figure of one `memory` run.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    /// The arguments it ran with.
    pub args: MemoryArgs,
    /// Resident set before and after creating the accounts.
    pub rss_before: u64,
    /// After the customers, before their grants.
    pub rss_customers: u64,
    /// After.
    pub rss_after: u64,
    /// Peak resident set before the snapshot was taken.
    pub peak_before_snapshot: Option<u64>,
    /// Bytes of `Shard::snapshot()` with every account.
    pub snapshot_bytes: u64,
    /// Resident set growth while filling the engine's balance table with every account.
    pub balance_table_bytes: u64,
    /// The balance table's heap bytes from its capacities (`Balances::allocated_bytes`).
    pub balance_table_allocated_bytes: u64,
    /// Creating the accounts (not a target).
    pub create: Duration,
    /// Peak resident set (`VmHWM`).
    pub peak_rss: Option<u64>,
}

impl MemoryReport {
    fn per_account(&self, bytes: u64) -> f64 {
        bytes as f64 / f64::from(self.args.accounts)
    }

    /// RSS growth per account: the headline figure.
    pub fn bytes_per_idle_account(&self) -> f64 {
        self.per_account(self.rss_after.saturating_sub(self.rss_before))
    }

    /// Shard RSS growth plus the balance table's allocated bytes, per account.
    pub fn with_balance_table(&self) -> f64 {
        self.bytes_per_idle_account() + self.per_account(self.balance_table_allocated_bytes)
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "refill-bench memory: {} idle accounts (customer + payment method + one grant) in one shard",
            thousands(u64::from(self.args.accounts))
        ));
        table
            .row(
                "bytes per idle account",
                format!("{:.1}", self.bytes_per_idle_account()),
                &format!(
                    "RSS growth / accounts; target ≤ {TARGET_BYTES_PER_IDLE_ACCOUNT} (ratio {:.2})",
                    self.bytes_per_idle_account() / TARGET_BYTES_PER_IDLE_ACCOUNT as f64
                ),
            )
            .row(
                "  of which the customers",
                format!(
                    "{:.1}",
                    self.per_account(self.rss_customers.saturating_sub(self.rss_before))
                ),
                "PutCustomer with a payment method: customer table and index",
            )
            .row(
                "  of which account + grant",
                format!(
                    "{:.1}",
                    self.per_account(self.rss_after.saturating_sub(self.rss_customers))
                ),
                "the grant: account with the grant inline, its idempotency key in the shard's table",
            )
            .row(
                "RSS before / customers / after",
                format!(
                    "{} / {} / {}",
                    report::mib(self.rss_before),
                    report::mib(self.rss_customers),
                    report::mib(self.rss_after)
                ),
                "",
            )
            .row(
                "snapshot bytes per account",
                format!("{:.1}", self.per_account(self.snapshot_bytes)),
                &format!(
                    "Shard::snapshot(), {} in all",
                    report::mib(self.snapshot_bytes)
                ),
            )
            .row(
                "engine balance table per account",
                format!("{:.1}", self.per_account(self.balance_table_bytes)),
                "RSS growth filling the engine's Balances; on top of the shard in the engine",
            )
            .row(
                "  from its capacities",
                format!("{:.1}", self.per_account(self.balance_table_allocated_bytes)),
                "index buckets and cell chunks (RSS growth can reuse memory the shard freed)",
            )
            .row(
                "shard + balance table per account",
                format!("{:.1}", self.with_balance_table()),
                "what the engine holds per idle account",
            )
            .row(
                "size_of Account / Customer",
                format!("{} / {}", size_of::<Account>(), size_of::<Customer>()),
                &format!(
                    "inline bytes; CustomerDetails (boxed on demand: email, more accounts, subscriptions) {}",
                    size_of::<CustomerDetails>()
                ),
            )
            .row(
                "peak RSS before / after snapshot",
                format!(
                    "{} / {}",
                    self.peak_before_snapshot
                        .map_or_else(|| "n/a".to_owned(), report::mib),
                    self.peak_rss.map_or_else(|| "n/a".to_owned(), report::mib)
                ),
                "Shard::snapshot encodes from the state (one customer row at a time)",
            )
            .row(
                "create (untimed target)",
                format!("{:.2} s", self.create.as_secs_f64()),
                "",
            );
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> Value {
        json!({
            "scenario": "memory",
            "bytes_per_idle_account": round(self.bytes_per_idle_account(), 1),
            "target_bytes_per_idle_account": TARGET_BYTES_PER_IDLE_ACCOUNT,
            "ratio_vs_target": round(self.bytes_per_idle_account() / TARGET_BYTES_PER_IDLE_ACCOUNT as f64, 3),
            "measured_as": "rss_growth",
            "snapshot_bytes_per_account": round(self.per_account(self.snapshot_bytes), 1),
            "balance_table_bytes_per_account": round(self.per_account(self.balance_table_bytes), 1),
            "balance_table_allocated_bytes_per_account": round(self.per_account(self.balance_table_allocated_bytes), 1),
            "with_balance_table_bytes_per_idle_account": round(self.with_balance_table(), 1),
            "size_of_account": size_of::<Account>(),
            "size_of_customer": size_of::<Customer>(),
            "size_of_customer_details": size_of::<CustomerDetails>(),
            "accounts": self.args.accounts,
            "rss_before_bytes": self.rss_before,
            "customer_bytes_per_account": round(self.per_account(self.rss_customers.saturating_sub(self.rss_before)), 1),
            "account_and_grant_bytes_per_account": round(self.per_account(self.rss_after.saturating_sub(self.rss_customers)), 1),
            "rss_after_bytes": self.rss_after,
            "peak_rss_before_snapshot_bytes": self.peak_before_snapshot,
            "peak_rss_bytes": self.peak_rss,
            "create_s": round(self.create.as_secs_f64(), 3),
        })
    }
}

/// Runs the scenario; checks the account count and every balance, never a size.
pub fn run(args: &MemoryArgs) -> anyhow::Result<MemoryReport> {
    let setup = AccountSetup {
        grant_whole: GRANT,
        auto_recharge: false,
    };
    let rss = || report::rss_bytes().context("VmRSS (Linux only)");
    let started_at = now();
    let mut shard = Shard::new(ShardConfig::default(), started_at);
    let mut fx = Effects::default();
    shard.apply_into(started_at, &testkit::example_catalog(), &mut fx);
    let mut inputs = Vec::with_capacity(CUSTOMERS_PER_BATCH);
    let mut name = String::new();
    let width = (args.accounts.saturating_sub(1)).to_string().len().max(7);
    let mut rss_customers = 0;

    // Two passes, so the resident set can be read in between: first every customer
    // (`PutCustomer` with a payment method), then every account (its one grant).
    let rss_before = rss()?;
    let started = Instant::now();
    for pass in [Pass::Customers, Pass::Grants] {
        let mut number = 0_u32;
        while number < args.accounts {
            inputs.clear();
            let end = number
                .saturating_add(CUSTOMERS_PER_BATCH as u32)
                .min(args.accounts);
            for customer in number..end {
                name.clear();
                std::fmt::Write::write_fmt(&mut name, format_args!("c{customer:0width$}"))?;
                match pass {
                    Pass::Customers => inputs.push(testkit::put_customer(&name, "pm_card_visa")),
                    Pass::Grants => inputs.push(harness::account_grant(&name, setup)),
                }
            }
            shard.apply_into(started_at, &inputs, &mut fx);
            ensure!(
                fx.inputs_rejected == 0,
                "input rejected: {:?}",
                fx.outcomes.first()
            );
            number = end;
        }
        if pass == Pass::Customers {
            rss_customers = rss()?;
        }
    }
    // What the batches left behind is not the accounts' (reused across batches anyway).
    inputs = Vec::new();
    fx = Effects::default();
    let create = started.elapsed();
    let rss_after = rss()?;
    drop((inputs, fx));

    ensure!(
        shard.account_count() == args.accounts as usize,
        "expected {} accounts, found {}",
        args.accounts,
        shard.account_count()
    );
    let grant_micros = GRANT * MICROS_PER_UNIT;
    for (_, account) in shard.accounts() {
        ensure!(
            account.balance().micros() == grant_micros,
            "an idle account should hold {GRANT} credits"
        );
    }

    // The engine's balance table, filled as the workers fill it after a batch; before the
    // snapshot, whose freed memory the table would otherwise reuse unseen.
    let table_before = rss()?;
    let table = Balances::new();
    for (handle, account) in shard.accounts() {
        table.set(
            shard.customer_of(handle).id.as_str(),
            shard.credit_type_of(handle).as_str(),
            0,
            account.balance(),
        );
    }
    let balance_table_bytes = rss()?.saturating_sub(table_before);
    let balance_table_allocated_bytes = table.allocated_bytes() as u64;
    ensure!(table.len() == args.accounts as usize, "balance table size");
    drop(table);

    let peak_before_snapshot = report::peak_rss_bytes();
    let snapshot_bytes = shard.snapshot().len() as u64;
    drop(shard);
    Ok(MemoryReport {
        args: args.clone(),
        rss_before,
        rss_customers,
        rss_after,
        snapshot_bytes,
        peak_before_snapshot,
        balance_table_bytes,
        balance_table_allocated_bytes,
        create,
        peak_rss: report::peak_rss_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_memory_run_creates_every_account_with_its_grant() {
        let report = run(&MemoryArgs { accounts: 5_000 }).expect("memory scenario runs");
        assert!(
            report.snapshot_bytes > 5_000,
            "every account is in the snapshot"
        );
        assert!(report.table().render().contains("bytes per idle account"));
        let json = report.json();
        for key in [
            "scenario",
            "bytes_per_idle_account",
            "snapshot_bytes_per_account",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "memory");
    }
}
