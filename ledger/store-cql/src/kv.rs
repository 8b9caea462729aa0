//! The `Store` port's three calls as CQL: `write` as one LOGGED BATCH (large values written
//! in chunks first), `get` as one single-row read, `scan` as clustering slices of the
//! buckets a prefix covers, merged in key order. Runs on the store's runtime (`lib.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use refill_store::{Entry, StoreError, Write};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};
use scylla::response::{PagingState, PagingStateResponse};
use scylla::serialize::row::SerializeRow;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;
use tokio::task::JoinSet;

use crate::layout::{self, CHUNK_BYTES, Chunked, INLINE_VALUE_BYTES_MAX, ROOT_BUCKET, Stored};
use crate::{Inner, KNOWN_BUCKETS_MAX, WRITE_BYTES_MAX, backend, next_timestamp};

/// Most statements in one CQL batch (the protocol counts them in 16 bits).
const BATCH_STATEMENTS_MAX: usize = u16::MAX as usize;
/// Chunk writes in flight at once for one large value.
const CHUNK_WRITES_IN_FLIGHT: usize = 4;
/// Reads of a chunked value that may find its chunks replaced under it before giving up.
const CHUNKED_READ_ATTEMPTS: usize = 5;

/// The values of one batch statement.
type Bound = Box<dyn SerializeRow + Send + Sync>;

/// A value above the inline limit, written in chunks before its batch.
struct LargeValue {
    table: &'static str,
    key: Vec<u8>,
    value: Arc<Vec<u8>>,
    layout: Chunked,
}

/// What a batch does to one key, after later writes of the batch overrode earlier ones.
enum Final {
    Put(Vec<u8>),
    Delete,
}

/// Applies `writes` atomically: one LOGGED BATCH with one write timestamp.
pub async fn write(inner: &Inner, writes: Vec<Write>) -> Result<(), StoreError> {
    // A CQL batch applies all its statements at one timestamp, where the later statement
    // does not win: resolve "later write wins" here, one final operation per key.
    let mut finals: HashMap<(&'static str, Vec<u8>), Final> = HashMap::with_capacity(writes.len());
    for write in writes {
        let (table, key, op) = match write {
            Write::Put { table, key, value } => (table, key, Final::Put(value)),
            Write::Delete { table, key } => (table, key, Final::Delete),
        };
        layout::check_key(table, &key)?;
        finals.insert((table, key), op);
    }
    let statements = inner.statements().await?;
    let timestamp = next_timestamp();
    let mut batch = Batch::new(BatchType::Logged);
    let mut values: Vec<Bound> = Vec::with_capacity(finals.len() + 4);
    let mut new_buckets: HashSet<(&'static str, Vec<u8>)> = HashSet::new();
    let mut large: Vec<LargeValue> = Vec::new();
    // Bytes of the batch's values, near enough: the frame and the batchlog mutation that
    // carry them are bounded by the server.
    let mut bytes = 0usize;
    {
        let known = inner
            .known_buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for ((table, key), op) in finals {
            let bucket = layout::bucket(&key).to_vec();
            bytes = bytes.saturating_add(table.len() + bucket.len() + key.len());
            match op {
                Final::Put(value) => {
                    let cell = if value.len() > INLINE_VALUE_BYTES_MAX {
                        let layout = Chunked::of_len(timestamp, value.len())?;
                        batch.append_statement(statements.chunks_drop_older.clone());
                        values.push(Box::new((table, key.clone(), timestamp)));
                        let cell = layout.envelope();
                        large.push(LargeValue {
                            table,
                            key: key.clone(),
                            value: Arc::new(value),
                            layout,
                        });
                        cell
                    } else {
                        layout::inline_envelope(&value)
                    };
                    if bucket.as_slice() != ROOT_BUCKET {
                        let entry = (table, bucket.clone());
                        if !known.contains(&entry) && new_buckets.insert(entry) {
                            batch.append_statement(statements.bucket_put.clone());
                            values.push(Box::new((table, bucket.clone())));
                        }
                    }
                    bytes = bytes.saturating_add(cell.len());
                    batch.append_statement(statements.kv_put.clone());
                    values.push(Box::new((table, bucket, key, cell)));
                }
                Final::Delete => {
                    batch.append_statement(statements.kv_delete.clone());
                    values.push(Box::new((table, bucket, key.clone())));
                    // Drops the chunks of a large value, if it was one (a tombstone otherwise).
                    batch.append_statement(statements.chunks_drop.clone());
                    values.push(Box::new((table, key)));
                }
            }
        }
    }
    if bytes > WRITE_BYTES_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected an atomic write of at most {WRITE_BYTES_MAX} bytes of keys and inline \
             values, found about {bytes} bytes"
        )));
    }
    if values.len() > BATCH_STATEMENTS_MAX {
        return Err(StoreError::InvalidRequest(format!(
            "expected an atomic write of at most {BATCH_STATEMENTS_MAX} CQL statements, found \
             {} (from the writes of one call)",
            values.len()
        )));
    }
    // Chunks first: invisible until the batch points at them, each its own small mutation.
    for value in large {
        write_chunks(inner, statements, value).await?;
    }
    batch.set_timestamp(Some(timestamp));
    batch.set_is_idempotent(true);
    inner
        .session
        .batch(&batch, &values)
        .await
        .map_err(|e| batch_error(values.len(), &e))?;
    if !new_buckets.is_empty() {
        let mut known = inner
            .known_buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if known.len() + new_buckets.len() > KNOWN_BUCKETS_MAX {
            known.clear();
        }
        known.extend(new_buckets);
    }
    Ok(())
}

