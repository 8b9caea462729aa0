//! Scenario `core` (DESIGN §8): pre-parsed usage events through ONE shard's `apply_into`
//! on one core, over 1 M accounts with Zipf-distributed customers, next to its limit
//! measured in the same run: a bare `HashMap<u64, i64>` decrement over the same customer
//! sequence. Target: ≥ 5 M events/s.
//!
//! Only `apply_into` is timed. Setup (catalog, customers, grants) and building every
//! `Input` happen before the clock starts; dedup is on the path, as in production: every
//! event has a unique id and its fingerprint is inserted into the window.

// Rates, ratios and latencies for the report are floats; balances stay integer micros.
#![allow(clippy::float_arithmetic)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use refill_ledger::amount::MICROS_PER_UNIT;
use refill_ledger::dedup::DedupConfig;
use refill_ledger::grant::GrantKind;
use refill_ledger::ids::{CustomerId, EventId, FeatureId};
use refill_ledger::input::UsageEvent;
use refill_ledger::testkit::{self, example};
use refill_ledger::time::SpendReset;
use refill_ledger::{AccountHandle, Effects, Input, Quantity, Shard, ShardConfig, TimestampMs};
use serde_json::json;

use crate::report::{self, Table, thousands};
use crate::zipf::{SplitMix64, Zipf, permutation};

/// DESIGN §8: core apply, one shard, one core, 1 M accounts.
pub const TARGET_EVENTS_PER_S: u64 = 5_000_000;

/// Inputs per setup batch (customers, grants, settings); not timed.
const SETUP_BATCH_INPUTS: usize = 4_096;

/// When the shard's clock starts; each timed batch advances it by one millisecond.
const START: &str = "2026-01-05T00:00:00Z";

/// Options of the `core` scenario.
#[derive(clap::Args, Clone, Debug)]
pub struct CoreArgs {
    /// Accounts (customers `c0000000`.. of the example credit type), all in one shard.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub accounts: u32,
    /// Usage events applied in the timed run, each with a unique id.
    #[arg(long, default_value_t = 10_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub events: u64,
    /// Inputs per `apply_into` call.
    #[arg(long, default_value_t = 4_096, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Zipf exponent of the customer distribution (0 = uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Seed of the customer sequence and of the rank → account shuffle.
    #[arg(long, default_value_t = 0x5EED_2026)]
    pub seed: u64,
    /// Also give every account the example's auto-recharge settings (threshold 20,
    /// target 50, $500 a month); balances stay far above the threshold, so this measures
    /// the per-batch decision, never a recharge.
    #[arg(long)]
    pub auto_recharge: bool,
    /// Size of the memory-latency probe in MiB (0 skips it): a random pointer chase that
    /// gives the cost of one cache miss on this machine, for the estimate.
    #[arg(long, default_value_t = 256)]
    pub probe_mib: u32,
}

#[cfg(test)]
impl CoreArgs {
    /// Arguments for a small run (tests).
    pub fn tiny(accounts: u32, events: u64) -> Self {
        Self {
            accounts,
            events,
            batch: 512,
            zipf: 1.0,
            seed: 7,
            auto_recharge: false,
            probe_mib: 1,
        }
    }
}

/// A shard set up with the catalog, the accounts and their grants, ready to time.
pub struct Fixture {
    /// The shard.
    pub shard: Shard,
    /// Customer ids, by customer number.
    pub customers: Vec<CustomerId>,
    /// The shard's clock after setup.
    pub now: TimestampMs,
    /// Credits granted to each account at setup, in micro-credits.
    pub grant_micros: i64,
}

/// The customer id of customer number `number` among `accounts` (`c0000000`..).
pub fn customer_name(number: u32, accounts: u32) -> String {
    let width = (accounts.saturating_sub(1)).to_string().len().max(7);
    format!("c{number:0width$}")
}

