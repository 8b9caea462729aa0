//! The account store unavailable under load: the engine keeps acknowledging events (the
//! log holds them), `/readyz` stays ready while the outage is within its bound, the flush
//! lags and catches up once the store answers again, and nothing is lost: the store's rows
//! and a restart from them give every balance exactly.
//!
//! The store is the real embedded one behind a switch that makes every flush fail the way
//! an unreachable CQL node does (`StoreError::Backend`), so the tested part is the worker's
//! handling of an outage, not a stand-in store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use refill_store::{
    AccountStore, AttemptRow, BalanceRow, CheckpointRow, Flush, KvAccountStore, LedgerRow,
    ShardRows, StoreError,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const KEY: &str = "test-key-0123456789";
const CUSTOMERS: usize = 5;

/// The embedded account store with an outage switch on its writes.
struct Switched {
    inner: KvAccountStore<Arc<refill_store::embedded::Embedded>>,
    down: AtomicBool,
    refused: AtomicU64,
}

impl AccountStore for Switched {
    fn flush(&self, flush: &Flush) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(StoreError::Backend(
                "injected outage: no replica answered".into(),
            ));
        }
        self.inner.flush(flush)
    }
    fn load_shard(&self, shard: u32) -> Result<ShardRows, StoreError> {
        self.inner.load_shard(shard)
    }
    fn checkpoint(&self, shard: u32) -> Result<Option<CheckpointRow>, StoreError> {
        self.inner.checkpoint(shard)
    }
    fn balances(&self, customer_id: &str) -> Result<Vec<BalanceRow>, StoreError> {
        self.inner.balances(customer_id)
    }
    fn ledger(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<LedgerRow>, StoreError> {
        self.inner.ledger(customer_id, credit_type, from_seq, limit)
    }
    fn attempts(
        &self,
        customer_id: &str,
        credit_type: &str,
        from_seq: u64,
        limit: usize,
    ) -> Result<Vec<AttemptRow>, StoreError> {
        self.inner
            .attempts(customer_id, credit_type, from_seq, limit)
    }
}

async fn call(
    router: &axum::Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(body.map_or_else(Body::empty, |body| Body::from(body.to_string())))
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("answer");
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn config() -> refill_ingest::engine::EngineConfig {
    refill_ingest::engine::EngineConfig {
        flush_interval_ms: 50,
        flush_attempts_max: 2,
        flush_retry_backoff_ms: 10,
        ..refill_ingest::engine::EngineConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_under_load_loses_nothing_and_the_flush_catches_up() {
    let dir = std::env::temp_dir().join(format!("refill-outage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let embedded = Arc::new(refill_store::embedded::Embedded::open(&dir, 2).expect("embedded"));
    let store = Arc::new(Switched {
        inner: KvAccountStore::new(Arc::clone(&embedded)),
        down: AtomicBool::new(false),
        refused: AtomicU64::new(0),
    });
    let app = refill::app::start_with(
        embedded.clone(),
        embedded.clone(),
        store.clone(),
        2,
        KEY.into(),
        None,
        config(),
    )
    .await
    .expect("engine starts");
    let router = app.router.clone();
    for (path, body) in [
        (
            "/v1/credit-types/api-credits",
            json!({"name": "API credits", "unit_price": {"amount": "0.10", "currency": "USD"}}),
        ),
        (
            "/v1/features/api-call",
            json!({"name": "API call", "unit": {"singular": "call", "plural": "calls"}, "credit_type": "api-credits", "credits_per_unit": 1}),
        ),
    ] {
        let (status, answer) = call(&router, "PUT", path, Some(body)).await;
        assert!(status.is_success(), "{path}: {status} {answer}");
    }
    // The store goes down; producers keep sending (not waiting for the apply).
    store.down.store(true, Ordering::SeqCst);
    let batches = 40;
    for batch in 0..batches {
        let events: Vec<Value> = (0..25)
            .map(|i| {
                let n = batch * 25 + i;
                json!({"id": format!("o{n}"), "customer_id": format!("c{}", n % CUSTOMERS), "feature_id": "api-call", "value": 1})
            })
            .collect();
        let (status, answer) =
            call(&router, "POST", "/v1/events", Some(Value::Array(events))).await;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "acknowledged while the store is down: {answer}"
        );
    }
    // The worker keeps applying from the log: balances move, reads answer from memory.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, view) = call(
            &router,
            "GET",
            "/v1/customers/c0/credits?credit_type=api-credits",
            None,
        )
        .await;
        if view["balance"] == "-200" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "applied during the outage: {view}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next flush meets the outage (the events may all apply before it is due).
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.refused.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "a flush met the outage within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, ready) = call(&router, "GET", "/readyz", None).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "an outage within its bound keeps the shard up: {ready}"
    );
    assert!(
        (0..2).all(|shard| store
            .checkpoint(shard)
            .expect("checkpoint")
            .is_none_or(|row| row.log_next < app.engine.applied_offsets()[shard as usize])),
        "no checkpoint covers what was applied during the outage"
    );
    // The store comes back: the kept flush lands and the checkpoints catch up.
    store.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied = app.engine.applied_offsets();
        let caught_up = (0..2).all(|shard| {
            store
                .checkpoint(shard)
                .expect("checkpoint")
                .is_some_and(|row| row.log_next == applied[shard as usize])
        });
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the flush catches up after the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for customer in 0..CUSTOMERS {
        let rows = store.balances(&format!("c{customer}")).expect("balances");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].balance_micros, -200_000_000,
            "c{customer} in the store"
        );
    }
    app.engine.stop();
    drop(app);
    // A restart from the rows alone gives the same balances.
    let app = refill::app::start_with(
        embedded.clone(),
        embedded.clone(),
        store.clone(),
        2,
        KEY.into(),
        None,
        config(),
    )
    .await
    .expect("engine restarts");
    for customer in 0..CUSTOMERS {
        let (_, view) = call(
            &app.router,
            "GET",
            &format!("/v1/customers/c{customer}/credits?credit_type=api-credits"),
            None,
        )
        .await;
        assert_eq!(
            view["balance"], "-200",
            "c{customer} after the restart: {view}"
        );
    }
    app.engine.stop();
    drop(app);
    drop(embedded);
    let _ = std::fs::remove_dir_all(&dir);
}