/// Explains a failed batch, with the server setting to change when it was too large.
fn batch_error(statements: usize, e: &ExecutionError) -> StoreError {
    let too_large = matches!(
        e,
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, message))
            if message.contains("Batch too large")
    );
    let hint = if too_large {
        " (the server refuses multi-partition batches above `batch_size_fail_threshold`: \
         raise it, see ledger/store-cql/README.md)"
    } else {
        ""
    };
    StoreError::Backend(format!(
        "expected the server to apply a logged batch of {statements} statements, found: {e}{hint}"
    ))
}

/// Writes the chunks of one large value, a few at a time, at the batch's timestamp.
async fn write_chunks(
    inner: &Inner,
    statements: &crate::Statements,
    large: LargeValue,
) -> Result<(), StoreError> {
    let LargeValue {
        table,
        key,
        value,
        layout,
    } = large;
    let mut in_flight = JoinSet::new();
    let mut next = 0u32;
    loop {
        while next < layout.chunks && in_flight.len() < CHUNK_WRITES_IN_FLIGHT {
            let statement = statements.chunk_put.clone();
            let session_key = key.clone();
            let value = Arc::clone(&value);
            let chunk = next;
            let session = Arc::clone(&inner.session);
            in_flight.spawn(async move {
                let from = chunk as usize * CHUNK_BYTES;
                let to = (from + CHUNK_BYTES).min(value.len());
                let bytes = value.get(from..to).unwrap_or_default();
                let chunk_index = i32::try_from(chunk).unwrap_or(i32::MAX);
                session
                    .execute_unpaged(
                        &statement,
                        (
                            table,
                            session_key,
                            layout.version,
                            chunk_index,
                            bytes,
                            layout.version,
                        ),
                    )
                    .await
                    .map(|_| ())
                    .map_err(backend(format!(
                        "expected the server to store chunk {chunk} of {} of a {}-byte value in \
                         table {table:?}",
                        layout.chunks, layout.len
                    )))
            });
            next += 1;
        }
        match in_flight.join_next().await {
            None => return Ok(()),
            Some(Ok(Ok(()))) => {}
            Some(Ok(Err(e))) => return Err(e),
            Some(Err(e)) => {
                return Err(StoreError::Backend(format!(
                    "expected a chunk write task to finish, found it failed: {e}"
                )));
            }
        }
    }
}