/// Builds the shard: the example catalog, one customer per account, one promotional grant
/// each large enough that no balance gets near zero (so no overdraft, no recharge).
pub fn setup(args: &CoreArgs) -> anyhow::Result<Fixture> {
    let now = testkit::at(START);
    // Dedup is on the path as in production: the default window (1 h, 20 M ids in two
    // generations of 10 M), so a run of up to 10 M events evicts nothing.
    let dedup = DedupConfig::default();
    let config = ShardConfig { dedup };
    let mut shard = Shard::new(config, now);
    // Every account burns at most `events` credits; twice that keeps balances positive.
    let grant_whole = i64::try_from(args.events)
        .ok()
        .and_then(|events| events.checked_mul(2))
        .filter(|whole| whole.checked_mul(MICROS_PER_UNIT).is_some())
        .context("--events too large for one account's balance")?;
    let customers: Vec<CustomerId> = (0..args.accounts)
        .map(|number| testkit::customer(&customer_name(number, args.accounts)))
        .collect();
    let mut inputs = testkit::example_catalog();
    for id in &customers {
        let name = id.as_str();
        inputs.push(testkit::put_customer(name, "pm_card_visa"));
        inputs.push(testkit::grant(
            name,
            grant_whole,
            GrantKind::Promotional,
            None,
            None,
            &format!("bench-{name}"),
        ));
        if args.auto_recharge {
            inputs.push(testkit::set_auto_recharge(
                name,
                20,
                50,
                50_000,
                SpendReset::Month,
            ));
        }
    }
    let mut fx = Effects::default();
    for chunk in inputs.chunks(SETUP_BATCH_INPUTS) {
        shard.apply_into(now, chunk, &mut fx);
        ensure!(
            fx.inputs_rejected == 0,
            "setup input rejected: {:?}",
            fx.outcomes.first()
        );
    }
    ensure!(
        shard.account_count() == args.accounts as usize,
        "setup made {} accounts, expected {}",
        shard.account_count(),
        args.accounts
    );
    Ok(Fixture {
        shard,
        customers,
        now,
        grant_micros: grant_whole * MICROS_PER_UNIT,
    })
}

/// The timed workload: the customer of each event and the pre-built inputs.
pub struct Workload {
    /// Customer number of each event, in order (the baseline's keys).
    pub customers: Vec<u32>,
    /// One `Input::Usage` per event: unique id, 1 unit of the example feature.
    pub inputs: Vec<Input>,
    /// Share of events that go to the 1 % most frequent customers.
    pub top_percent_share: f64,
}

/// Draws the customer sequence (Zipf over ranks, ranks shuffled onto accounts) and builds
/// every input.
pub fn workload(args: &CoreArgs, customers: &[CustomerId]) -> anyhow::Result<Workload> {
    let zipf = Zipf::new(args.accounts, args.zipf);
    let mut rng = SplitMix64::new(args.seed);
    let account_of_rank = permutation(args.accounts, &mut rng);
    let events = usize::try_from(args.events).context("--events too large")?;
    let sequence: Vec<u32> = (0..events)
        .map(|_| account_of_rank[zipf.sample(&mut rng) as usize])
        .collect();
    let feature = FeatureId::new(example::FEATURE).context("example feature id")?;
    let value = Quantity::from_micros(MICROS_PER_UNIT);
    let inputs = sequence
        .iter()
        .enumerate()
        .map(|(index, &customer)| {
            Ok(Input::Usage(UsageEvent {
                id: EventId::new(&format!("e{index:010}"))?,
                customer: customers[customer as usize].clone(),
                feature: feature.clone(),
                value,
                timestamp: None,
            }))
        })
        .collect::<Result<Vec<_>, refill_ledger::ids::IdError>>()?;
    let top = (args.accounts as usize).div_ceil(100);
    Ok(Workload {
        customers: sequence,
        inputs,
        top_percent_share: zipf.head_mass(top),
    })
}

/// What the timed shard run produced.
#[derive(Clone, Debug)]
pub struct ShardRun {
    /// Usage events applied (sum of `Effects::events_applied`).
    pub applied: u64,
    /// Usage events dropped as duplicates.
    pub duplicates: u64,
    /// Inputs rejected.
    pub rejected: u64,
    /// Ledger entries written (usage rolled up per account per batch).
    pub entries: u64,
    /// Wall time of all `apply_into` calls.
    pub elapsed: Duration,
    /// Wall time of each `apply_into` call, in nanoseconds.
    pub batch_ns: Vec<u64>,
}

