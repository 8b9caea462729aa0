//! The retention rule of the topics a shard replays from (`refill.usage`,
//! `refill.account-commands`, `refill.journal`), and the check `refill ingest` and `refill
//! serve --log kafka://` run at start: a topic that could delete records a shard still
//! needs is refused with what was found, what is needed and the command that fixes it.
//!
//! The rule, for each of those topics:
//!
//! - `cleanup.policy` is exactly `delete`: compaction keeps the last record per key (a
//!   customer id), dropping earlier usage and commands, and breaks dense offsets;
//! - `retention.ms` is `-1` (unlimited) or at least the minimum (default 7 days);
//! - `retention.bytes` is `-1`: a size limit deletes records by volume, whatever their age,
//!   so no time minimum would hold under a burst.
//!
//! Why a time: a shard restores from its newest complete checkpoint and replays what came
//! after it. Checkpoints are written every flush interval while the shard runs, so the
//! oldest record still needed is as old as the longest time a shard may go without a
//! checkpoint: every worker down, the store down (flushes are kept, not written), or a
//! partition no worker owns. The minimum is that outage budget, plus what `refill replay`
//! needs (it starts from a daily snapshot). Replay from genesis needs `-1`.

use std::fmt;
use std::time::Duration;

use refill_store::StoreError;

use crate::client::{base_config, create_admin, topic_config};

/// The default minimum `retention.ms`: 7 days, as `deploy/kafka/topics.toml` sets.
pub const RETENTION_MIN_MS_DEFAULT: u64 = 604_800_000;

/// Limit of the configuration request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What one topic's configuration says about how long it keeps records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicRetention {
    /// Topic name.
    pub topic: String,
    /// `cleanup.policy` as the cluster has it (`(unset)` if absent).
    pub cleanup_policy: String,
    /// `retention.ms` as the cluster has it.
    pub retention_ms: String,
    /// `retention.bytes` as the cluster has it.
    pub retention_bytes: String,
}

/// One setting that breaks the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionProblem {
    /// The Kafka setting.
    pub setting: &'static str,
    /// Its value on the cluster.
    pub found: String,
    /// What the rule needs, in words.
    pub needed: String,
    /// The value that fixes it (for `kafka-configs.sh --add-config`).
    pub fix: String,
}

impl TopicRetention {
    /// The settings that break the rule for a minimum of `min_ms`; empty when it holds.
    pub fn problems(&self, min_ms: u64) -> Vec<RetentionProblem> {
        let mut problems = Vec::new();
        let policies: Vec<&str> = self.cleanup_policy.split(',').map(str::trim).collect();
        if policies != ["delete"] {
            problems.push(RetentionProblem {
                setting: "cleanup.policy",
                found: self.cleanup_policy.clone(),
                needed: String::from(
                    "delete (never compact: it drops a customer's earlier records)",
                ),
                fix: String::from("delete"),
            });
        }
        let time_ok = match self.retention_ms.trim().parse::<i64>() {
            Ok(-1) => true,
            Ok(ms) => u64::try_from(ms).is_ok_and(|ms| ms >= min_ms),
            Err(_) => false,
        };
        if !time_ok {
            problems.push(RetentionProblem {
                setting: "retention.ms",
                found: with_duration(&self.retention_ms),
                needed: format!(
                    "-1 (unlimited) or at least {}",
                    with_duration(&min_ms.to_string())
                ),
                fix: min_ms.to_string(),
            });
        }
        if self.retention_bytes.trim().parse::<i64>() != Ok(-1) {
            problems.push(RetentionProblem {
                setting: "retention.bytes",
                found: self.retention_bytes.clone(),
                needed: String::from("-1 (no size limit: it deletes records whatever their age)"),
                fix: String::from("-1"),
            });
        }
        problems
    }
}

/// A number of milliseconds with a readable duration beside it: `3600000 (1 h)`.
fn with_duration(ms: &str) -> String {
    let Ok(value) = ms.trim().parse::<u64>() else {
        return ms.to_owned();
    };
    let readable = match value {
        0 => return String::from("0"),
        v if v % 86_400_000 == 0 => format!("{} d", v / 86_400_000),
        v if v % 3_600_000 == 0 => format!("{} h", v / 3_600_000),
        v if v % 60_000 == 0 => format!("{} min", v / 60_000),
        v if v % 1_000 == 0 => format!("{} s", v / 1_000),
        v => format!("{v} ms"),
    };
    format!("{value} ({readable})")
}

/// The result of checking some topics against the rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionReport {
    /// The cluster checked (named in the fix commands).
    pub bootstrap: String,
    /// The minimum `retention.ms` applied.
    pub min_ms: u64,
    /// Each topic with the settings that break the rule (empty when it holds).
    pub topics: Vec<(TopicRetention, Vec<RetentionProblem>)>,
}

impl RetentionReport {
    /// Whether every topic keeps its records long enough.
    pub fn is_ok(&self) -> bool {
        self.topics.iter().all(|(_, problems)| problems.is_empty())
    }

    /// The `kafka-configs.sh` command that fixes `topic`, if it needs one.
    pub fn fix_command(&self, topic: &str) -> Option<String> {
        let (_, problems) = self.topics.iter().find(|(t, _)| t.topic == topic)?;
        if problems.is_empty() {
            return None;
        }
        let settings: Vec<String> = problems
            .iter()
            .map(|p| format!("{}={}", p.setting, p.fix))
            .collect();
        Some(format!(
            "kafka-configs.sh --bootstrap-server {} --alter --entity-type topics --entity-name \
             {topic} --add-config {}",
            self.bootstrap,
            settings.join(",")
        ))
    }
}

