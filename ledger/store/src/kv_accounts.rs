//! The account-state tables over any key-value [`Store`]: the embedded default keeps them in
//! its fjall store keyspace, one key range per table, so `refill serve` with no flags holds
//! the same tables as the CQL store and passes the same conformance body.
//!
//! Keys sort like the CQL primary keys: text parts end in `0x00` (ids never hold it),
//! numbers are big-endian. Values are a small length-prefixed binary encoding (version byte
//! first), written here and nowhere else.

use crate::accounts::{
    AccountStore, AttemptRow, BalanceRow, CheckpointRow, DedupChunkRow, Flush, LedgerRow,
    ShardRows, pick_slot,
};
use crate::{Store, StoreError, Write};

/// `balances`: customer 0 credit_type 0 → [`BalanceRow`].
pub const BALANCES: &str = "balances";
/// `account_state`: shard ‖ handle ‖ slot → version ‖ state.
pub const ACCOUNT_STATE: &str = "account_state";
/// `customer_state`: shard ‖ index ‖ slot → version ‖ customer id ‖ state.
pub const CUSTOMER_STATE: &str = "customer_state";
/// `ledger_entries`: customer 0 credit_type 0 seq → [`LedgerRow`].
pub const LEDGER_ENTRIES: &str = "ledger_entries";
/// `recharge_attempts`: customer 0 credit_type 0 seq → [`AttemptRow`].
pub const RECHARGE_ATTEMPTS: &str = "recharge_attempts";
/// `dedup_chunks`: shard ‖ generation ‖ flush → fingerprints.
pub const DEDUP_CHUNKS: &str = "dedup_chunks";
/// `checkpoints`: shard → [`CheckpointRow`].
pub const CHECKPOINTS: &str = "checkpoints";

/// Encoding version of every value here.
const VALUE_FORMAT: u8 = 1;
/// Rows read per scan call.
const SCAN_PAGE: usize = 4096;
/// Rows of a flush per store write (the checkpoint goes in a write of its own, last).
pub const FLUSH_WRITE_ROWS_MAX: usize = 16_384;

/// The account-state tables over the key-value store `S`.
pub struct KvAccountStore<S> {
    store: S,
    /// Per shard, the dedup generation below which chunks are known to be gone: a flush
    /// looks for chunks to drop only when its checkpoint raises the live minimum above it,
    /// so a flush never reads the live chunks (megabytes each) it is not dropping.
    dropped_below: std::sync::Mutex<std::collections::HashMap<u32, u64>>,
}

