//! Scenario `restart` (DESIGN §8): an engine with N accounts (1 M by default), every one
//! flushed to the account tables (the periodic flushes during the setup, and the last one
//! the workers write when `refill serve` stops on SIGTERM), is started again on the same
//! data folder with `refill::app::start`; the figure is the time from calling it (which
//! opens the store, then per shard loads its rows and checkpoint, `Shard::from_rows`, and
//! replays the log after the checkpoint) until the first durable write is answered on every
//! shard: one event per shard in one `POST /v1/events?sync=true`, applied. Target ≤ 10 s.
//!
//! Afterwards, on the same data (engine stopped), the pieces alone: opening the embedded
//! store, reading each shard's rows (`KvAccountStore::load_shard`: the checkpoint, every
//! account and customer state, the live dedup chunks), and `Shard::from_rows`. The page
//! cache is warm (the data was just written); a cold start also reads the rows from disk.

// Seconds for the report are floats.
#![allow(clippy::float_arithmetic)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use axum::body::Bytes;
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_store::embedded::Embedded;
use refill_store::{AccountStore as _, KvAccountStore, Log as _, ShardRows};
use serde_json::{Value, json};

use crate::harness::{self, AccountSetup, CREDIT_TYPE, FEATURE, Http, Server, TempDir, round};
use crate::report::{self, Table, thousands};

/// DESIGN §8: restart with 1 M accounts back to ingesting.
pub const TARGET_RESTART_S: f64 = 10.0;
/// Whole credits of each account.
const GRANT: i64 = 1_000;

/// Options of the `restart` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct RestartArgs {
    /// Accounts (customers `c0000000`.. with one grant each).
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Shards of the engine.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub shards: u32,
    /// Folder for the data folder (default: the system temporary folder).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// Every figure of one `restart` run.
#[derive(Clone, Debug)]
pub struct RestartReport {
    /// The arguments it ran with.
    pub args: RestartArgs,
    /// Creating the accounts through the log (first life, untimed).
    pub setup: Duration,
    /// Stopping the first life: drain and write the last flush.
    pub stop: Duration,
    /// Bytes of the data folder after the stop.
    pub data_bytes: u64,
    /// `refill::app::start` → first sync POST answered: the figure.
    pub restart: Duration,
    /// Of which `refill::app::start`.
    pub app_start: Duration,
    /// Of which the first sync POST (bind included).
    pub first_write: Duration,
    /// Accounts after the restart (all shards).
    pub accounts_after: usize,
    /// Whether an untouched account's balance is in the lock-free table after the restart.
    pub balance_table_has_untouched: bool,
    /// Afterwards, alone: opening the embedded store.
    pub open_store: Duration,
    /// Reading every shard's rows from the store (`load_shard`).
    pub load_rows: Duration,
    /// Bytes of those rows' states, checkpoint metas and dedup chunks (all shards).
    pub rows_bytes: u64,
    /// Accounts the shards' checkpoints say are flushed (all shards).
    pub accounts_flushed: u64,
    /// Log records after the checkpoints when the second life started (replayed by it).
    pub log_after_checkpoint: u64,
    /// `Shard::from_rows` of every shard, one after the other.
    pub restore: Duration,
}

