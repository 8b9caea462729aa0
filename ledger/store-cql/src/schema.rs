//! The CQL schema and how `migrate` applies it: the template in `deploy/cql/schema.cql`
//! (compiled in), its placeholders, the replication setting, and the choice between the
//! ScyllaDB and Cassandra keyspace options (tablets off on ScyllaDB, since LWT does not run
//! on tablets; Cassandra refuses the option).

use refill_store::StoreError;

/// The schema template (see the file for its placeholders).
pub const SCHEMA_TEMPLATE: &str = include_str!("../../../deploy/cql/schema.cql");

/// The keyspace option a tablet-aware ScyllaDB needs for LWT.
pub const SCYLLA_KEYSPACE_OPTIONS: &str = " AND tablets = {'enabled': false}";

/// Longest keyspace name the servers take.
const KEYSPACE_BYTES_MAX: usize = 48;

/// How the keyspace is replicated when `migrate` creates it (an existing keyspace keeps its
/// replication: change it with `ALTER KEYSPACE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Replication {
    /// `SimpleStrategy`: one ring, no datacenter awareness. For one local node (factor 1).
    Simple {
        /// Copies of each row.
        replication_factor: u32,
    },
    /// `NetworkTopologyStrategy`: replicas per datacenter. For production (3 per datacenter,
    /// so that `LOCAL_QUORUM` and `LOCAL_SERIAL` survive one replica down).
    NetworkTopology {
        /// (datacenter name, copies of each row in it).
        datacenters: Vec<(String, u32)>,
    },
}

impl Default for Replication {
    /// One copy, `SimpleStrategy`: the local single-node server of `deploy/local`.
    fn default() -> Self {
        Self::Simple {
            replication_factor: 1,
        }
    }
}

impl Replication {
    /// The CQL replication map.
    pub fn to_cql(&self) -> Result<String, StoreError> {
        match self {
            Self::Simple { replication_factor } => {
                if *replication_factor == 0 {
                    return Err(StoreError::InvalidRequest(
                        "expected a replication factor of at least 1, found 0".into(),
                    ));
                }
                Ok(format!(
                    "{{'class': 'SimpleStrategy', 'replication_factor': {replication_factor}}}"
                ))
            }
            Self::NetworkTopology { datacenters } => {
                if datacenters.is_empty() {
                    return Err(StoreError::InvalidRequest(
                        "expected at least one datacenter for NetworkTopologyStrategy, found none"
                            .into(),
                    ));
                }
                let mut map = String::from("{'class': 'NetworkTopologyStrategy'");
                for (name, factor) in datacenters {
                    let plain = !name.is_empty()
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
                    if !plain {
                        return Err(StoreError::InvalidRequest(format!(
                            "expected a datacenter name of letters, digits, '_', '-' or '.', \
                             found {name:?}"
                        )));
                    }
                    if *factor == 0 {
                        return Err(StoreError::InvalidRequest(format!(
                            "expected a replication factor of at least 1 for datacenter \
                             {name:?}, found 0"
                        )));
                    }
                    map.push_str(&format!(", '{name}': {factor}"));
                }
                map.push('}');
                Ok(map)
            }
        }
    }
}

/// Checks a keyspace name: an unquoted CQL identifier, lowercase (unquoted names are folded
/// to lowercase by the server, so a mixed-case name would name another keyspace).
pub fn check_keyspace(keyspace: &str) -> Result<(), StoreError> {
    let mut bytes = keyspace.bytes();
    let valid = keyspace.len() <= KEYSPACE_BYTES_MAX
        && bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidRequest(format!(
            "expected a keyspace name of 1 to {KEYSPACE_BYTES_MAX} lowercase letters, digits \
             or '_', starting with a letter, found {keyspace:?}"
        )))
    }
}

/// The schema's statements for `keyspace`, with the placeholders filled.
pub fn statements(
    keyspace: &str,
    replication: &Replication,
    keyspace_options: &str,
) -> Result<Vec<String>, StoreError> {
    check_keyspace(keyspace)?;
    let replication = replication.to_cql()?;
    let text: String = SCHEMA_TEMPLATE
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    let rendered = text
        .replace("{{keyspace}}", keyspace)
        .replace("{{replication}}", &replication)
        .replace("{{keyspace_options}}", keyspace_options);
    if let Some(at) = rendered.find("{{") {
        return Err(StoreError::InvalidRequest(format!(
            "expected every placeholder of deploy/cql/schema.cql filled, found one left at {:?}",
            rendered[at..].chars().take(40).collect::<String>()
        )));
    }
    Ok(rendered
        .split(";\n")
        .map(|statement| statement.trim().trim_end_matches(';').trim().to_owned())
        .filter(|statement| !statement.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_renders_every_table() {
        let statements =
            statements("refill", &Replication::default(), "").expect("the template renders");
        assert_eq!(statements.len(), 14, "{statements:#?}");
        assert!(statements[0].starts_with("CREATE KEYSPACE IF NOT EXISTS refill"));
        assert!(statements[0].contains("'SimpleStrategy', 'replication_factor': 1}"));
        for table in [
            "kv",
            "kv_buckets",
            "kv_chunks",
            "recharge_commands",
            "spend_periods",
            "balances",
            "ledger_entries",
            "recharge_attempts",
            "account_state",
            "customer_state",
            "dedup_chunks",
            "dedup_generations",
            "checkpoints",
        ] {
            let head = format!("CREATE TABLE IF NOT EXISTS refill.{table} (");
            assert!(
                statements.iter().any(|s| s.starts_with(&head)),
                "expected {head}"
            );
        }
        assert!(statements.iter().all(|s| !s.contains(';')));
    }

    #[test]
    fn scylla_options_follow_the_replication() {
        let replication = Replication::NetworkTopology {
            datacenters: vec![("dc1".into(), 3), ("dc-2".into(), 3)],
        };
        let statements =
            statements("refill", &replication, SCYLLA_KEYSPACE_OPTIONS).expect("renders");
        assert!(statements[0].ends_with(
            "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc-2': 3} AND tablets = {'enabled': false}"
        ));
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "Refill",
            "1refill",
            "re-fill",
            "refill;drop",
            &"a".repeat(49),
        ] {
            assert!(check_keyspace(bad).is_err(), "{bad:?}");
        }
        assert!(check_keyspace("refill_test_123_4").is_ok());
        let quote = Replication::NetworkTopology {
            datacenters: vec![("dc1'".into(), 3)],
        };
        assert!(quote.to_cql().is_err());
    }
}
