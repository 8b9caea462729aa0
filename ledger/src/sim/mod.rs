//! The deterministic simulator: one `u64` seed drives a workload of usage bursts, grants,
//! voids, settings and payment-method changes, a faulty recharger and gateway, shard
//! crashes that restore a snapshot and replay the log, and a clock that crosses spend
//! periods and grant expiries. After every batch a reference model and an auditor check
//! the invariants of DESIGN §4; the first broken one stops the run with its seed and step.

pub mod audit;
pub mod recharger;
pub mod reference;
mod rng;
mod rows;
mod workload;

use std::fmt;

pub use rng::SimRng;

use crate::effects::Effects;
use crate::input::Input;
use crate::shard::{Shard, ShardConfig};
use crate::time::TimestampMs;
use audit::RechargeAuditor;
use recharger::SimRecharger;
use reference::ReferenceModel;

/// How big a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimConfig {
    /// The seed; the same seed replays the same run.
    pub seed: u64,
    /// Workload steps.
    pub steps: u32,
    /// Customers (few, so that they collide often).
    pub customers: u32,
}

impl SimConfig {
    /// The default size for `seed`.
    pub fn for_seed(seed: u64) -> Self {
        Self {
            seed,
            steps: 400,
            customers: 6,
        }
    }
}

/// What a passing run did, to show that the faults really happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Batches in the log.
    pub batches: u64,
    /// Usage events sent, duplicates included.
    pub events_sent: u64,
    /// Events the shard applied.
    pub events_applied: u64,
    /// Duplicates the shard dropped.
    pub events_duplicate: u64,
    /// Inputs the shard rejected.
    pub inputs_rejected: u64,
    /// Shard crashes (restore + replay).
    pub crashes: u64,
    /// Of those, restores from the flushed rows (the others restore a snapshot).
    pub restores_from_rows: u64,
    /// Flushes closed.
    pub flushes: u64,
    /// Recharges charged and granted.
    pub recharges_succeeded: u64,
    /// Recharges declined.
    pub recharges_declined: u64,
    /// Recharges cut to the spend limit.
    pub recharges_cut: u64,
    /// Attempts skipped, with a reason.
    pub attempts_skipped: u64,
    /// Gateway timeouts injected.
    pub gateway_timeouts: u64,
    /// Recharger crashes injected.
    pub recharger_crashes: u64,
    /// Stale or duplicate recharge outcomes ignored.
    pub stale_outcomes: u64,
    /// Simulated time covered, in days.
    pub days: i64,
}

impl SimReport {
    /// Adds another run's counts to this one.
    pub fn add(&mut self, other: &SimReport) {
        self.batches += other.batches;
        self.events_sent += other.events_sent;
        self.events_applied += other.events_applied;
        self.events_duplicate += other.events_duplicate;
        self.inputs_rejected += other.inputs_rejected;
        self.crashes += other.crashes;
        self.restores_from_rows += other.restores_from_rows;
        self.flushes += other.flushes;
        self.recharges_succeeded += other.recharges_succeeded;
        self.recharges_declined += other.recharges_declined;
        self.recharges_cut += other.recharges_cut;
        self.attempts_skipped += other.attempts_skipped;
        self.gateway_timeouts += other.gateway_timeouts;
        self.recharger_crashes += other.recharger_crashes;
        self.stale_outcomes += other.stale_outcomes;
        self.days += other.days;
    }
}

/// A broken invariant: where, which, and what was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimFailure {
    /// The seed that replays it.
    pub seed: u64,
    /// The step at which it broke.
    pub step: u32,
    /// The invariant (DESIGN §4 number and name).
    pub invariant: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for SimFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {} step {}: invariant {} broken: {}\n  replay with: refill simulate --seed {}",
            self.seed, self.step, self.invariant, self.detail, self.seed
        )
    }
}

/// Runs one seed.
pub fn run(config: SimConfig) -> Result<SimReport, SimFailure> {
    let mut world = World::new(config);
    world.run().map_err(|(invariant, detail)| SimFailure {
        seed: config.seed,
        step: world.step,
        invariant,
        detail,
    })?;
    Ok(world.report())
}

type Check = Result<(), audit::Violation>;