/// Times `apply_into` over `inputs` in batches of `batch`, reusing one `Effects`.
pub fn run_shard(fixture: &mut Fixture, inputs: &[Input], batch: usize) -> ShardRun {
    let mut fx = Effects::default();
    let mut run = ShardRun {
        applied: 0,
        duplicates: 0,
        rejected: 0,
        entries: 0,
        elapsed: Duration::ZERO,
        batch_ns: Vec::with_capacity(inputs.len().div_ceil(batch)),
    };
    let mut now = fixture.now;
    let started = Instant::now();
    for chunk in inputs.chunks(batch) {
        now = TimestampMs(now.0 + 1);
        let batch_started = Instant::now();
        fixture.shard.apply_into(now, black_box(chunk), &mut fx);
        let batch_elapsed = batch_started.elapsed();
        run.batch_ns
            .push(u64::try_from(batch_elapsed.as_nanos()).unwrap_or(u64::MAX));
        run.applied += fx.events_applied;
        run.duplicates += fx.events_duplicate;
        run.rejected += fx.inputs_rejected;
        run.entries += fx.entries.len() as u64;
        black_box(&fx);
    }
    run.elapsed = started.elapsed();
    fixture.now = now;
    run
}

/// The limit: a bare `HashMap<u64, i64>` with one entry per account, decremented by one
/// per event over the same customer sequence. Returns its wall time and the sum of the
/// map's values afterwards (checked by the caller).
pub fn run_limit(accounts: u32, sequence: &[u32]) -> (Duration, i64) {
    let mut balances: HashMap<u64, i64> = HashMap::with_capacity(accounts as usize);
    for account in 0..accounts {
        balances.insert(u64::from(account), 0);
    }
    let started = Instant::now();
    for &account in sequence {
        if let Some(balance) = balances.get_mut(&black_box(u64::from(account))) {
            *balance -= 1;
        }
    }
    black_box(&mut balances);
    let elapsed = started.elapsed();
    (elapsed, balances.values().sum())
}

/// Average latency of one dependent random load over `mib` MiB (a pointer chase through
/// one random cycle, Sattolo's algorithm): the price of a cache miss on this machine.
pub fn miss_latency_ns(mib: u32, seed: u64) -> Option<f64> {
    let slots = (mib as usize * 1024 * 1024) / size_of::<u32>();
    if slots < 2 {
        return None;
    }
    let mut next: Vec<u32> = (0..u32::try_from(slots).ok()?).collect();
    let mut rng = SplitMix64::new(seed);
    for i in (1..slots).rev() {
        let j = usize::try_from(rng.below(i as u64)).ok()?;
        next.swap(i, j);
    }
    let steps = 20_000_000_usize.min(slots * 4);
    let mut at = 0_u32;
    let started = Instant::now();
    for _ in 0..steps {
        at = next[at as usize];
    }
    black_box(at);
    Some(started.elapsed().as_secs_f64() * 1e9 / steps as f64)
}

/// Every figure of one `core` run.
#[derive(Clone, Debug)]
pub struct CoreReport {
    /// The arguments it ran with.
    pub args: CoreArgs,
    /// The timed shard run.
    pub shard: ShardRun,
    /// Credits that left the balances, in micro-credits, read back per account.
    pub balance_moved_micros: i128,
    /// What they should be: Σ over events of the rated value.
    pub expected_moved_micros: i128,
    /// Wall time of the limit baseline.
    pub limit_elapsed: Duration,
    /// Ids in the dedup window after the run.
    pub dedup_len: usize,
    /// The dedup window's settings.
    pub dedup: DedupConfig,
    /// Setup wall time (not timed in the figure).
    pub setup: Duration,
    /// Building the inputs (not timed in the figure).
    pub build: Duration,
    /// Resident memory after setup, after building the inputs, and at the end.
    pub rss_after_setup: Option<u64>,
    /// Resident memory after building the inputs.
    pub rss_after_build: Option<u64>,
    /// Resident memory after the timed run.
    pub rss_after_run: Option<u64>,
    /// Peak resident memory (`VmHWM`).
    pub peak_rss: Option<u64>,
    /// Share of events to the top 1 % of customers.
    pub top_percent_share: f64,
    /// One random cache miss in ns, when probed.
    pub miss_ns: Option<f64>,
}

