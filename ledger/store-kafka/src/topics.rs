//! The topics of the Kafka contract as a file (`deploy/kafka/topics.toml`) and the code that
//! makes a cluster match it: [`apply_topics`] creates the missing topics and reports how the
//! existing ones differ, without changing them (a partition count change would move keys
//! between partitions, hence between shards: that is an operator's decision). This is what
//! `refill migrate` calls.
//!
//! The file is a list of `[[topic]]` tables:
//!
//! ```toml
//! [[topic]]
//! name = "refill.usage"
//! partitions = 12               # or: partitions_of = "another topic of the file"
//! replication_factor = 3        # capped to the number of brokers when applied
//! [topic.config]                # Kafka topic settings, compared one by one when it exists
//! "cleanup.policy" = "delete"
//! "retention.ms" = 604800000
//! "min.insync.replicas" = 2     # capped to the replication factor applied
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use refill_store::StoreError;
use serde::Deserialize;

use crate::client::{
    admin_options, backend, base_config, block_on, consumer_config, create_admin, create_consumer,
    describe_topic, topic_config, wait_until_ready,
};
use crate::log::check_topic_name;

/// Limit of each broker request made by [`apply_topics`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TopicsFile {
    #[serde(rename = "topic", default)]
    topics: Vec<RawTopic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopic {
    name: String,
    partitions: Option<u32>,
    partitions_of: Option<String>,
    replication_factor: u32,
    #[serde(default)]
    config: BTreeMap<String, toml::Value>,
}

/// One topic of the topics file, checked and resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Partition count (resolved from `partitions_of` when the file uses it).
    pub partitions: u32,
    /// The topic whose partition count this one must keep, if any.
    pub partitions_of: Option<String>,
    /// Replication factor wanted (capped to the number of brokers when applied).
    pub replication_factor: u32,
    /// Kafka topic settings, by name, as strings.
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    /// The value of one topic setting of the file.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.config
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Reads and checks a topics file.
pub fn load_topics(path: &Path) -> Result<Vec<TopicSpec>, StoreError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        StoreError::InvalidRequest(format!(
            "expected a readable topics file at {}, found: {e}",
            path.display()
        ))
    })?;
    parse_topics(&text, &path.display().to_string())
}

/// Parses and checks the text of a topics file; `origin` names it in errors.
pub fn parse_topics(text: &str, origin: &str) -> Result<Vec<TopicSpec>, StoreError> {
    let invalid = |message: String| StoreError::InvalidRequest(format!("{origin}: {message}"));
    let file: TopicsFile = toml::from_str(text).map_err(|e| {
        invalid(format!(
            "expected a topics file ([[topic]] tables), found: {e}"
        ))
    })?;
    if file.topics.is_empty() {
        return Err(invalid(String::from(
            "expected at least one [[topic]] table, found none",
        )));
    }
    let mut specs: Vec<TopicSpec> = Vec::with_capacity(file.topics.len());
    for raw in &file.topics {
        check_topic_name(&raw.name).map_err(|e| invalid(e.to_string()))?;
        if specs.iter().any(|s| s.name == raw.name) {
            return Err(invalid(format!(
                "expected each topic once, found {} twice",
                raw.name
            )));
        }
        if raw.replication_factor == 0 {
            return Err(invalid(format!(
                "expected a replication_factor of at least 1 for {}, found 0",
                raw.name
            )));
        }
        let partitions = match (raw.partitions, &raw.partitions_of) {
            (Some(0), _) => {
                return Err(invalid(format!(
                    "expected at least 1 partition for {}, found 0",
                    raw.name
                )));
            }
            (Some(n), None) => n,
            (None, Some(other)) => {
                let referred = file.topics.iter().find(|t| &t.name == other).ok_or_else(|| {
                    invalid(format!(
                        "expected partitions_of of {} to name a topic of the file, found {other}",
                        raw.name
                    ))
                })?;
                referred.partitions.ok_or_else(|| {
                    invalid(format!(
                        "expected {other} (the partitions_of of {}) to give partitions itself, \
                         found another partitions_of",
                        raw.name
                    ))
                })?
            }
            (Some(_), Some(_)) | (None, None) => {
                return Err(invalid(format!(
                    "expected exactly one of partitions and partitions_of for {}",
                    raw.name
                )));
            }
        };
        if i32::try_from(partitions).is_err() {
            return Err(invalid(format!(
                "expected at most {} partitions for {}, found {partitions}",
                i32::MAX,
                raw.name
            )));
        }
        let mut config = Vec::with_capacity(raw.config.len());
        for (key, value) in &raw.config {
            let value = match value {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(invalid(format!(
                        "expected a string, integer or boolean for {key} of {}, found {}",
                        raw.name,
                        other.type_str()
                    )));
                }
            };
            config.push((key.clone(), value));
        }
        if let Some(min_isr) = config
            .iter()
            .find(|(k, _)| k == "min.insync.replicas")
            .map(|(_, v)| v)
        {
            match min_isr.parse::<u32>() {
                Ok(n) if n >= 1 && n <= raw.replication_factor => {}
                _ => {
                    return Err(invalid(format!(
                        "expected min.insync.replicas of {} from 1 to its replication_factor \
                         {}, found {min_isr}",
                        raw.name, raw.replication_factor
                    )));
                }
            }
        }
        specs.push(TopicSpec {
            name: raw.name.clone(),
            partitions,
            partitions_of: raw.partitions_of.clone(),
            replication_factor: raw.replication_factor,
            config,
        });
    }
    Ok(specs)
}