impl<S: Store> KvAccountStore<S> {
    /// The tables over `store`.
    pub fn new(store: S) -> Self {
        Self {
            store,
            dropped_below: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Keys of the dedup chunks of `shard` in generations below `generation_min`, read a
    /// page at a time from the oldest and no further than the first live one.
    fn stale_dedup_keys(
        &self,
        shard: u32,
        generation_min: u64,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let prefix = shard.to_be_bytes();
        let live_from = dedup_key(shard, generation_min, 0);
        let mut stale = Vec::new();
        let mut start = prefix.to_vec();
        loop {
            // Small pages: the last one may end in a live chunk's value, read for nothing.
            let page = self.store.scan(DEDUP_CHUNKS, &prefix, &start, 4)?;
            for (key, _) in &page {
                if key.as_slice() >= live_from.as_slice() {
                    return Ok(stale);
                }
                stale.push(key.clone());
            }
            match page.last() {
                Some((key, _)) if page.len() == 4 => {
                    start = key.clone();
                    start.push(0);
                }
                _ => return Ok(stale),
            }
        }
    }

    /// The key-value store underneath.
    pub fn inner(&self) -> &S {
        &self.store
    }

    /// Every entry of `table` under `prefix`, page by page.
    fn scan_all(
        &self,
        table: &'static str,
        prefix: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut start = prefix.to_vec();
        loop {
            let page = self.store.scan(table, prefix, &start, SCAN_PAGE)?;
            for (key, value) in &page {
                visit(key, value)?;
            }
            match page.last() {
                Some((key, _)) if page.len() == SCAN_PAGE => {
                    start = key.clone();
                    start.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

fn text_key(parts: &[&str]) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|part| part.len() + 1).sum::<usize>() + 8);
    for part in parts {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key
}

fn seq_key(customer_id: &str, credit_type: &str, seq: u64) -> Vec<u8> {
    let mut key = text_key(&[customer_id, credit_type]);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn slot_key(shard: u32, index: u32, slot: u8) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key.push(slot);
    key
}

fn dedup_key(shard: u32, generation: u64, flush: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(20);
    key.extend_from_slice(&shard.to_be_bytes());
    key.extend_from_slice(&generation.to_be_bytes());
    key.extend_from_slice(&flush.to_be_bytes());
    key
}

/// A value being written.
struct Encoder(Vec<u8>);

impl Encoder {
    fn new() -> Self {
        Self(vec![VALUE_FORMAT])
    }
    fn u64(mut self, value: u64) -> Self {
        self.0.extend_from_slice(&value.to_be_bytes());
        self
    }
    fn i64(self, value: i64) -> Self {
        self.u64(value.cast_unsigned())
    }
    fn bytes(self, value: &[u8]) -> Self {
        let mut this = self.u64(value.len() as u64);
        this.0.extend_from_slice(value);
        this
    }
    fn text(self, value: &str) -> Self {
        self.bytes(value.as_bytes())
    }
    fn opt_text(self, value: Option<&str>) -> Self {
        match value {
            Some(text) => {
                let mut this = self;
                this.0.push(1);
                this.text(text)
            }
            None => {
                let mut this = self;
                this.0.push(0);
                this
            }
        }
    }
    fn opt_i64(self, value: Option<i64>) -> Self {
        match value {
            Some(number) => {
                let mut this = self;
                this.0.push(1);
                this.i64(number)
            }
            None => {
                let mut this = self;
                this.0.push(0);
                this
            }
        }
    }
    fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// A value being read; every read says which table and key it came from when it fails.
struct Decoder<'a> {
    rest: &'a [u8],
    table: &'static str,
    key: &'a [u8],
}

impl<'a> Decoder<'a> {
    fn new(table: &'static str, key: &'a [u8], value: &'a [u8]) -> Result<Self, StoreError> {
        let mut this = Self {
            rest: value,
            table,
            key,
        };
        let version = this.take(1)?[0];
        if version != VALUE_FORMAT {
            return Err(this.corrupt(&format!(
                "expected value format {VALUE_FORMAT}, found {version}"
            )));
        }
        Ok(this)
    }
    fn corrupt(&self, what: &str) -> StoreError {
        StoreError::Corrupt(format!(
            "table {}, key {}: {what}",
            self.table,
            hex(self.key)
        ))
    }
    fn take(&mut self, bytes: usize) -> Result<&'a [u8], StoreError> {
        if self.rest.len() < bytes {
            return Err(self.corrupt(&format!(
                "expected {bytes} more bytes, found {}",
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(bytes);
        self.rest = tail;
        Ok(head)
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let bytes = self.take(8)?;
        Ok(u64::from_be_bytes(bytes.try_into().expect("8 bytes taken")))
    }
    fn i64(&mut self) -> Result<i64, StoreError> {
        Ok(self.u64()?.cast_signed())
    }
    fn bytes(&mut self) -> Result<&'a [u8], StoreError> {
        let len = self.u64()?;
        let len = usize::try_from(len).map_err(|_| self.corrupt("length beyond memory"))?;
        self.take(len)
    }
    fn text(&mut self) -> Result<String, StoreError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("expected UTF-8 text"))
    }
    fn flag(&mut self) -> Result<bool, StoreError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.corrupt(&format!("expected a flag of 0 or 1, found {other}"))),
        }
    }
    fn opt_text(&mut self) -> Result<Option<String>, StoreError> {
        if self.flag()? {
            self.text().map(Some)
        } else {
            Ok(None)
        }
    }
    fn opt_i64(&mut self) -> Result<Option<i64>, StoreError> {
        if self.flag()? {
            self.i64().map(Some)
        } else {
            Ok(None)
        }
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let value = self.u64()?;
        u32::try_from(value).map_err(|_| self.corrupt(&format!("expected a u32, found {value}")))
    }
    fn end(self) -> Result<(), StoreError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt(&format!("{} bytes left over", self.rest.len())))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

fn encode_balance(row: &BalanceRow) -> Vec<u8> {
    Encoder::new()
        .i64(row.balance_micros)
        .i64(row.overdraft_micros)
        .opt_text(row.auto_recharge_status.as_deref())
        .opt_text(row.paused_reason.as_deref())
        .i64(row.as_of_ms)
        .u64(row.version)
        .u64(u64::from(row.shard))
        .finish()
}

fn decode_balance(key: &[u8], value: &[u8]) -> Result<BalanceRow, StoreError> {
    let (customer_id, credit_type) = split_text_key(BALANCES, key)?;
    let mut decoder = Decoder::new(BALANCES, key, value)?;
    let row = BalanceRow {
        customer_id,
        credit_type,
        balance_micros: decoder.i64()?,
        overdraft_micros: decoder.i64()?,
        auto_recharge_status: decoder.opt_text()?,
        paused_reason: decoder.opt_text()?,
        as_of_ms: decoder.i64()?,
        version: decoder.u64()?,
        shard: decoder.u32()?,
    };
    decoder.end()?;
    Ok(row)
}

/// Splits `customer 0 credit_type 0 [rest]` into its two texts.
fn split_text_key(table: &'static str, key: &[u8]) -> Result<(String, String), StoreError> {
    let corrupt = || {
        StoreError::Corrupt(format!(
            "table {table}, key {}: expected customer 0x00 credit_type 0x00",
            hex(key)
        ))
    };
    let mut parts = key.splitn(3, |&byte| byte == 0);
    let customer = parts.next().ok_or_else(corrupt)?;
    let credit_type = parts.next().ok_or_else(corrupt)?;
    parts.next().ok_or_else(corrupt)?;
    let text = |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| corrupt());
    Ok((text(customer)?, text(credit_type)?))
}

fn encode_entry(row: &LedgerRow) -> Vec<u8> {
    Encoder::new()
        .i64(row.at_ms)
        .text(&row.kind)
        .i64(row.amount_micros)
        .i64(row.balance_after_micros)
        .text(&row.reference)
        .finish()
}

fn decode_entry(key: &[u8], value: &[u8]) -> Result<LedgerRow, StoreError> {
    let (customer_id, credit_type) = split_text_key(LEDGER_ENTRIES, key)?;
    let seq = key_seq(LEDGER_ENTRIES, key)?;
    let mut decoder = Decoder::new(LEDGER_ENTRIES, key, value)?;
    let row = LedgerRow {
        customer_id,
        credit_type,
        seq,
        at_ms: decoder.i64()?,
        kind: decoder.text()?,
        amount_micros: decoder.i64()?,
        balance_after_micros: decoder.i64()?,
        reference: decoder.text()?,
    };
    decoder.end()?;
    Ok(row)
}

fn key_seq(table: &'static str, key: &[u8]) -> Result<u64, StoreError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| {
            StoreError::Corrupt(format!(
                "table {table}, key {}: expected a trailing sequence",
                hex(key)
            ))
        })
}