impl CoreReport {
    /// Events per second through `apply_into`.
    pub fn events_per_s(&self) -> f64 {
        self.args.events as f64 / self.shard.elapsed.as_secs_f64()
    }

    /// Events per second through the bare `HashMap`.
    pub fn limit_events_per_s(&self) -> f64 {
        self.args.events as f64 / self.limit_elapsed.as_secs_f64()
    }

    /// ns per event through `apply_into`.
    pub fn ns_per_event(&self) -> f64 {
        self.shard.elapsed.as_secs_f64() * 1e9 / self.args.events as f64
    }

    /// ns per event through the bare `HashMap`.
    pub fn limit_ns_per_event(&self) -> f64 {
        self.limit_elapsed.as_secs_f64() * 1e9 / self.args.events as f64
    }

    /// `events_per_s / limit_events_per_s`.
    pub fn ratio_vs_limit(&self) -> f64 {
        self.events_per_s() / self.limit_events_per_s()
    }

    /// Events per second at the median batch: the rate without the rare batches that
    /// grow the dedup set (a fresh shard's set doubles a few times; a warm one does not).
    pub fn median_batch_events_per_s(&self) -> f64 {
        f64::from(self.args.batch) / (self.batch_us(0.5) / 1e6)
    }

    /// Per-batch wall time at quantile `q` (0..=1), in µs.
    fn batch_us(&self, q: f64) -> f64 {
        let mut sorted = self.shard.batch_ns.clone();
        sorted.sort_unstable();
        let rank = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
        sorted.get(rank).map_or(0.0, |&ns| ns as f64 / 1e3)
    }

    /// The readable table.
    pub fn table(&self) -> Table {
        let args = &self.args;
        let opt_mib = |bytes: Option<u64>| bytes.map_or_else(|| "n/a".to_owned(), report::mib);
        let mut table = Table::new(format!(
            "refill-bench core: {} events, {} accounts, zipf {}, batch {}{}",
            thousands(args.events),
            thousands(u64::from(args.accounts)),
            args.zipf,
            args.batch,
            if args.auto_recharge {
                ", auto-recharge on every account"
            } else {
                ""
            }
        ));
        table
            .row(
                "events/s (shard apply_into)",
                thousands(self.events_per_s() as u64),
                &format!("target {}", thousands(TARGET_EVENTS_PER_S)),
            )
            .row(
                "ns/event (shard)",
                format!("{:.1}", self.ns_per_event()),
                "",
            )
            .row(
                "events/s (limit: HashMap<u64,i64>)",
                thousands(self.limit_events_per_s() as u64),
                "std HashMap (SipHash), same customer sequence",
            )
            .row(
                "ns/event (limit)",
                format!("{:.1}", self.limit_ns_per_event()),
                "",
            )
            .row(
                "ratio vs limit",
                format!("{:.3}", self.ratio_vs_limit()),
                "shard / HashMap",
            )
            .row(
                "ratio vs target",
                format!("{:.3}", self.events_per_s() / TARGET_EVENTS_PER_S as f64),
                "",
            )
            .row(
                "events/s at the median batch",
                thousands(self.median_batch_events_per_s() as u64),
                "without dedup-set growth stalls",
            )
            .row(
                "batch p50 / p99 / max",
                format!(
                    "{:.0} / {:.0} / {:.0} µs",
                    self.batch_us(0.5),
                    self.batch_us(0.99),
                    self.batch_us(1.0)
                ),
                "one apply_into call",
            )
            .row(
                "applied / duplicate / rejected",
                format!(
                    "{} / {} / {}",
                    thousands(self.shard.applied),
                    thousands(self.shard.duplicates),
                    thousands(self.shard.rejected)
                ),
                "",
            )
            .row(
                "usage ledger entries",
                thousands(self.shard.entries),
                "rolled up per account per batch",
            )
            .row(
                "balances moved",
                format!("{} µcredits", self.balance_moved_micros),
                &format!(
                    "read back per account; Σ events = {}",
                    self.expected_moved_micros
                ),
            )
            .row(
                "dedup window",
                format!("{} ids", thousands(self.dedup_len as u64)),
                &format!(
                    "ids_max {}, window {} s",
                    thousands(self.dedup.ids_max as u64),
                    self.dedup.window_ms / 1_000
                ),
            )
            .row(
                "top 1% of customers get",
                format!("{:.1} %", self.top_percent_share * 100.0),
                "of events",
            )
            .row(
                "bytes per pre-built Input",
                size_of::<Input>().to_string(),
                "not counting heap",
            )
            .row(
                "RSS after setup / inputs / run",
                format!(
                    "{} / {} / {}",
                    opt_mib(self.rss_after_setup),
                    opt_mib(self.rss_after_build),
                    opt_mib(self.rss_after_run)
                ),
                "",
            )
            .row("peak RSS (VmHWM)", opt_mib(self.peak_rss), "")
            .row(
                "setup / build (untimed)",
                format!(
                    "{:.1} s / {:.1} s",
                    self.setup.as_secs_f64(),
                    self.build.as_secs_f64()
                ),
                "",
            );
        if let Some(miss) = self.miss_ns {
            table.row(
                "random miss latency",
                format!("{miss:.1} ns"),
                &format!("pointer chase over {} MiB", args.probe_mib),
            );
        }
        table
    }