/// Everything the simulation holds.
struct World {
    config: SimConfig,
    rng: SimRng,
    step: u32,
    start: TimestampMs,
    now: TimestampMs,
    shard: Shard,
    /// The durable log of batches: the source of truth that crashes replay.
    log: Vec<(TimestampMs, Vec<Input>)>,
    /// Each batch's effects as first produced, as bytes: replays must match them.
    canonical: Vec<Vec<u8>>,
    snapshot: (usize, Vec<u8>),
    /// The store's rows as the flushes wrote them: restores from them must be exact too.
    rows: rows::FlushedRows,
    reference: ReferenceModel,
    auditor: RechargeAuditor,
    recharger: SimRecharger,
    /// Outcomes in transit: (due step, outcome).
    in_transit: Vec<(u32, Input)>,
    workload: workload::Workload,
    stats: SimReport,
}

fn shard_config() -> ShardConfig {
    ShardConfig {
        dedup: crate::dedup::DedupConfig {
            window_ms: 30 * 86_400_000,
            ids_max: 1_000_000,
        },
    }
}

impl World {
    fn new(config: SimConfig) -> Self {
        let mut rng = SimRng::new(config.seed);
        // Start anywhere in 2026, so runs cross month and week boundaries at varied offsets.
        let start = TimestampMs(1_767_225_600_000 + rng.between(0, 364 * 86_400_000));
        let shard = Shard::new(shard_config(), start);
        let snapshot = (0, shard.snapshot());
        Self {
            config,
            workload: workload::Workload::new(config.customers),
            rng,
            step: 0,
            start,
            now: start,
            shard,
            log: Vec::new(),
            canonical: Vec::new(),
            snapshot,
            rows: rows::FlushedRows::default(),
            reference: ReferenceModel::default(),
            auditor: RechargeAuditor::default(),
            recharger: SimRecharger::default(),
            in_transit: Vec::new(),
            stats: SimReport {
                seed: config.seed,
                ..SimReport::default()
            },
        }
    }

    fn run(&mut self) -> Check {
        let setup = self.workload.setup(&mut self.rng);
        self.commit(setup)?;
        for step in 1..=self.config.steps {
            self.step = step;
            self.deliver_outcomes()?;
            let roll = self.rng.below(1000);
            match roll {
                0..400 => {
                    let burst = self.workload.usage_burst(&mut self.rng, self.now);
                    self.stats.events_sent += burst.len() as u64;
                    self.commit(burst)?;
                }
                400..480 => {
                    let grants = self.workload.grants(&mut self.rng, self.now);
                    self.commit(grants)?;
                }
                480..510 => {
                    let voids = self.workload.voids(&mut self.rng);
                    self.commit(voids)?;
                }
                510..570 => {
                    let settings = self.workload.settings(&mut self.rng, &self.shard);
                    self.commit(settings)?;
                }
                570..610 => {
                    let methods = self.workload.payment_methods(&mut self.rng);
                    self.commit(methods)?;
                }
                610..760 => self.recharger_works()?,
                760..840 => {
                    self.now.0 += self.rng.between(60_000, 4 * 86_400_000);
                    self.commit(vec![Input::Tick])?;
                }
                840..865 => self.crash()?,
                865..895 => self.snapshot = (self.log.len(), self.shard.snapshot()),
                895..925 => self.commit(vec![Input::Flush])?,
                925..945 => {
                    let bad = self.workload.bad_inputs(&mut self.rng, self.now);
                    self.commit(bad)?;
                }
                _ => self.recharger_works()?,
            }
            if step % 50 == 0 {
                self.compare_all()?;
            }
        }
        self.quiesce()?;
        self.compare_all()?;
        self.replay_from_genesis()
    }