fn encode_attempt(row: &AttemptRow) -> Vec<u8> {
    Encoder::new()
        .text(&row.command_id)
        .i64(row.at_ms)
        .i64(row.credits_micros)
        .opt_i64(row.cost_minor_units)
        .opt_text(row.currency.as_deref())
        .text(&row.status)
        .opt_text(row.reason.as_deref())
        .finish()
}

fn decode_attempt(key: &[u8], value: &[u8]) -> Result<AttemptRow, StoreError> {
    let (customer_id, credit_type) = split_text_key(RECHARGE_ATTEMPTS, key)?;
    let seq = key_seq(RECHARGE_ATTEMPTS, key)?;
    let mut decoder = Decoder::new(RECHARGE_ATTEMPTS, key, value)?;
    let row = AttemptRow {
        customer_id,
        credit_type,
        seq,
        command_id: decoder.text()?,
        at_ms: decoder.i64()?,
        credits_micros: decoder.i64()?,
        cost_minor_units: decoder.opt_i64()?,
        currency: decoder.opt_text()?,
        status: decoder.text()?,
        reason: decoder.opt_text()?,
    };
    decoder.end()?;
    Ok(row)
}

fn encode_checkpoint(row: &CheckpointRow) -> Vec<u8> {
    let encoder = Encoder::new()
        .u64(row.version)
        .u64(row.log_next)
        .opt_i64(row.sources.map(|(usage, _)| usage.cast_signed()))
        .opt_i64(row.sources.map(|(_, commands)| commands.cast_signed()))
        .i64(row.as_of_ms)
        .u64(u64::from(row.accounts))
        .u64(u64::from(row.customers))
        .u64(row.dedup_generation_min);
    encoder.bytes(&row.meta).finish()
}

fn decode_checkpoint(shard: u32, key: &[u8], value: &[u8]) -> Result<CheckpointRow, StoreError> {
    let mut decoder = Decoder::new(CHECKPOINTS, key, value)?;
    let version = decoder.u64()?;
    let log_next = decoder.u64()?;
    let usage = decoder.opt_i64()?;
    let commands = decoder.opt_i64()?;
    let sources = match (usage, commands) {
        (Some(usage), Some(commands)) => Some((usage.cast_unsigned(), commands.cast_unsigned())),
        (None, None) => None,
        _ => return Err(decoder.corrupt("expected both source offsets or neither")),
    };
    let row = CheckpointRow {
        shard,
        version,
        log_next,
        sources,
        as_of_ms: decoder.i64()?,
        accounts: decoder.u32()?,
        customers: decoder.u32()?,
        dedup_generation_min: decoder.u64()?,
        meta: decoder.bytes()?.to_vec(),
    };
    decoder.end()?;
    Ok(row)
}

