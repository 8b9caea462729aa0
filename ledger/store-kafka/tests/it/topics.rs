//! `apply_topics` against the real broker: it creates what the file lists, leaves matching
//! topics alone, and reports every difference of an existing topic without changing it;
//! the project's own `deploy/kafka/topics.toml` applies cleanly (under test names).

use std::path::{Path, PathBuf};

use refill_store_kafka::{TopicAction, TopicDifference, apply_topics};

use crate::{Topics, broker, ok};

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    ok("write topics file", std::fs::write(&path, text));
    path
}

#[test]
fn apply_creates_then_matches_then_reports_differences() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let dir = ok("temp dir", tempfile::tempdir());
    let (a, b) = (topics.fresh("apply-a"), topics.fresh("apply-b"));
    let file = |partitions: u32, retention: u64| {
        format!(
            "[[topic]]\nname = \"{a}\"\npartitions = {partitions}\nreplication_factor = 3\n\
             [topic.config]\n\"cleanup.policy\" = \"delete\"\n\"retention.ms\" = {retention}\n\
             \"min.insync.replicas\" = 2\n\
             [[topic]]\nname = \"{b}\"\npartitions_of = \"{a}\"\nreplication_factor = 1\n"
        )
    };
    let first = write(dir.path(), "first.toml", &file(2, 3_600_000));
    let report = ok("first apply", apply_topics(&bootstrap, &first));
    println!("{report}");
    for name in [&a, &b] {
        let outcome = report
            .topic(name)
            .unwrap_or_else(|| panic!("expected {name} in the report"));
        assert_eq!(
            outcome.action,
            TopicAction::Created,
            "expected {name} created"
        );
    }
    let notes = &report
        .topic(&a)
        .map(|o| o.notes.clone())
        .unwrap_or_default();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("replication_factor 3 asked")),
        "expected a note on the replication factor capped to the one broker, found {notes:?}"
    );

    let again = ok("second apply", apply_topics(&bootstrap, &first));
    assert!(
        again.is_clean(),
        "expected the same file to match, found:\n{again}"
    );
    for name in [&a, &b] {
        assert_eq!(
            again.topic(name).map(|o| &o.action),
            Some(&TopicAction::Unchanged),
            "expected {name} unchanged"
        );
    }

    let changed = write(dir.path(), "changed.toml", &file(4, 7_200_000));
    let report = ok(
        "apply of a changed file",
        apply_topics(&bootstrap, &changed),
    );
    println!("{report}");
    assert!(!report.is_clean(), "expected differences reported");
    let differences = match report.topic(&a).map(|o| &o.action) {
        Some(TopicAction::Differs(d)) => d.clone(),
        other => panic!("expected {a} to differ, found {other:?}"),
    };
    assert_eq!(
        differences,
        [
            TopicDifference {
                setting: "partitions".into(),
                expected: "4".into(),
                found: "2".into()
            },
            TopicDifference {
                setting: "retention.ms".into(),
                expected: "7200000".into(),
                found: "3600000".into()
            },
        ],
        "expected the partition count and the retention reported"
    );
    // b asks for a's count through partitions_of: 4 now, 2 on the cluster.
    match report.topic(&b).map(|o| &o.action) {
        Some(TopicAction::Differs(d)) => assert!(
            d.iter()
                .any(|d| d.setting == "partitions" && d.expected == "4" && d.found == "2"),
            "expected b's partition count reported, found {d:?}"
        ),
        other => panic!("expected {b} to differ, found {other:?}"),
    }
    let unchanged = ok("apply of the first file", apply_topics(&bootstrap, &first));
    assert!(
        unchanged.is_clean(),
        "expected nothing changed by the report, found:\n{unchanged}"
    );
}

#[test]
fn the_project_topics_file_applies_to_a_real_broker() {
    let Some(bootstrap) = broker() else { return };
    let topics = Topics::new(&bootstrap);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kafka/topics.toml");
    let text = ok(
        "read deploy/kafka/topics.toml",
        std::fs::read_to_string(&path),
    );
    // Same settings under fresh names, so the shared broker's real topics are left alone.
    let prefix = topics.fresh("contract");
    let renamed = text.replace("\"refill.", &format!("\"{prefix}."));
    topics.adopt(
        [
            "usage",
            "usage.dlq",
            "recharge-commands",
            "account-commands",
            "journal",
        ]
        .map(|t| format!("{prefix}.{t}")),
    );
    let dir = ok("temp dir", tempfile::tempdir());
    let copy = write(dir.path(), "topics.toml", &renamed);
    let report = ok("apply", apply_topics(&bootstrap, &copy));
    println!("{report}");
    assert_eq!(
        report.topics.len(),
        5,
        "expected the four topics of the contract and the journal"
    );
    assert!(
        report
            .topics
            .iter()
            .all(|t| t.action == TopicAction::Created),
        "expected all five created, found:\n{report}"
    );
    let again = ok("apply again", apply_topics(&bootstrap, &copy));
    assert!(
        again.is_clean(),
        "expected the applied file to match itself, found:\n{again}"
    );
}

#[test]
fn apply_names_a_missing_file() {
    let Some(bootstrap) = broker() else { return };
    match apply_topics(&bootstrap, Path::new("/nonexistent/topics.toml")) {
        Err(e) => assert!(
            e.to_string().contains("/nonexistent/topics.toml"),
            "expected the error to name the file, found {e}"
        ),
        Ok(report) => panic!("expected an error for a missing file, found:\n{report}"),
    }
}