    /// Appends a batch to the log, applies it, and checks everything it touched.
    fn commit(&mut self, inputs: Vec<Input>) -> Check {
        self.now.0 += self.rng.between(1, 2_000);
        let now = self.now;
        self.auditor.observe_inputs(&self.shard, now, &inputs);
        let fx = self.shard.apply(now, &inputs);
        self.reference.apply(now, &inputs);
        for command in &fx.commands {
            self.reference.command_issued(&command.id);
            self.recharger.queue.push_back(command.clone());
        }
        self.auditor.observe_effects(&self.shard, &fx)?;
        self.compare_changed(&fx)?;
        self.stats.events_applied += fx.events_applied;
        self.stats.events_duplicate += fx.events_duplicate;
        self.stats.inputs_rejected += fx.inputs_rejected;
        self.stats.stale_outcomes += fx
            .outcomes
            .iter()
            .filter(|(_, outcome)| *outcome == crate::effects::Outcome::StaleRechargeOutcome)
            .count() as u64;
        self.canonical.push(effects_bytes(&fx));
        self.log.push((now, inputs));
        if let Some(flush) = &fx.flush {
            self.rows.write(&self.shard, flush, self.log.len());
            self.stats.flushes += 1;
        }
        Ok(())
    }

    fn recharger_works(&mut self) -> Check {
        let budget = 1 + self.rng.below(4) as usize;
        let outcomes = self
            .recharger
            .work(&mut self.rng, budget)
            .map_err(|detail| ("4 no double charge", detail))?;
        for outcome in outcomes {
            let due = self.step + self.rng.below(4) as u32;
            if self.rng.chance(100) {
                self.in_transit
                    .push((due + self.rng.below(6) as u32, outcome.clone()));
            }
            self.in_transit.push((due, outcome));
        }
        Ok(())
    }

    /// Delivers due outcomes as one batch of the account-commands log, in a bounded
    /// shuffle of their order.
    fn deliver_outcomes(&mut self) -> Check {
        let step = self.step;
        let (mut due, later): (Vec<_>, Vec<_>) =
            self.in_transit.drain(..).partition(|(at, _)| *at <= step);
        self.in_transit = later;
        if due.is_empty() {
            return Ok(());
        }
        for index in 1..due.len() {
            if self.rng.chance(300) {
                due.swap(index - 1, index);
            }
        }
        self.commit(due.into_iter().map(|(_, outcome)| outcome).collect())
    }

    /// A crash: restore the last snapshot, replay the log after it, and demand the same
    /// effects byte for byte (invariant 10); the restarted shell re-publishes in-flight
    /// commands, which the recharger must apply once.
    fn crash(&mut self) -> Check {
        self.stats.crashes += 1;
        // Half the crashes restore from the flushed rows (the restart of a real worker),
        // half from the last snapshot (a backup); both must be exact.
        let from_rows = self.rows.position().is_some() && self.rng.chance(500);
        let (position, mut shard) = if from_rows {
            self.stats.restores_from_rows += 1;
            let shard = self.rows.restore().map_err(|error| {
                (
                    "10 replay is exact",
                    format!("restore from rows failed: {error}"),
                )
            })?;
            (self.rows.position().unwrap_or(0), shard)
        } else {
            let (position, bytes) = &self.snapshot;
            let shard = Shard::restore(bytes)
                .map_err(|error| ("10 replay is exact", format!("restore failed: {error}")))?;
            (*position, shard)
        };
        for index in position..self.log.len() {
            let (now, inputs) = &self.log[index];
            let fx = shard.apply(*now, inputs);
            if effects_bytes(&fx) != self.canonical[index] {
                return Err((
                    "10 replay is exact",
                    format!("batch {index} replayed after a crash gave other effects"),
                ));
            }
            self.recharger.queue.extend(fx.commands.iter().cloned());
        }
        self.recharger.queue.extend(shard.in_flight_commands());
        if shard.snapshot() != self.shard.snapshot() {
            return Err((
                "10 replay is exact",
                "state after crash and replay differs from the state before".into(),
            ));
        }
        self.shard = shard;
        Ok(())
    }

    /// Lets every command and outcome in flight land, then checks that every charge made
    /// at the gateway was granted exactly once (money is never lost nor taken twice).
    fn quiesce(&mut self) -> Check {
        for _ in 0..200 {
            if self.recharger.queue.is_empty() && self.in_transit.is_empty() {
                break;
            }
            self.step += 1;
            self.recharger_works()?;
            for (due, _) in &mut self.in_transit {
                *due = (*due).min(self.step);
            }
            self.deliver_outcomes()?;
        }
        if !self.recharger.queue.is_empty() || !self.in_transit.is_empty() {
            return Err((
                "3 one recharge at a time",
                "recharges still in flight after quiescing".into(),
            ));
        }
        for (key, count) in &self.recharger.gateway.charged {
            if *count != 1 {
                return Err(("4 no double charge", format!("{key} charged {count} times")));
            }
            if !self.auditor.granted(key) {
                return Err((
                    "4 no double charge",
                    format!("{key} was charged but never granted"),
                ));
            }
        }
        if let Some(command) = self.shard.in_flight_commands().first() {
            return Err((
                "3 one recharge at a time",
                format!("{} still in flight after quiescing", command.id),
            ));
        }
        Ok(())
    }