impl RestartReport {
    /// Seconds to restart: the figure.
    pub fn restart_s(&self) -> f64 {
        self.restart.as_secs_f64()
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let mut table = Table::new(format!(
            "refill-bench restart: {} accounts, {} shards, restored from the flushed rows",
            thousands(u64::from(self.args.accounts)),
            self.args.shards
        ));
        let s = |duration: Duration| format!("{:.3} s", duration.as_secs_f64());
        table
            .row(
                "restart → ingesting",
                s(self.restart),
                &format!(
                    "refill::app::start → first sync POST answered; target ≤ {TARGET_RESTART_S} s (ratio {:.2})",
                    self.restart_s() / TARGET_RESTART_S
                ),
            )
            .row(
                "  refill::app::start",
                s(self.app_start),
                "open, load rows, from_rows, replay, recharger",
            )
            .row("  first sync POST", s(self.first_write), "one event per shard, applied")
            .row(
                "alone: open the embedded store",
                s(self.open_store),
                "Embedded::open on the same folder",
            )
            .row(
                "alone: load the rows",
                s(self.load_rows),
                &format!(
                    "KvAccountStore::load_shard, every shard; {} of states, metas, dedup",
                    report::mib(self.rows_bytes)
                ),
            )
            .row(
                "alone: Shard::from_rows",
                s(self.restore),
                "every shard, one after the other (as Engine::start does)",
            )
            .row(
                "accounts flushed",
                thousands(self.accounts_flushed),
                "Σ checkpoint accounts before the second life",
            )
            .row(
                "log records after the checkpoints",
                thousands(self.log_after_checkpoint),
                "replayed by the second life",
            )
            .row(
                "stop (drain + last flush)",
                s(self.stop),
                "first life, untimed",
            )
            .row(
                "data folder after stop",
                report::mib(self.data_bytes),
                "log + account tables",
            )
            .row(
                "accounts after restart",
                thousands(self.accounts_after as u64),
                "",
            )
            .row(
                "untouched balance in the table",
                if self.balance_table_has_untouched { "yes" } else { "no" },
                "Engine::balance of an account no batch touched since the restart",
            )
            .row(
                "setup (untimed)",
                format!("{:.1} s", self.setup.as_secs_f64()),
                "accounts through the log",
            );
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> Value {
        let s = |duration: Duration| round(duration.as_secs_f64(), 4);
        json!({
            "scenario": "restart",
            "restart_s": s(self.restart),
            "target_restart_s": TARGET_RESTART_S,
            "app_start_s": s(self.app_start),
            "first_write_s": s(self.first_write),
            "open_store_s": s(self.open_store),
            "load_rows_s": s(self.load_rows),
            "restore_s": s(self.restore),
            "rows_bytes": self.rows_bytes,
            "accounts_flushed": self.accounts_flushed,
            "log_after_checkpoint": self.log_after_checkpoint,
            // Kept for scripts of the snapshot days: now the rows' read and size.
            "read_snapshots_s": s(self.load_rows),
            "snapshot_bytes": self.rows_bytes,
            "stop_s": s(self.stop),
            "data_bytes": self.data_bytes,
            "accounts": self.args.accounts,
            "accounts_after": self.accounts_after,
            "shards": self.args.shards,
            "balance_table_has_untouched": self.balance_table_has_untouched,
            "setup_s": round(self.setup.as_secs_f64(), 2),
        })
    }
}

/// Runs the scenario; checks the accounts and the first write survive, never a time.
pub fn run(args: &RestartArgs) -> anyhow::Result<RestartReport> {
    let names = harness::names('c', args.accounts);
    let data = TempDir::new(args.data_dir.as_deref(), "restart")?;

    // First life: the accounts, then a stop that flushes what the periodic flushes left.
    let server = Server::start(data.path(), args.shards)?;
    let http = Http::new(server.addr)?;
    harness::put_catalog(&http)?;
    let setup = harness::create_accounts(
        &server,
        &names,
        AccountSetup {
            grant_whole: GRANT,
            auto_recharge: false,
        },
    )?;
    let writers = harness::one_per_shard(server.engine(), &names)?;
    drop(http);
    let stop = server.stop()?;
    let data_bytes = data.size_bytes();

    // Every account flushed, and how much log the second life replays after the checkpoints.
    let (accounts_flushed, log_after_checkpoint) = {
        let embedded = Arc::new(Embedded::open(&data.path().join("db"), args.shards)?);
        let accounts = KvAccountStore::new(Arc::clone(&embedded));
        let mut log_after = 0_u64;
        let mut flushed = 0_u64;
        for shard in 0..args.shards {
            let checkpoint = accounts
                .checkpoint(shard)?
                .with_context(|| format!("shard {shard} has no checkpoint after the stop"))?;
            flushed += u64::from(checkpoint.accounts);
            let mut from = checkpoint.log_next;
            loop {
                let records = embedded.read(shard, from, 4_096)?;
                let Some(last) = records.last() else { break };
                from = last.offset + 1;
                log_after += records.len() as u64;
            }
        }
        (flushed, log_after)
    };
    ensure!(
        accounts_flushed == u64::from(args.accounts),
        "expected {} accounts flushed, the checkpoints say {accounts_flushed}",
        args.accounts
    );

    // Second life, timed until the first write is applied on every shard.
    let started = Instant::now();
    let server = Server::start(data.path(), args.shards)?;
    let app_start = server.start_elapsed;
    let write_started = Instant::now();
    let http = Http::new(server.addr)?;
    let events: Vec<String> = writers
        .iter()
        .enumerate()
        .map(|(index, name)| {
            format!(r#"{{"id":"after-restart-{index}","customer_id":"{name}","feature_id":"{FEATURE}","value":1}}"#)
        })
        .collect();
    let body = Bytes::from(format!("[{}]", events.join(",")));
    let (status, answer) = http.call("POST", "/v1/events?sync=true", Some(body))?;
    let first_write = write_started.elapsed();
    let restart = started.elapsed();
    ensure!(
        status == 202 && answer["accepted"] == json!(writers.len()),
        "first POST after the restart: {status} {answer}"
    );
    let accounts_after = server.account_count()?;
    ensure!(
        accounts_after == names.len(),
        "expected {} accounts after the restart, found {accounts_after}",
        names.len()
    );
    let engine = server.engine().clone();
    for name in &writers {
        let balance = engine
            .balance(name, CREDIT_TYPE)
            .map(|credits| credits.micros());
        ensure!(
            balance == Some((GRANT - 1) * MICROS_PER_UNIT),
            "{name}: expected {} credits after the first write, found {balance:?} µcredits",
            GRANT - 1
        );
    }
    let untouched = names
        .iter()
        .find(|name| !writers.contains(name))
        .context("an account no write touched")?;
    let balance_table_has_untouched = engine.balance(untouched, CREDIT_TYPE).is_some();
    drop(engine);
    drop(http);
    server.stop()?;

    // The pieces alone, on the same data.
    let started = Instant::now();
    let store = Embedded::open(&data.path().join("db"), args.shards)?;
    let open_store = started.elapsed();
    let accounts = KvAccountStore::new(store);
    let started = Instant::now();
    let shard_rows = (0..args.shards)
        .map(|shard| accounts.load_shard(shard))
        .collect::<Result<Vec<ShardRows>, _>>()?;
    let load_rows = started.elapsed();
    let rows_bytes = shard_rows.iter().map(rows_size).sum();
    let started = Instant::now();
    let mut restored = 0;
    for (shard, rows) in (0_u32..).zip(&shard_rows) {
        let checkpoint = rows
            .checkpoint
            .as_ref()
            .with_context(|| format!("shard {shard} has no checkpoint"))?;
        restored += refill_ingest::rows::restore_shard(checkpoint, rows)?.account_count();
    }
    let restore = started.elapsed();
    ensure!(restored == names.len(), "restored {restored} accounts");
    drop((shard_rows, accounts));

    Ok(RestartReport {
        args: args.clone(),
        setup,
        stop,
        data_bytes,
        restart,
        app_start,
        first_write,
        accounts_after,
        balance_table_has_untouched,
        open_store,
        load_rows,
        rows_bytes,
        accounts_flushed,
        log_after_checkpoint,
        restore,
    })
}

/// Bytes of what a restore reads of one shard: the checkpoint's meta, every account and
/// customer state, the dedup chunks.
fn rows_size(rows: &ShardRows) -> u64 {
    let meta = rows
        .checkpoint
        .as_ref()
        .map_or(0, |checkpoint| checkpoint.meta.len());
    let states: usize = rows
        .accounts
        .iter()
        .chain(&rows.customers)
        .map(|(_, state)| state.len())
        .sum();
    let dedup: usize = rows
        .dedup
        .iter()
        .map(|chunk| chunk.fingerprints.len())
        .sum();
    (meta + states + dedup) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_restart_keeps_every_account_and_ingests_again() {
        let report = run(&RestartArgs {
            accounts: 2_000,
            shards: 2,
            data_dir: None,
        })
        .expect("restart scenario runs");
        assert_eq!(report.accounts_after, 2_000);
        assert!(report.rows_bytes > 2_000);
        assert_eq!(report.accounts_flushed, 2_000);
        assert!(report.table().render().contains("restart"));
        let json = report.json();
        for key in [
            "scenario",
            "restart_s",
            "app_start_s",
            "restore_s",
            "load_rows_s",
            "read_snapshots_s",
            "snapshot_bytes",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "restart");
    }
}