/// What [`apply_topics`] did with one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicAction {
    /// It was missing and is now created as the file says.
    Created,
    /// It exists and matches the file.
    Unchanged,
    /// It exists and differs from the file; nothing was changed.
    Differs(Vec<TopicDifference>),
}

/// One setting of an existing topic that is not what the file says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicDifference {
    /// `partitions`, `replication_factor` or a Kafka topic setting name.
    pub setting: String,
    /// The value the file asks for (after capping to the cluster's size).
    pub expected: String,
    /// The value the cluster has (`(unset)` when it has none).
    pub found: String,
}

/// One topic of an [`apply_topics`] run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicOutcome {
    /// Topic name.
    pub name: String,
    /// What was done.
    pub action: TopicAction,
    /// Adjustments made to fit the cluster (e.g. a replication factor capped to the brokers).
    pub notes: Vec<String>,
}

/// Everything an [`apply_topics`] run did, topic by topic in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicsReport {
    /// One outcome per topic of the file.
    pub topics: Vec<TopicOutcome>,
}

impl TopicsReport {
    /// Whether every topic now matches the file.
    pub fn is_clean(&self) -> bool {
        self.topics
            .iter()
            .all(|t| !matches!(t.action, TopicAction::Differs(_)))
    }

    /// The outcome of one topic.
    pub fn topic(&self, name: &str) -> Option<&TopicOutcome> {
        self.topics.iter().find(|t| t.name == name)
    }
}

impl fmt::Display for TopicsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for topic in &self.topics {
            match &topic.action {
                TopicAction::Created => writeln!(f, "{}: created", topic.name)?,
                TopicAction::Unchanged => writeln!(f, "{}: matches", topic.name)?,
                TopicAction::Differs(differences) => {
                    writeln!(f, "{}: differs (left as it is)", topic.name)?;
                    for d in differences {
                        writeln!(
                            f,
                            "  {}: expected {}, found {}",
                            d.setting, d.expected, d.found
                        )?;
                    }
                }
            }
            for note in &topic.notes {
                writeln!(f, "  note: {note}")?;
            }
        }
        Ok(())
    }
}

/// Creates the topics of the file at `path` that the cluster at `bootstrap` lacks, and
/// reports how the existing ones differ from it (without changing them). Replication
/// factors are capped to the number of brokers and `min.insync.replicas` to the factor
/// applied (a one-node development broker takes the production file), with a note.
pub fn apply_topics(bootstrap: &str, path: &Path) -> Result<TopicsReport, StoreError> {
    apply_topic_specs(bootstrap, &load_topics(path)?)
}

