//! `refill replay --verify` on the embedded default: after a small workload through the
//! in-process engine it finds the store equal to the log; after one balance row is changed
//! behind Refill's back it exits 1 naming exactly that customer; bad input exits 2 and
//! writes nothing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use refill_store::embedded::Embedded;
use refill_store::{AccountStore, Flush, KvAccountStore};
use serde_json::{Value, json};

const KEY: &str = "test-key-0123456789";

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "refill-replay-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn call(router: &axum::Router, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, answer) = crate::store_outage::call(router, method, path, body).await;
    assert!(status.is_success(), "{method} {path}: {status} {answer}");
    answer
}

/// Waits (with a deadline) until the customer's credits view satisfies `done`.
async fn credits_until(router: &axum::Router, customer: &str, done: impl Fn(&Value) -> bool) {
    let path = format!("/v1/customers/{customer}/credits");
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if done(&call(router, "GET", &path, None).await) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    waited.unwrap_or_else(|_| panic!("{customer}'s credits never reached the expected state"));
}

async fn usage(router: &axum::Router, customer: &str, from: usize, count: usize) {
    let events: Vec<Value> = (from..from + count)
        .map(|i| json!({"id": format!("{customer}-{i}"), "customer_id": customer, "feature_id": "api-call", "value": 1}))
        .collect();
    call(
        router,
        "POST",
        "/v1/events?sync=true",
        Some(Value::Array(events)),
    )
    .await;
}

/// The worked example's catalog, a customer whose recharge succeeds and one whose card is
/// declined (paused), duplicates, and a few more customers with usage only; then a stop (the
/// last flush). Runs on its own runtime so that every handle on the store is gone after.
fn workload(data: &Path) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let app = refill::app::start(data, 2, KEY.into(), None)
            .await
            .expect("engine starts");
        let router = &app.router;
        call(router, "PUT", "/v1/credit-types/api-credits", Some(json!({"name": "API credits", "unit_price": {"amount": "0.10", "currency": "USD"}}))).await;
        call(router, "PUT", "/v1/features/api-call", Some(json!({"name": "API call", "unit": {"singular": "call", "plural": "calls"}, "credit_type": "api-credits", "credits_per_unit": 1}))).await;
        for (customer, method) in [
            ("acme", "pm_card_visa"),
            ("bob", "pm_card_chargeDeclined"),
            ("carol", "pm_card_visa"),
            ("dave", "pm_card_visa"),
        ] {
            call(router, "PUT", &format!("/v1/customers/{customer}"), Some(json!({"name": customer, "payment_method": method}))).await;
            call(router, "POST", &format!("/v1/customers/{customer}/grants"), Some(json!({"credit_type": "api-credits", "amount": 50, "grant_type": "paid", "idempotency_key": "plan"}))).await;
        }
        for customer in ["acme", "bob"] {
            call(router, "PUT", &format!("/v1/customers/{customer}/auto-recharge"), Some(json!({"credit_type": "api-credits", "enabled": true, "threshold": 20, "target_balance": 50,
                   "spend_limit": {"amount": "500", "currency": "USD"}, "spend_limit_reset": "month"}))).await;
            usage(router, customer, 0, 31).await;
        }
        usage(router, "carol", 0, 7).await;
        usage(router, "dave", 0, 60).await;
        credits_until(router, "acme", |view| view["balance"] == "50").await;
        credits_until(router, "bob", |view| view["auto_recharge"]["status"] == "paused").await;
        // Duplicates: applied once.
        usage(router, "carol", 0, 7).await;
        let engine = app.engine.clone();
        tokio::task::spawn_blocking(move || engine.stop())
            .await
            .expect("stop");
    });
    drop(runtime);
}