impl fmt::Display for RetentionReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (topic, problems) in &self.topics {
            if problems.is_empty() {
                writeln!(
                    f,
                    "{}: keeps records long enough (retention.ms {}, retention.bytes {}, \
                     cleanup.policy {})",
                    topic.topic, topic.retention_ms, topic.retention_bytes, topic.cleanup_policy
                )?;
                continue;
            }
            writeln!(
                f,
                "{}: would delete records a shard may still need to replay:",
                topic.topic
            )?;
            for p in problems {
                writeln!(f, "  {}: found {}, needed {}", p.setting, p.found, p.needed)?;
            }
            if let Some(command) = self.fix_command(&topic.topic) {
                writeln!(f, "  fix: {command}")?;
            }
        }
        if !self.is_ok() {
            writeln!(
                f,
                "(`refill migrate` creates missing topics this way; it reports but never \
                 changes existing ones. The minimum retention.ms is --usage-retention-min-ms \
                 or REFILL_USAGE_RETENTION_MIN_MS, now {}.)",
                with_duration(&self.min_ms.to_string())
            )?;
        }
        Ok(())
    }
}

/// Reads the configuration of `topics` on the cluster at `bootstrap` (Kafka's
/// DescribeConfigs: the effective values, broker defaults included) and checks each against
/// the rule with a minimum `retention.ms` of `min_ms`.
pub fn check_retention(
    bootstrap: &str,
    topics: &[&str],
    min_ms: u64,
) -> Result<RetentionReport, StoreError> {
    let admin = create_admin(&base_config(bootstrap, "refill-retention-check"))?;
    let mut checked = Vec::with_capacity(topics.len());
    for &topic in topics {
        let config = topic_config(&admin, topic, REQUEST_TIMEOUT)?;
        let value = |name: &str| {
            config
                .iter()
                .find(|(key, _)| key == name)
                .and_then(|(_, value)| value.clone())
                .unwrap_or_else(|| String::from("(unset)"))
        };
        let retention = TopicRetention {
            topic: topic.to_owned(),
            cleanup_policy: value("cleanup.policy"),
            retention_ms: value("retention.ms"),
            retention_bytes: value("retention.bytes"),
        };
        let problems = retention.problems(min_ms);
        checked.push((retention, problems));
    }
    Ok(RetentionReport {
        bootstrap: bootstrap.to_owned(),
        min_ms,
        topics: checked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(policy: &str, ms: &str, bytes: &str) -> TopicRetention {
        TopicRetention {
            topic: String::from("refill.usage"),
            cleanup_policy: policy.to_owned(),
            retention_ms: ms.to_owned(),
            retention_bytes: bytes.to_owned(),
        }
    }

    fn settings(t: &TopicRetention, min_ms: u64) -> Vec<&'static str> {
        t.problems(min_ms).iter().map(|p| p.setting).collect()
    }

    #[test]
    fn the_rule_takes_unlimited_or_long_enough_plain_delete_topics() {
        let week = RETENTION_MIN_MS_DEFAULT;
        assert!(settings(&topic("delete", "604800000", "-1"), week).is_empty());
        assert!(settings(&topic("delete", "2592000000", "-1"), week).is_empty());
        assert!(settings(&topic("delete", "-1", "-1"), week).is_empty());
        assert_eq!(
            settings(&topic("delete", "604799999", "-1"), week),
            ["retention.ms"]
        );
        assert_eq!(
            settings(&topic("delete", "-2", "-1"), week),
            ["retention.ms"]
        );
        assert_eq!(
            settings(&topic("delete", "(unset)", "-1"), week),
            ["retention.ms"]
        );
        assert_eq!(
            settings(&topic("delete", "-1", "1073741824"), week),
            ["retention.bytes"]
        );
        assert_eq!(
            settings(&topic("compact", "-1", "-1"), week),
            ["cleanup.policy"]
        );
        assert_eq!(
            settings(&topic("compact,delete", "-1", "-1"), week),
            ["cleanup.policy"]
        );
        assert_eq!(
            settings(&topic("compact", "3600000", "10"), week),
            ["cleanup.policy", "retention.ms", "retention.bytes"]
        );
        assert!(settings(&topic("delete", "3600000", "-1"), 3_600_000).is_empty());
    }

    #[test]
    fn the_report_says_what_was_found_what_is_needed_and_the_fix() {
        let bad = topic("delete", "3600000", "1073741824");
        let problems = bad.problems(RETENTION_MIN_MS_DEFAULT);
        let report = RetentionReport {
            bootstrap: String::from("127.0.0.1:9092"),
            min_ms: RETENTION_MIN_MS_DEFAULT,
            topics: vec![(bad, problems)],
        };
        assert!(!report.is_ok());
        let text = report.to_string();
        for expected in [
            "refill.usage: would delete records",
            "retention.ms: found 3600000 (1 h), needed -1 (unlimited) or at least 604800000 (7 d)",
            "retention.bytes: found 1073741824, needed -1",
            "fix: kafka-configs.sh --bootstrap-server 127.0.0.1:9092 --alter --entity-type \
             topics --entity-name refill.usage --add-config retention.ms=604800000,retention.bytes=-1",
            "--usage-retention-min-ms",
        ] {
            assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
        }
    }
}