/// The two slots of one index: (version, state) of each, if written.
type Slots = [Option<(u64, Vec<u8>)>; 2];

/// Collects slot rows `shard ‖ index ‖ slot → version ‖ [customer id] ‖ state` into one
/// state per index, as a restore at checkpoint `version` needs it.
fn load_slots(
    store: &KvAccountStore<impl Store>,
    table: &'static str,
    shard: u32,
    count: u32,
    version: u64,
    with_id: bool,
) -> Result<Vec<(u8, Vec<u8>)>, StoreError> {
    let mut candidates: Vec<Slots> = (0..count).map(|_| [None, None]).collect();
    store.scan_all(table, &shard.to_be_bytes(), |key, value| {
        let bad_key = || {
            StoreError::Corrupt(format!(
                "table {table}, key {}: expected shard ‖ index ‖ slot (9 bytes)",
                hex(key)
            ))
        };
        if key.len() != 9 {
            return Err(bad_key());
        }
        let index = u32::from_be_bytes(key[4..8].try_into().map_err(|_| bad_key())?);
        let slot = key[8];
        if slot > 1 {
            return Err(bad_key());
        }
        let mut decoder = Decoder::new(table, key, value)?;
        let row_version = decoder.u64()?;
        if with_id {
            decoder.text()?;
        }
        let state = decoder.bytes()?.to_vec();
        decoder.end()?;
        // Rows beyond the checkpoint's counts belong to a flush that did not complete.
        if let Some(cell) = candidates.get_mut(index as usize) {
            cell[slot as usize] = Some((row_version, state));
        }
        Ok(())
    })?;
    candidates
        .into_iter()
        .enumerate()
        .map(|(index, cell)| {
            let slots = cell.iter().enumerate().filter_map(|(slot, held)| {
                held.as_ref()
                    .map(|(row_version, state)| (slot as u8, *row_version, state.as_slice()))
            });
            pick_slot(slots, version)
                .map(|(slot, state)| (slot, state.to_vec()))
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "table {table}, key {}: expected a state at or below flush {version} \
                         for index {index} of shard {shard}, found none",
                        hex(&slot_key(shard, index as u32, 0)[..8])
                    ))
                })
        })
        .collect()
}