    /// The JSON object (DESIGN §8 keys first).
    pub fn json(&self) -> serde_json::Value {
        let round = |value: f64, places: i32| {
            let scale = 10_f64.powi(places);
            (value * scale).round() / scale
        };
        json!({
            "scenario": "core",
            "events_per_s": self.events_per_s().round() as u64,
            "limit_events_per_s": self.limit_events_per_s().round() as u64,
            "ratio_vs_limit": round(self.ratio_vs_limit(), 4),
            "target_events_per_s": TARGET_EVENTS_PER_S,
            "accounts": self.args.accounts,
            "events": self.args.events,
            "batch": self.args.batch,
            "zipf": self.args.zipf,
            "ns_per_event": round(self.ns_per_event(), 2),
            "limit_ns_per_event": round(self.limit_ns_per_event(), 2),
            "auto_recharge": self.args.auto_recharge,
            "seed": self.args.seed,
            "applied": self.shard.applied,
            "dedup_len": self.dedup_len,
            "peak_rss_bytes": self.peak_rss,
            "batch_p50_us": round(self.batch_us(0.5), 1),
            "batch_p99_us": round(self.batch_us(0.99), 1),
            "batch_max_us": round(self.batch_us(1.0), 1),
            "median_batch_events_per_s": self.median_batch_events_per_s().round() as u64,
            "miss_latency_ns": self.miss_ns.map(|ns| round(ns, 1)),
        })
    }
}

/// Runs the whole scenario and checks its own result: every event applied once, and the
/// balances moved by exactly the events' credits.
pub fn run(args: &CoreArgs) -> anyhow::Result<CoreReport> {
    ensure!(
        args.zipf.is_finite() && args.zipf >= 0.0,
        "--zipf must be a finite number ≥ 0, found {}",
        args.zipf
    );
    let started = Instant::now();
    let mut fixture = setup(args)?;
    let setup = started.elapsed();
    let rss_after_setup = report::rss_bytes();

    let started = Instant::now();
    let workload = workload(args, &fixture.customers)?;
    let build = started.elapsed();
    let rss_after_build = report::rss_bytes();

    let shard = run_shard(&mut fixture, &workload.inputs, args.batch as usize);
    let rss_after_run = report::rss_bytes();
    let events = i64::try_from(args.events).context("--events fits i64")?;
    let (limit_elapsed, limit_sum) = run_limit(args.accounts, &workload.customers);
    ensure!(
        limit_sum == -events,
        "the baseline lost decrements: {limit_sum} ≠ -{events}"
    );

    let feature_rate = fixture
        .shard
        .catalog()
        .feature_rate(example::FEATURE)
        .context("example feature in the catalog")?;
    let per_event = Quantity::from_micros(MICROS_PER_UNIT)
        .rate(feature_rate.credits_per_unit)
        .context("rating one unit")?;
    let expected_moved_micros = i128::from(per_event.micros()) * i128::from(events);
    let balance_moved_micros = balances_moved(&fixture)?;
    ensure!(
        shard.applied == args.events && shard.duplicates == 0 && shard.rejected == 0,
        "applied {} of {} events ({} duplicates, {} rejected)",
        shard.applied,
        args.events,
        shard.duplicates,
        shard.rejected
    );
    ensure!(
        balance_moved_micros == expected_moved_micros,
        "balances moved {balance_moved_micros} µcredits, events sum to {expected_moved_micros}"
    );
    let dedup_len = fixture.shard.dedup_len();
    let dedup = fixture.shard.config().dedup;
    let miss_ns = miss_latency_ns(args.probe_mib, args.seed);
    Ok(CoreReport {
        args: args.clone(),
        shard,
        balance_moved_micros,
        expected_moved_micros,
        limit_elapsed,
        dedup_len,
        dedup,
        setup,
        build,
        rss_after_setup,
        rss_after_build,
        rss_after_run,
        peak_rss: report::peak_rss_bytes(),
        top_percent_share: workload.top_percent_share,
        miss_ns,
    })
}

