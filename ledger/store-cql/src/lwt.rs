//! The lightweight-transaction helpers of the recharger: a command id is claimed once
//! (`INSERT ... IF NOT EXISTS`), and the spend reserved in a period moves only by
//! compare-and-set on its version (`UPDATE ... IF version = ?`).
//!
//! Reading an LWT answer: ScyllaDB and Cassandra answer a conditional write with different
//! rows (Cassandra: `[applied]`, plus the current values of the condition's columns when it
//! did not apply, or of the whole row for `IF NOT EXISTS`; ScyllaDB: `[applied]` and the
//! whole row, nulls when there is none). So the answer is read by column name, never as a
//! fixed row shape: `[applied]` must be there, other columns are used when present, and what
//! is missing is read back at `LOCAL_SERIAL`.

use std::collections::HashMap;

use refill_store::StoreError;
use scylla::errors::{DbError, ExecutionError, RequestAttemptError, WriteType};
use scylla::response::query_result::QueryResult;
use scylla::value::{CqlValue, Row};

use crate::{Inner, backend};

/// The answer of [`crate::CqlStore::compare_and_set_spend`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether this call's update applied.
    pub applied: bool,
    /// The row's version after the call: `expected_version + 1` when applied, else the
    /// version that made it fail (0: no row).
    pub current_version: i64,
    /// The spend reserved after the call (minor units): `new_reserved` when applied, else the
    /// current reservation (0: no row).
    pub current_reserved: i64,
}

/// A spend period row, as read at `LOCAL_SERIAL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpendPeriod {
    /// Its version (1 after the first reservation, +1 per applied compare-and-set).
    pub version: i64,
    /// Spend reserved in the period, in the currency's minor unit.
    pub reserved_minor: i64,
}

/// A whole spend period row with the recharger's state, as read at `LOCAL_SERIAL`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpendRow {
    /// Its version (1 after the first reservation, +1 per applied compare-and-set).
    pub version: i64,
    /// Spend reserved in the period, in the currency's minor unit.
    pub reserved_minor: i64,
    /// The recharger's record of the period (empty when written without one).
    pub state: Vec<u8>,
}

/// The primary key of a spend period row.
pub struct SpendKey {
    /// Customer id.
    pub customer: String,
    /// Credit type id.
    pub credit_type: String,
    /// Start of the period (the caller's encoding, e.g. epoch milliseconds).
    pub period_start: i64,
}

/// `INSERT INTO recharge_commands ... IF NOT EXISTS`: whether it applied.
pub async fn insert_if_absent(
    inner: &Inner,
    command_id: String,
    state: Vec<u8>,
) -> Result<bool, StoreError> {
    let statements = inner.statements().await?;
    let what = format!("insert_if_absent of command {command_id:?}");
    let result = inner
        .session
        .execute_unpaged(&statements.command_insert, (command_id.as_str(), state))
        .await
        .map_err(|e| lwt_error(&what, &e))?;
    let (applied, _) = lwt_answer(&what, result)?;
    Ok(applied)
}

/// The state of a command, read at `LOCAL_SERIAL`.
pub async fn command_state(
    inner: &Inner,
    command_id: String,
) -> Result<Option<Vec<u8>>, StoreError> {
    let statements = inner.statements().await?;
    let result = inner
        .session
        .execute_unpaged(&statements.command_get, (command_id.as_str(),))
        .await
        .map_err(backend(format!(
            "command_state: expected to read command {command_id:?} at LOCAL_SERIAL"
        )))?;
    let rows = result
        .into_rows_result()
        .map_err(backend("command_state: expected rows"))?;
    let row = rows
        .maybe_first_row::<(Option<Vec<u8>>,)>()
        .map_err(backend("command_state: expected a (blob) row"))?;
    // A row whose state is null was written without one: an empty state.
    Ok(row.map(|(state,)| state.unwrap_or_default()))
}