impl<S: Store> AccountStore for KvAccountStore<S> {
    fn flush(&self, flush: &Flush) -> Result<(), StoreError> {
        let mut writes = Vec::with_capacity(
            flush.balances.len()
                + flush.accounts.len()
                + flush.customers.len()
                + flush.entries.len()
                + flush.attempts.len()
                + flush.dedup.len()
                + 1,
        );
        for row in &flush.balances {
            writes.push(Write::Put {
                table: BALANCES,
                key: text_key(&[&row.customer_id, &row.credit_type]),
                value: encode_balance(row),
            });
        }
        for row in &flush.accounts {
            writes.push(Write::Put {
                table: ACCOUNT_STATE,
                key: slot_key(row.shard, row.handle, row.slot),
                value: Encoder::new().u64(row.version).bytes(&row.state).finish(),
            });
        }
        for row in &flush.customers {
            writes.push(Write::Put {
                table: CUSTOMER_STATE,
                key: slot_key(row.shard, row.index, row.slot),
                value: Encoder::new()
                    .u64(row.version)
                    .text(&row.customer_id)
                    .bytes(&row.state)
                    .finish(),
            });
        }
        for row in &flush.entries {
            writes.push(Write::Put {
                table: LEDGER_ENTRIES,
                key: seq_key(&row.customer_id, &row.credit_type, row.seq),
                value: encode_entry(row),
            });
        }
        for row in &flush.attempts {
            writes.push(Write::Put {
                table: RECHARGE_ATTEMPTS,
                key: seq_key(&row.customer_id, &row.credit_type, row.seq),
                value: encode_attempt(row),
            });
        }
        for row in &flush.dedup {
            writes.push(Write::Put {
                table: DEDUP_CHUNKS,
                key: dedup_key(row.shard, row.generation, row.flush),
                value: Encoder::new().bytes(&row.fingerprints).finish(),
            });
        }
        // The rows go in bounded writes (each atomic and durable), so a large flush does not
        // hold the store's group commit, and the log appends behind it, for its whole
        // length; what the last complete checkpoint needs is never overwritten by them (the
        // slots, see `accounts`). The stale dedup chunks and the checkpoint go last, in one
        // write: a chunk is dropped only with the checkpoint that no longer needs it.
        let mut last = Vec::new();
        if let Some(checkpoint) = &flush.checkpoint {
            // Chunks of generations the window forgot: the keys below the first live one,
            // looked for only when the live minimum moved past what was dropped before.
            let shard = checkpoint.shard;
            let known = self
                .dropped_below
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&shard)
                .copied();
            if known.is_none_or(|below| checkpoint.dedup_generation_min > below) {
                for key in self.stale_dedup_keys(shard, checkpoint.dedup_generation_min)? {
                    last.push(Write::Delete {
                        table: DEDUP_CHUNKS,
                        key,
                    });
                }
            }
            last.push(Write::Put {
                table: CHECKPOINTS,
                key: shard.to_be_bytes().to_vec(),
                value: encode_checkpoint(checkpoint),
            });
        }
        let mut rows = writes.into_iter().peekable();
        while rows.peek().is_some() {
            self.store
                .write(rows.by_ref().take(FLUSH_WRITE_ROWS_MAX).collect())?;
        }
        self.store.write(last)?;
        if let Some(checkpoint) = &flush.checkpoint {
            self.dropped_below
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(checkpoint.shard, checkpoint.dedup_generation_min);
        }
        Ok(())
    }

    fn load_shard(&self, shard: u32) -> Result<ShardRows, StoreError> {
        let Some(checkpoint) = self.checkpoint(shard)? else {
            return Ok(ShardRows::default());
        };
        let accounts = load_slots(
            self,
            ACCOUNT_STATE,
            shard,
            checkpoint.accounts,
            checkpoint.version,
            false,
        )?;
        let customers = load_slots(
            self,
            CUSTOMER_STATE,
            shard,
            checkpoint.customers,
            checkpoint.version,
            true,
        )?;
        let mut dedup = Vec::new();
        self.scan_all(DEDUP_CHUNKS, &shard.to_be_bytes(), |key, value| {
            if key.len() != 20 {
                return Err(StoreError::Corrupt(format!(
                    "table {DEDUP_CHUNKS}, key {}: expected shard ‖ generation ‖ flush",
                    hex(key)
                )));
            }
            let generation = u64::from_be_bytes(key[4..12].try_into().expect("8 bytes"));
            let flush = u64::from_be_bytes(key[12..20].try_into().expect("8 bytes"));
            if generation < checkpoint.dedup_generation_min || flush > checkpoint.version {
                return Ok(());
            }
            let mut decoder = Decoder::new(DEDUP_CHUNKS, key, value)?;
            let fingerprints = decoder.bytes()?.to_vec();
            decoder.end()?;
            dedup.push(DedupChunkRow {
                shard,
                generation,
                flush,
                fingerprints,
            });
            Ok(())
        })?;
        Ok(ShardRows {
            checkpoint: Some(checkpoint),
            accounts,
            customers,
            dedup,
        })
    }

    fn checkpoint(&self, shard: u32) -> Result<Option<CheckpointRow>, StoreError> {
        let key = shard.to_be_bytes();
        self.store
            .get(CHECKPOINTS, &key)?
            .map(|value| decode_checkpoint(shard, &key, &value))
            .transpose()
    }

    fn balances(&self, customer_id: &str) -> Result<Vec<BalanceRow>, StoreError> {
        let prefix = text_key(&[customer_id]);
        let mut rows = Vec::new();
        self.scan_all(BALANCES, &prefix, |key, value| {
            rows.push(decode_balance(key, value)?);
            Ok(())
        })?;
        Ok(rows)
    }

    fn ledger(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        let prefix = text_key(&[customer_id, credit_type]);
        let start = seq_key(customer_id, credit_type, from_seq);
        self.store
            .scan(LEDGER_ENTRIES, &prefix, &start, limit)?
            .iter()
            .map(|(key, value)| decode_entry(key, value))
            .collect()
    }

    fn attempts(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        let prefix = text_key(&[customer_id, credit_type]);
        let start = seq_key(customer_id, credit_type, from_seq);
        self.store
            .scan(RECHARGE_ATTEMPTS, &prefix, &start, limit)?
            .iter()
            .map(|(key, value)| decode_attempt(key, value))
            .collect()
    }
}