/// Σ over accounts of (granted − balance), read back through the shard's read side.
pub fn balances_moved(fixture: &Fixture) -> anyhow::Result<i128> {
    let mut moved = 0_i128;
    for id in &fixture.customers {
        let handle: AccountHandle = fixture
            .shard
            .find_account(id.as_str(), example::CREDIT_TYPE)
            .with_context(|| format!("account of {id}"))?;
        let balance = fixture.shard.account(handle).balance().micros();
        ensure!(balance > 0, "{id} ran out of credits: {balance} µcredits");
        moved += i128::from(fixture.grant_micros - balance);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_core_run_applies_every_event_once_and_moves_balances_exactly() {
        let args = CoreArgs::tiny(1_000, 10_000);
        let report = run(&args).expect("core scenario runs");
        assert_eq!(report.shard.applied, 10_000);
        assert_eq!(report.shard.duplicates, 0);
        assert_eq!(report.shard.rejected, 0);
        assert_eq!(report.balance_moved_micros, 10_000 * 1_000_000);
        assert_eq!(report.balance_moved_micros, report.expected_moved_micros);
        assert_eq!(report.dedup_len, 10_000, "every id is in the window");
        // The report renders and its JSON carries the keys DESIGN §8 names.
        assert!(report.table().render().contains("events/s"));
        let json = report.json();
        for key in [
            "scenario",
            "events_per_s",
            "limit_events_per_s",
            "ratio_vs_limit",
            "target_events_per_s",
            "accounts",
            "events",
            "batch",
            "zipf",
            "ns_per_event",
            "limit_ns_per_event",
        ] {
            assert!(json.get(key).is_some(), "missing {key} in {json}");
        }
        assert_eq!(json["scenario"], "core");
    }

    #[test]
    fn replaying_the_same_events_moves_nothing() {
        // Dedup is on the path: the same inputs again are all duplicates.
        let args = CoreArgs {
            auto_recharge: true,
            ..CoreArgs::tiny(100, 2_000)
        };
        let mut fixture = setup(&args).expect("setup");
        let workload = workload(&args, &fixture.customers).expect("workload");
        let first = run_shard(&mut fixture, &workload.inputs, 300);
        assert_eq!(first.applied, 2_000);
        let moved = balances_moved(&fixture).expect("read back");
        assert_eq!(moved, 2_000 * 1_000_000);
        let again = run_shard(&mut fixture, &workload.inputs, 300);
        assert_eq!((again.applied, again.duplicates), (0, 2_000));
        assert_eq!(balances_moved(&fixture).expect("read back"), moved);
    }

    #[test]
    fn customer_names_are_fixed_width() {
        assert_eq!(customer_name(0, 1_000_000), "c0000000");
        assert_eq!(customer_name(999_999, 1_000_000), "c0999999");
        assert_eq!(customer_name(5, 20_000_000), "c00000005");
    }
}