    /// Replays the whole log on a fresh shard: same effects, same final state.
    fn replay_from_genesis(&mut self) -> Check {
        let mut shard = Shard::new(shard_config(), self.start);
        for (index, (now, inputs)) in self.log.iter().enumerate() {
            if effects_bytes(&shard.apply(*now, inputs)) != self.canonical[index] {
                return Err((
                    "10 replay is exact",
                    format!("batch {index} replayed from genesis gave other effects"),
                ));
            }
        }
        if shard.snapshot() != self.shard.snapshot() {
            return Err((
                "10 replay is exact",
                "state replayed from genesis differs".into(),
            ));
        }
        Ok(())
    }

    fn compare_changed(&self, fx: &Effects) -> Check {
        fx.changed
            .iter()
            .try_for_each(|&handle| self.compare(handle))
    }

    fn compare_all(&self) -> Check {
        self.shard
            .accounts()
            .try_for_each(|(handle, _)| self.compare(handle))
    }

    /// The shard's account against the reference model's (invariants 1, 2, 7).
    fn compare(&self, handle: crate::effects::AccountHandle) -> Check {
        let account = self.shard.account(handle);
        let key = (
            self.shard.customer_of(handle).id.clone(),
            self.shard.credit_type_of(handle).clone(),
        );
        let empty = reference::ModelAccount::default();
        let model = self.reference.accounts.get(&key).unwrap_or(&empty);
        let name = format!("{}/{}", key.0, key.1);
        if account.totals().consumed != model.consumed {
            return Err((
                "2 effectively once",
                format!(
                    "{name}: consumed {} µ, the model consumed {} µ",
                    account.totals().consumed,
                    model.consumed
                ),
            ));
        }
        let mut shard_grants: Vec<_> = account
            .grants()
            .iter()
            .map(|g| (g.id, g.remaining.micros(), g.priority, g.expires_at))
            .collect();
        let mut model_grants: Vec<_> = model
            .grants
            .iter()
            .map(|g| (g.id, g.remaining, g.priority, g.expires_at))
            .collect();
        shard_grants.sort();
        model_grants.sort();
        if shard_grants != model_grants || account.overdraft().micros() != model.overdraft {
            return Err((
                "7 burn-down order",
                format!(
                    "{name}: grants {shard_grants:?} overdraft {} but the model has {model_grants:?} overdraft {}",
                    account.overdraft(),
                    model.overdraft
                ),
            ));
        }
        if account.balance().micros() != model.balance() {
            return Err((
                "1 conservation",
                format!(
                    "{name}: balance {} but the model has {} µ",
                    account.balance(),
                    model.balance()
                ),
            ));
        }
        if !account
            .grants()
            .iter()
            .is_sorted_by_key(|grant| grant.burn_key())
        {
            return Err((
                "7 burn-down order",
                format!("{name}: live grants out of burn order"),
            ));
        }
        Ok(())
    }

    fn report(&self) -> SimReport {
        let mut report = self.stats.clone();
        report.batches = self.log.len() as u64;
        report.recharges_succeeded = self.auditor.recharges_succeeded;
        report.recharges_declined = self.auditor.recharges_declined;
        report.recharges_cut = self.auditor.recharges_cut;
        report.attempts_skipped = self.auditor.attempts_skipped;
        report.gateway_timeouts = self.recharger.timeouts;
        report.recharger_crashes = self.recharger.crashes;
        report.days = (self.now.0 - self.start.0) / 86_400_000;
        report
    }
}

fn effects_bytes(fx: &Effects) -> Vec<u8> {
    postcard::to_stdvec(fx).expect("serializing to memory cannot fail")
}