/// Compare-and-set of a spend period row on its version.
pub async fn compare_and_set_spend(
    inner: &Inner,
    key: SpendKey,
    expected_version: i64,
    new_reserved: i64,
) -> Result<CasOutcome, StoreError> {
    if expected_version < 0 {
        return Err(StoreError::InvalidRequest(format!(
            "expected a spend period version of 0 (no row yet) or more, found {expected_version}"
        )));
    }
    let new_version = expected_version.checked_add(1).ok_or_else(|| {
        StoreError::InvalidRequest(format!(
            "expected a spend period version below {}, found {expected_version}",
            i64::MAX
        ))
    })?;
    let statements = inner.statements().await?;
    let what = format!(
        "compare_and_set_spend of ({:?}, {:?}, {}) from version {expected_version}",
        key.customer, key.credit_type, key.period_start
    );
    let result = if expected_version == 0 {
        inner
            .session
            .execute_unpaged(
                &statements.spend_insert,
                (
                    key.customer.as_str(),
                    key.credit_type.as_str(),
                    key.period_start,
                    new_reserved,
                    new_version,
                ),
            )
            .await
    } else {
        inner
            .session
            .execute_unpaged(
                &statements.spend_update,
                (
                    new_reserved,
                    new_version,
                    key.customer.as_str(),
                    key.credit_type.as_str(),
                    key.period_start,
                    expected_version,
                ),
            )
            .await
    }
    .map_err(|e| lwt_error(&what, &e))?;
    let (applied, columns) = lwt_answer(&what, result)?;
    if applied {
        return Ok(CasOutcome {
            applied: true,
            current_version: new_version,
            current_reserved: new_reserved,
        });
    }
    let returned = |name: &str| match columns.get(name) {
        Some(Some(CqlValue::BigInt(value))) => Some(*value),
        _ => None,
    };
    if let (Some(version), Some(reserved)) = (returned("version"), returned("reserved_minor")) {
        return Ok(CasOutcome {
            applied: false,
            current_version: version,
            current_reserved: reserved,
        });
    }
    // The answer did not carry the whole row (Cassandra returns only the condition's
    // columns, and nothing when there is no row): read it, linearizably.
    let current = spend_period(inner, &key).await?;
    Ok(CasOutcome {
        applied: false,
        current_version: current.map_or(0, |row| row.version),
        current_reserved: current.map_or(0, |row| row.reserved_minor),
    })
}

/// `UPDATE recharge_commands SET state = ? ... IF state = ?`: whether it applied.
pub async fn replace_command_state(
    inner: &Inner,
    command_id: String,
    expected: Vec<u8>,
    new_state: Vec<u8>,
) -> Result<bool, StoreError> {
    let statements = inner.statements().await?;
    let what = format!("replace_command_state of command {command_id:?}");
    let result = inner
        .session
        .execute_unpaged(
            &statements.command_update,
            (new_state, command_id.as_str(), expected),
        )
        .await
        .map_err(|e| lwt_error(&what, &e))?;
    let (applied, _) = lwt_answer(&what, result)?;
    Ok(applied)
}

/// Compare-and-set of a spend period row on its version, writing the recharger's state
/// with the reservation: whether it applied.
pub async fn compare_and_set_spend_state(
    inner: &Inner,
    key: SpendKey,
    expected_version: i64,
    new_reserved: i64,
    state: Vec<u8>,
) -> Result<bool, StoreError> {
    if expected_version < 0 {
        return Err(StoreError::InvalidRequest(format!(
            "expected a spend period version of 0 (no row yet) or more, found {expected_version}"
        )));
    }
    let new_version = expected_version.checked_add(1).ok_or_else(|| {
        StoreError::InvalidRequest(format!(
            "expected a spend period version below {}, found {expected_version}",
            i64::MAX
        ))
    })?;
    let statements = inner.statements().await?;
    let what = format!(
        "compare_and_set_spend_state of ({:?}, {:?}, {}) from version {expected_version}",
        key.customer, key.credit_type, key.period_start
    );
    let result = if expected_version == 0 {
        inner
            .session
            .execute_unpaged(
                &statements.spend_insert_state,
                (
                    key.customer.as_str(),
                    key.credit_type.as_str(),
                    key.period_start,
                    new_reserved,
                    new_version,
                    state,
                ),
            )
            .await
    } else {
        inner
            .session
            .execute_unpaged(
                &statements.spend_update_state,
                (
                    new_reserved,
                    new_version,
                    state,
                    key.customer.as_str(),
                    key.credit_type.as_str(),
                    key.period_start,
                    expected_version,
                ),
            )
            .await
    }
    .map_err(|e| lwt_error(&what, &e))?;
    let (applied, _) = lwt_answer(&what, result)?;
    Ok(applied)
}