/// One value.
pub async fn get(
    inner: &Inner,
    table: &'static str,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    layout::check_key(table, key)?;
    let statements = inner.statements().await?;
    let bucket = layout::bucket(key);
    for _ in 0..CHUNKED_READ_ATTEMPTS {
        let result = inner
            .session
            .execute_unpaged(&statements.kv_get, (table, bucket, key))
            .await
            .map_err(backend(format!(
                "get: expected to read key {key:?} of table {table:?}"
            )))?;
        let rows = result
            .into_rows_result()
            .map_err(backend("get: expected rows from the kv read"))?;
        let Some((cell,)) = rows
            .maybe_first_row::<(Vec<u8>,)>()
            .map_err(backend("get: expected a (blob) row from the kv read"))?
        else {
            return Ok(None);
        };
        match layout::decode_envelope(table, key, cell)? {
            Stored::Inline(value) => return Ok(Some(value)),
            Stored::Chunked(layout) => {
                if let Some(value) = read_chunks(inner, table, key, layout).await? {
                    return Ok(Some(value));
                }
                // Chunks gone: a concurrent write replaced the value; read it again.
            }
        }
    }
    Err(StoreError::Corrupt(format!(
        "expected the chunks of the large value of key {key:?} in table {table:?}, found them \
         missing in {CHUNKED_READ_ATTEMPTS} reads in a row"
    )))
}

/// The value of a chunked layout, or `None` when its chunks are (partly) gone, which a
/// concurrent overwrite or delete of the key causes.
async fn read_chunks(
    inner: &Inner,
    table: &'static str,
    key: &[u8],
    layout: Chunked,
) -> Result<Option<Vec<u8>>, StoreError> {
    let statements = inner.statements().await?;
    let capacity = usize::try_from(layout.len).unwrap_or(0);
    let mut value: Vec<u8> = Vec::with_capacity(capacity);
    let mut expected_chunk: i32 = 0;
    let rows: Vec<(i32, Vec<u8>)> = select_pages(
        inner,
        &statements.chunks_get,
        (table, key, layout.version),
        usize::MAX,
        "the chunks of a large value",
    )
    .await?;
    for (chunk, bytes) in rows {
        if chunk != expected_chunk {
            return Ok(None);
        }
        value.extend_from_slice(&bytes);
        expected_chunk += 1;
    }
    let complete = u32::try_from(expected_chunk).is_ok_and(|n| n == layout.chunks);
    if !complete {
        return Ok(None);
    }
    if value.len() as u64 != layout.len {
        return Err(StoreError::Corrupt(format!(
            "expected {} bytes in the {} chunks of key {key:?} in table {table:?}, found {}",
            layout.len,
            layout.chunks,
            value.len()
        )));
    }
    Ok(Some(value))
}

/// Up to `max` entries of `table` whose key starts with `prefix`, from `start` on.
pub async fn scan(
    inner: &Inner,
    table: &'static str,
    prefix: &[u8],
    start: &[u8],
    max: usize,
) -> Result<Vec<Entry>, StoreError> {
    layout::check_key(table, prefix)?;
    layout::check_key(table, start)?;
    let Some((lower, upper)) = layout::scan_range(prefix, start) else {
        return Ok(Vec::new());
    };
    let upper = upper.as_deref();
    let cells = if layout::prefix_has_one_bucket(prefix) {
        slice(inner, table, layout::bucket(prefix), &lower, upper, max).await?
    } else {
        // Keys without a zero byte live in the root partition, the others in their buckets:
        // take the first `max` of each side and merge.
        let root = slice(inner, table, ROOT_BUCKET, &lower, upper, max).await?;
        let mut bucketed: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let statements = inner.statements().await?;
        let first_bucket = layout::first_bucket_at_or_after(&lower);
        let mut paging = PagingState::start();
        'buckets: loop {
            let (result, next) = match upper {
                Some(upper) => {
                    inner
                        .session
                        .execute_single_page(
                            &statements.buckets_range,
                            (table, first_bucket, upper),
                            paging,
                        )
                        .await
                }
                None => {
                    inner
                        .session
                        .execute_single_page(
                            &statements.buckets_range_open,
                            (table, first_bucket),
                            paging,
                        )
                        .await
                }
            }
            .map_err(backend(format!(
                "scan: expected to read the bucket directory of table {table:?}"
            )))?;
            let rows = result
                .into_rows_result()
                .map_err(backend("scan: expected rows from the bucket directory"))?;
            let buckets = rows.rows::<(Vec<u8>,)>().map_err(backend(
                "scan: expected (blob) rows from the bucket directory",
            ))?;
            for row in buckets {
                let (bucket,) = row.map_err(backend(
                    "scan: expected a (blob) row from the bucket directory",
                ))?;
                let root_full_before = root.len() >= max
                    && root
                        .last()
                        .is_some_and(|(last, _)| bucket.as_slice() > last.as_slice());
                if bucketed.len() >= max || root_full_before {
                    // Every key of this bucket and the next sorts after `max` keys already
                    // found.
                    break 'buckets;
                }
                let want = max - bucketed.len();
                bucketed.extend(slice(inner, table, &bucket, &lower, upper, want).await?);
            }
            match next {
                PagingStateResponse::HasMorePages { state } => paging = state,
                PagingStateResponse::NoMorePages => break,
            }
        }
        merge(root, bucketed, max)
    };
    let mut entries = Vec::with_capacity(cells.len());
    for (key, cell) in cells {
        let value = match layout::decode_envelope(table, &key, cell)? {
            Stored::Inline(value) => value,
            Stored::Chunked(layout) => match read_chunks(inner, table, &key, layout).await? {
                Some(value) => value,
                // Replaced while scanning: read its current value (it may be gone).
                None => match get(inner, table, &key).await? {
                    Some(value) => value,
                    None => continue,
                },
            },
        };
        entries.push((key, value));
    }
    Ok(entries)
}