/// The topics of a file renamed for a namespace (`prefix` before every name, as
/// [`crate::Topics::with_prefix`] names them), and, when `usage_partitions` is given, with
/// that partition count for the usage topic and the topics that keep its count. Tests and
/// shared development clusters use it to get topics of their own.
pub fn prefixed_specs(
    specs: &[TopicSpec],
    prefix: &str,
    usage_partitions: Option<u32>,
) -> Vec<TopicSpec> {
    specs
        .iter()
        .map(|spec| {
            let follows_usage = spec.name == crate::USAGE_TOPIC
                || spec.partitions_of.as_deref() == Some(crate::USAGE_TOPIC);
            TopicSpec {
                name: format!("{prefix}{}", spec.name),
                partitions: match usage_partitions {
                    Some(partitions) if follows_usage => partitions,
                    _ => spec.partitions,
                },
                partitions_of: spec
                    .partitions_of
                    .as_ref()
                    .map(|of| format!("{prefix}{of}")),
                replication_factor: spec.replication_factor,
                config: spec.config.clone(),
            }
        })
        .collect()
}

/// [`apply_topics`] for topics already loaded (and perhaps renamed by [`prefixed_specs`]).
pub fn apply_topic_specs(bootstrap: &str, specs: &[TopicSpec]) -> Result<TopicsReport, StoreError> {
    let meta = create_consumer(&consumer_config(bootstrap, "refill-topics"))?;
    let admin = create_admin(&base_config(bootstrap, "refill-topics-admin"))?;
    let mut outcomes = Vec::with_capacity(specs.len());
    let mut actual_partitions: Vec<(String, u32)> = Vec::new();
    for spec in specs {
        let (state, brokers) = describe_topic(&meta, &spec.name, REQUEST_TIMEOUT)?;
        let mut notes = Vec::new();
        let replication = spec.replication_factor.min(brokers.max(1));
        if replication < spec.replication_factor {
            notes.push(format!(
                "replication_factor {} asked, the cluster has {brokers} broker(s): {replication} \
                 used",
                spec.replication_factor
            ));
        }
        let mut config = spec.config.clone();
        for (key, value) in &mut config {
            if key == "min.insync.replicas"
                && let Ok(asked) = value.parse::<u32>()
                && asked > replication
            {
                notes.push(format!(
                    "min.insync.replicas {asked} asked, above the replication factor \
                     {replication} used: {replication} used"
                ));
                *value = replication.to_string();
            }
        }
        let action = match state {
            None => {
                create(&admin, spec, replication, &config)?;
                wait_until_ready(&meta, &spec.name, spec.partitions, REQUEST_TIMEOUT)?;
                actual_partitions.push((spec.name.clone(), spec.partitions));
                TopicAction::Created
            }
            Some(state) => {
                actual_partitions.push((spec.name.clone(), state.partitions));
                let mut differences = Vec::new();
                if state.partitions != spec.partitions {
                    differences.push(TopicDifference {
                        setting: String::from("partitions"),
                        expected: spec.partitions.to_string(),
                        found: state.partitions.to_string(),
                    });
                }
                if state.replication_factor != replication {
                    differences.push(TopicDifference {
                        setting: String::from("replication_factor"),
                        expected: replication.to_string(),
                        found: state.replication_factor.to_string(),
                    });
                }
                let actual = topic_config(&admin, &spec.name, REQUEST_TIMEOUT)?;
                for (key, wanted) in &config {
                    let found = actual
                        .iter()
                        .find(|(name, _)| name == key)
                        .and_then(|(_, value)| value.clone());
                    if found.as_deref().map(normalized) != Some(normalized(wanted)) {
                        differences.push(TopicDifference {
                            setting: key.clone(),
                            expected: wanted.to_string(),
                            found: found.unwrap_or_else(|| String::from("(unset)")),
                        });
                    }
                }
                if differences.is_empty() {
                    TopicAction::Unchanged
                } else {
                    TopicAction::Differs(differences)
                }
            }
        };
        outcomes.push(TopicOutcome {
            name: spec.name.clone(),
            action,
            notes,
        });
    }
    // Topics that must share a partition count, as they are now on the cluster.
    for (spec, outcome) in specs.iter().zip(&mut outcomes) {
        let Some(other) = &spec.partitions_of else {
            continue;
        };
        let count_of = |name: &str| {
            actual_partitions
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, c)| *c)
        };
        let (Some(mine), Some(theirs)) = (count_of(&spec.name), count_of(other)) else {
            continue;
        };
        if mine == theirs {
            continue;
        }
        let difference = TopicDifference {
            setting: format!("partitions (must equal those of {other})"),
            expected: theirs.to_string(),
            found: mine.to_string(),
        };
        match &mut outcome.action {
            TopicAction::Differs(differences) => differences.push(difference),
            action => {
                outcome.notes.push(format!(
                    "it was {} but {other} has {theirs} partitions on the cluster",
                    if *action == TopicAction::Created {
                        "created as the file says"
                    } else {
                        "as the file says"
                    }
                ));
                *action = TopicAction::Differs(vec![difference]);
            }
        }
    }
    Ok(TopicsReport { topics: outcomes })
}