/// A whole spend period row, read at `LOCAL_SERIAL`.
pub async fn spend_row(inner: &Inner, key: &SpendKey) -> Result<Option<SpendRow>, StoreError> {
    let statements = inner.statements().await?;
    let result = inner
        .session
        .execute_unpaged(
            &statements.spend_get_row,
            (
                key.customer.as_str(),
                key.credit_type.as_str(),
                key.period_start,
            ),
        )
        .await
        .map_err(backend(format!(
            "spend_row: expected to read ({:?}, {:?}, {}) at LOCAL_SERIAL",
            key.customer, key.credit_type, key.period_start
        )))?;
    let rows = result
        .into_rows_result()
        .map_err(backend("spend_row: expected rows"))?;
    let row = rows
        .maybe_first_row::<(Option<i64>, Option<i64>, Option<Vec<u8>>)>()
        .map_err(backend("spend_row: expected a (bigint, bigint, blob) row"))?;
    Ok(row.map(|(version, reserved, state)| SpendRow {
        version: version.unwrap_or(0),
        reserved_minor: reserved.unwrap_or(0),
        state: state.unwrap_or_default(),
    }))
}

/// A spend period row, read at `LOCAL_SERIAL`.
pub async fn spend_period(
    inner: &Inner,
    key: &SpendKey,
) -> Result<Option<SpendPeriod>, StoreError> {
    let statements = inner.statements().await?;
    let result = inner
        .session
        .execute_unpaged(
            &statements.spend_get,
            (
                key.customer.as_str(),
                key.credit_type.as_str(),
                key.period_start,
            ),
        )
        .await
        .map_err(backend(format!(
            "spend_period: expected to read ({:?}, {:?}, {}) at LOCAL_SERIAL",
            key.customer, key.credit_type, key.period_start
        )))?;
    let rows = result
        .into_rows_result()
        .map_err(backend("spend_period: expected rows"))?;
    let row = rows
        .maybe_first_row::<(Option<i64>, Option<i64>)>()
        .map_err(backend("spend_period: expected a (bigint, bigint) row"))?;
    Ok(row.map(|(version, reserved)| SpendPeriod {
        version: version.unwrap_or(0),
        reserved_minor: reserved.unwrap_or(0),
    }))
}

/// The `[applied]` flag of a conditional write's answer and its other columns by name.
fn lwt_answer(
    what: &str,
    result: QueryResult,
) -> Result<(bool, HashMap<String, Option<CqlValue>>), StoreError> {
    let rows = result.into_rows_result().map_err(backend(format!(
        "{what}: expected a row with an [applied] column"
    )))?;
    let names: Vec<String> = rows
        .column_specs()
        .iter()
        .map(|spec| spec.name().to_owned())
        .collect();
    let row: Row = rows.first_row().map_err(backend(format!(
        "{what}: expected one row with an [applied] column"
    )))?;
    let columns: HashMap<String, Option<CqlValue>> = names.into_iter().zip(row.columns).collect();
    match columns.get("[applied]") {
        Some(Some(CqlValue::Boolean(applied))) => Ok((*applied, columns)),
        found => Err(StoreError::Backend(format!(
            "{what}: expected a boolean [applied] column in the answer, found {found:?} among \
             columns {:?}",
            columns.keys().collect::<Vec<_>>()
        ))),
    }
}

/// Maps a failed conditional write, saying when its outcome is unknown.
fn lwt_error(what: &str, e: &ExecutionError) -> StoreError {
    let unknown = matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(
            DbError::WriteTimeout {
                write_type: WriteType::Cas,
                ..
            },
            _,
        ))
    ) || matches!(e, ExecutionError::RequestTimeout(_));
    let note = if unknown {
        " (the outcome is unknown: it may still apply; read the row at LOCAL_SERIAL or retry \
         the same compare-and-set before acting on it)"
    } else {
        ""
    };
    StoreError::Backend(format!(
        "{what}: expected the server to decide the conditional write, found: {e}{note}"
    ))
}