/// Up to `max` (key, value cell) rows of one bucket with keys in `[lower, upper)`, in order.
async fn slice(
    inner: &Inner,
    table: &'static str,
    bucket: &[u8],
    lower: &[u8],
    upper: Option<&[u8]>,
    max: usize,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
    let statements = inner.statements().await?;
    let limit = i32::try_from(max).unwrap_or(i32::MAX);
    let what = "a slice of the kv table";
    match upper {
        Some(upper) => {
            select_pages(
                inner,
                &statements.kv_range,
                (table, bucket, lower, upper, limit),
                max,
                what,
            )
            .await
        }
        None => {
            select_pages(
                inner,
                &statements.kv_range_open,
                (table, bucket, lower, limit),
                max,
                what,
            )
            .await
        }
    }
}

/// Up to `max` rows of `statement`, page by page.
async fn select_pages<V, R>(
    inner: &Inner,
    statement: &PreparedStatement,
    values: V,
    max: usize,
    what: &str,
) -> Result<Vec<R>, StoreError>
where
    V: SerializeRow,
    R: for<'frame, 'metadata> scylla::deserialize::row::DeserializeRow<'frame, 'metadata>,
{
    let mut out = Vec::new();
    let mut paging = PagingState::start();
    loop {
        let (result, next) = inner
            .session
            .execute_single_page(statement, &values, paging)
            .await
            .map_err(backend(format!("expected to read {what}")))?;
        let rows = result
            .into_rows_result()
            .map_err(backend(format!("expected rows when reading {what}")))?;
        for row in rows.rows::<R>().map_err(backend(format!(
            "expected rows of the right types when reading {what}"
        )))? {
            if out.len() >= max {
                return Ok(out);
            }
            out.push(row.map_err(backend(format!("expected a readable row of {what}")))?);
        }
        match next {
            PagingStateResponse::HasMorePages { state } if out.len() < max => paging = state,
            _ => return Ok(out),
        }
    }
}

/// The first `max` rows of two key-ordered lists with distinct keys, in key order.
fn merge<T>(a: Vec<(Vec<u8>, T)>, b: Vec<(Vec<u8>, T)>, max: usize) -> Vec<(Vec<u8>, T)> {
    let mut out = Vec::with_capacity(max.min(a.len() + b.len()));
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    while out.len() < max {
        let take_a = match (a.peek(), b.peek()) {
            (Some((ka, _)), Some((kb, _))) => ka < kb,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_a { a.next() } else { b.next() };
        if let Some(row) = next {
            out.push(row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::merge;

    #[test]
    fn merge_keeps_order_and_max() {
        let a = vec![(b"a".to_vec(), 1), (b"c".to_vec(), 3)];
        let b = vec![(b"b".to_vec(), 2), (b"d".to_vec(), 4)];
        let keys: Vec<Vec<u8>> = merge(a.clone(), b.clone(), 10)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()]
        );
        assert_eq!(merge(a, b, 3).len(), 3);
    }
}