/// Deletes `topics` from the cluster at `bootstrap` (missing ones are no error): for the
/// throw-away topics of tests and benchmarks. Never part of `refill migrate`.
pub fn delete_topics(bootstrap: &str, topics: &[&str]) -> Result<(), StoreError> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin = create_admin(&base_config(bootstrap, "refill-topics-admin"))?;
    let results = block_on(admin.delete_topics(topics, &admin_options(REQUEST_TIMEOUT)))
        .map_err(|e| backend(&format!("deleting topics {topics:?}"), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => return Err(backend(&format!("deleting topic {name}"), code)),
        }
    }
    Ok(())
}

/// A setting value for comparison: comma lists (e.g. `cleanup.policy`) in sorted order.
fn normalized(value: &str) -> String {
    let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.join(",")
}

fn create(
    admin: &rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
    spec: &TopicSpec,
    replication: u32,
    config: &[(String, String)],
) -> Result<(), StoreError> {
    let mut new = NewTopic::new(
        &spec.name,
        i32::try_from(spec.partitions).unwrap_or(i32::MAX),
        TopicReplication::Fixed(i32::try_from(replication).unwrap_or(i32::MAX)),
    );
    for (key, value) in config {
        new = new.set(key, value);
    }
    let results = block_on(admin.create_topics([&new], &admin_options(REQUEST_TIMEOUT)))
        .map_err(|e| backend(&format!("creating topic {}", spec.name), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(backend(&format!("creating topic {name}"), code)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> Vec<TopicSpec> {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kafka/topics.toml");
        match load_topics(&path) {
            Ok(specs) => specs,
            Err(e) => panic!("expected deploy/kafka/topics.toml to load, found {e}"),
        }
    }

    fn spec<'a>(specs: &'a [TopicSpec], name: &str) -> &'a TopicSpec {
        match specs.iter().find(|s| s.name == name) {
            Some(spec) => spec,
            None => panic!("expected topic {name} in deploy/kafka/topics.toml, found none"),
        }
    }

    #[test]
    fn the_contract_file_has_the_four_topics_of_design_section_6_and_the_journal() {
        let specs = contract();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                crate::USAGE_TOPIC,
                crate::DLQ_TOPIC,
                crate::RECHARGE_COMMANDS_TOPIC,
                crate::ACCOUNT_COMMANDS_TOPIC,
                crate::JOURNAL_TOPIC
            ],
            "expected the four topics of the Kafka contract and the shards' journal"
        );
        let usage = spec(&specs, crate::USAGE_TOPIC);
        let commands = spec(&specs, crate::ACCOUNT_COMMANDS_TOPIC);
        assert_eq!(
            commands.partitions, usage.partitions,
            "expected refill.account-commands to have the partition count of refill.usage"
        );
        assert_eq!(
            commands.partitions_of.as_deref(),
            Some(crate::USAGE_TOPIC),
            "expected the partition count tied to refill.usage in the file, not copied"
        );
        assert_eq!(
            spec(&specs, crate::JOURNAL_TOPIC).partitions_of.as_deref(),
            Some(crate::USAGE_TOPIC),
            "expected one journal partition per refill.usage partition (one per shard)"
        );
        for s in &specs {
            for setting in ["cleanup.policy", "retention.ms", "min.insync.replicas"] {
                assert!(
                    s.setting(setting).is_some(),
                    "expected {setting} set for {}, found it missing",
                    s.name
                );
            }
            assert_eq!(
                s.setting("unclean.leader.election.enable"),
                Some("false"),
                "expected unclean leader election off for {}",
                s.name
            );
        }
        for log in [crate::USAGE_TOPIC, crate::ACCOUNT_COMMANDS_TOPIC] {
            assert_eq!(
                spec(&specs, log).setting("cleanup.policy"),
                Some("delete"),
                "expected {log}, read as a log with dense offsets, never compacted"
            );
        }
    }

    #[test]
    fn the_topics_a_shard_replays_from_are_made_to_pass_the_retention_rule() {
        let specs = contract();
        for log in [
            crate::USAGE_TOPIC,
            crate::ACCOUNT_COMMANDS_TOPIC,
            crate::JOURNAL_TOPIC,
        ] {
            let s = spec(&specs, log);
            let as_made = crate::TopicRetention {
                topic: s.name.clone(),
                cleanup_policy: s.setting("cleanup.policy").unwrap_or("(unset)").to_owned(),
                retention_ms: s.setting("retention.ms").unwrap_or("(unset)").to_owned(),
                retention_bytes: s.setting("retention.bytes").unwrap_or("(unset)").to_owned(),
            };
            let problems = as_made.problems(crate::RETENTION_MIN_MS_DEFAULT);
            assert!(
                problems.is_empty(),
                "expected {log} as the file makes it to pass the retention rule, found {problems:?}"
            );
        }
    }

    #[test]
    fn parse_rejects_what_it_cannot_apply() {
        let cases = [
            ("", "at least one [[topic]]"),
            (
                "[[topic]]\nname = \"a\"\nreplication_factor = 1\n",
                "exactly one of partitions and partitions_of",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions = 1\npartitions_of = \"a\"\nreplication_factor = 1\n",
                "exactly one of partitions and partitions_of",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions_of = \"b\"\nreplication_factor = 1\n",
                "to name a topic of the file",
            ),
            (
                "[[topic]]\nname = \"a b\"\npartitions = 1\nreplication_factor = 1\n",
                "Kafka topic name",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions = 1\nreplication_factor = 1\n[[topic]]\nname = \"a\"\npartitions = 1\nreplication_factor = 1\n",
                "twice",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions = 1\nreplication_factor = 1\n[topic.config]\n\"min.insync.replicas\" = 2\n",
                "min.insync.replicas",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions = 1\nreplication_factor = 1\ncolour = 1\n",
                "unknown field",
            ),
            (
                "[[topic]]\nname = \"a\"\npartitions = 1\nreplication_factor = 1\n[topic.config]\n\"retention.ms\" = 1.5\n",
                "string, integer or boolean",
            ),
        ];
        for (text, expected) in cases {
            match parse_topics(text, "case") {
                Err(StoreError::InvalidRequest(message)) => assert!(
                    message.contains(expected),
                    "expected an error saying {expected:?} for {text:?}, found {message:?}"
                ),
                other => panic!("expected an InvalidRequest for {text:?}, found {other:?}"),
            }
        }
    }

    #[test]
    fn parse_resolves_partitions_of_and_stringifies_values() {
        let text = "[[topic]]\nname = \"b\"\npartitions_of = \"a\"\nreplication_factor = 1\n\
                    [[topic]]\nname = \"a\"\npartitions = 6\nreplication_factor = 3\n\
                    [topic.config]\n\"retention.ms\" = 1000\n\"unclean.leader.election.enable\" = false\n";
        let specs = match parse_topics(text, "case") {
            Ok(specs) => specs,
            Err(e) => panic!("expected the file to parse, found {e}"),
        };
        assert_eq!(
            specs[0].partitions, 6,
            "expected b to take a's 6 partitions"
        );
        assert_eq!(specs[1].setting("retention.ms"), Some("1000"));
        assert_eq!(
            specs[1].setting("unclean.leader.election.enable"),
            Some("false")
        );
    }

    #[test]
    fn comma_lists_compare_in_any_order() {
        assert_eq!(normalized("delete, compact"), normalized("compact,delete"));
        assert_ne!(normalized("delete"), normalized("compact"));
    }
}