/// Runs the `refill replay` binary; returns its exit code, the JSON of its last stdout line
/// and its stderr.
fn replay(args: &[&str]) -> (i32, Value, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_refill"))
        .arg("replay")
        .args(args)
        .output()
        .expect("refill replay runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json = stdout
        .lines()
        .last()
        .and_then(|line| serde_json::from_str(line).ok())
        .unwrap_or(Value::Null);
    (
        output.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn verify_passes_after_a_workload_and_names_the_one_balance_changed_behind_its_back() {
    let data = TempDir::new("verify");
    workload(&data.0);
    let dir = data.0.to_str().expect("utf-8 path");

    let (code, report, stderr) = replay(&["--data", dir, "--verify", "--json"]);
    assert_eq!(code, 0, "verify passes: {report} {stderr}");
    assert_eq!(report["verified"], true);
    assert_eq!(report["differences"]["count"], 0);
    // 31 + 31 + 7 + 60 events applied, the 7 again as duplicates; acme's recharge issued,
    // and bob's (declined) too.
    assert_eq!(report["total"]["events_applied"], 129, "{report}");
    assert_eq!(report["total"]["events_duplicate"], 7, "{report}");
    assert_eq!(report["total"]["recharge_commands"], 2, "{report}");
    assert_eq!(report["total"]["customers"], 4, "{report}");

    // Acme's balance row, changed behind Refill's back: one credit more.
    {
        let embedded = Embedded::open(&data.0.join("db"), 2).expect("store opens");
        let accounts = KvAccountStore::new(embedded);
        let mut rows = accounts.balances("acme").expect("acme's balances");
        assert_eq!(rows.len(), 1);
        rows[0].balance_micros += 1_000_000;
        accounts
            .flush(&Flush {
                balances: rows,
                ..Flush::default()
            })
            .expect("tampered row written");
    }
    let (code, report, stderr) = replay(&["--data", dir, "--verify", "--json"]);
    assert_eq!(code, 1, "verify fails: {report} {stderr}");
    assert_eq!(report["differences"]["count"], 1, "{report}");
    let difference = &report["differences"]["shown"][0];
    assert_eq!(difference["customer"], "acme");
    assert_eq!(difference["credit_type"], "api-credits");
    assert_eq!(difference["what"], "balance");
    assert!(
        difference["store"]
            .as_str()
            .is_some_and(|text| text.starts_with("balance 51 ")),
        "{difference}"
    );
    assert!(
        difference["log"]
            .as_str()
            .is_some_and(|text| text.starts_with("balance 50 ")),
        "{difference}"
    );

    // Without --verify it only rebuilds: exit 0, and the table names the totals.
    let output = Command::new(env!("CARGO_BIN_EXE_refill"))
        .args(["replay", "--data", dir])
        .output()
        .expect("refill replay runs");
    assert_eq!(output.status.code(), Some(0));
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.lines().any(|line| line.starts_with("total")),
        "{table}"
    );
}

#[test]
fn bad_data_folders_exit_2_with_a_message_and_write_nothing() {
    let empty = TempDir::new("empty");
    let missing = empty.0.join("no-such-folder");
    let (code, _, stderr) = replay(&["--data", missing.to_str().expect("utf-8"), "--verify"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no data folder"), "{stderr}");
    assert!(!missing.exists(), "nothing created");

    // A folder of another format: a `db` folder that is no database.
    std::fs::create_dir_all(empty.0.join("db")).expect("db folder");
    std::fs::write(empty.0.join("db").join("notes.txt"), "not refill").expect("file");
    let (code, _, stderr) = replay(&["--data", empty.0.to_str().expect("utf-8"), "--verify"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("not a Refill data folder"), "{stderr}");
    let files: Vec<_> = std::fs::read_dir(empty.0.join("db"))
        .expect("db folder")
        .collect();
    assert_eq!(files.len(), 1, "nothing written in the folder");
}

/// `refill serve` started on `data`, ready once it says it is serving.
fn serve(data: &Path, port: u16) -> std::process::Child {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_refill"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        // Flushes every 10 ms, so the kills land before, during and after checkpoints.
        .args(["--flush-interval-ms", "10"])
        .env("REFILL_API_KEY", KEY)
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("refill serve starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("serving on") => break,
            Some(Ok(_)) => continue,
            _ => panic!("refill serve exited before serving"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

/// After a stream cut by `kill -9` three times (each restart restores from the rows and
/// replays the log after the checkpoint) and a last `kill -9`, the rebuild from genesis
/// gives exactly what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_passes_after_kill_9_restarts() {
    let data = TempDir::new("kill9");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let mut server = serve(&data.0, port);
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
        let status = client
            .put(format!("{base}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("catalog")
            .status();
        assert!(status.is_success(), "{path}: {status}");
    }
    let batches: Vec<Value> = (0..40)
        .map(|batch| {
            Value::Array(
                (0..50)
                    .map(|i| {
                        let n = batch * 50 + i;
                        json!({"id": format!("e{n}"), "customer_id": format!("c{}", n % 5), "feature_id": "api-call", "value": 1})
                    })
                    .collect(),
            )
        })
        .collect();
    for round in 0..3 {
        let kill_after = 8 + round * 10;
        for (index, batch) in batches.iter().enumerate() {
            if index == kill_after {
                break;
            }
            // Errors are not expected before the kill; the resend below covers any.
            let _ = client
                .post(format!("{base}/v1/events"))
                .bearer_auth(KEY)
                .json(batch)
                .send()
                .await;
        }
        server.kill().expect("kill -9");
        let _ = server.wait();
        server = serve(&data.0, port);
    }
    for batch in &batches {
        let status = client
            .post(format!("{base}/v1/events?sync=true"))
            .bearer_auth(KEY)
            .json(batch)
            .send()
            .await
            .expect("resend")
            .status();
        assert!(status.is_success(), "{status}");
    }
    server.kill().expect("kill -9");
    let _ = server.wait();

    let dir = data.0.to_str().expect("utf-8 path").to_owned();
    let (code, report, stderr) =
        tokio::task::spawn_blocking(move || replay(&["--data", &dir, "--verify", "--json"]))
            .await
            .expect("replay");
    assert_eq!(code, 0, "verify passes: {report} {stderr}");
    assert_eq!(report["total"]["events_applied"], 2_000, "{report}");
    // Something was compared: every shard that took events has a checkpoint.
    let shards = report["shards"].as_array().expect("shards");
    assert!(
        shards
            .iter()
            .filter(|shard| shard["events_applied"] != 0)
            .all(|shard| shard["checkpoint_log_next"].is_u64()),
        "{report}"
    );
}
