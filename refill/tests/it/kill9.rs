//! `kill -9` of the real `refill serve` while a client streams acknowledged events: after
//! each restart the client resends everything (acknowledged or not), and at the end every
//! balance is exact: nothing lost, nothing applied twice (invariants 2 and 8).

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const KEY: &str = "test-key-0123456789";
const CUSTOMERS: usize = 7;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

fn start(data: &std::path::Path, port: u16) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refill"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("REFILL_API_KEY", KEY)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("refill serve starts");
    // Ready when it says it is serving (after restore and replay).
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

async fn send(
    client: &reqwest::Client,
    port: u16,
    path: &str,
    body: Value,
) -> Result<reqwest::StatusCode, reqwest::Error> {
    let response = client
        .post(format!("http://127.0.0.1:{port}{path}"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await?;
    Ok(response.status())
}

/// The catalog both tests use: credits at $0.10, one credit per API call.
async fn put_catalog(client: &reqwest::Client, port: u16) {
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
            .put(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("catalog")
            .status();
        assert!(status.is_success(), "{path}: {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_event_and_applies_none_twice() {
    let data = std::env::temp_dir().join(format!("refill-kill9-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let port = free_port();
    let mut server = start(&data, port);
    put_catalog(&client, port).await;
    let batches: Vec<Value> = (0..60)
        .map(|batch| {
            Value::Array(
                (0..50)
                    .map(|i| {
                        let n = batch * 50 + i;
                        json!({"id": format!("e{n}"), "customer_id": format!("c{}", n % CUSTOMERS), "feature_id": "api-call", "value": 1})
                    })
                    .collect(),
            )
        })
        .collect();
    let mut acknowledged = 0;
    for round in 0..4 {
        // Stream until killed at a different point each round; errors after the kill are expected.
        let kill_after = 10 + round * 12;
        for (index, batch) in batches.iter().enumerate() {
            if index == kill_after {
                server.kill().expect("kill -9");
                let _ = server.wait();
                break;
            }
            if let Ok(status) = send(&client, port, "/v1/events", batch.clone()).await {
                assert_eq!(status, reqwest::StatusCode::ACCEPTED);
                acknowledged = acknowledged.max(index + 1);
            }
        }
        server = start(&data, port);
    }
    // Resend everything once more, in sync mode, then check every balance.
    for batch in &batches {
        let status = send(&client, port, "/v1/events?sync=true", batch.clone())
            .await
            .expect("resend");
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    }
    assert!(acknowledged > 0);
    let events = batches.len() * 50;
    for customer in 0..CUSTOMERS {
        let view: Value = client
            .get(format!(
                "http://127.0.0.1:{port}/v1/customers/c{customer}/credits?credit_type=api-credits"
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("credits")
            .json()
            .await
            .expect("json");
        let expected = (0..events).filter(|n| n % CUSTOMERS == customer).count();
        assert_eq!(
            view["consumed_total"],
            json!(expected.to_string()),
            "customer c{customer}: {view}"
        );
        assert_eq!(
            view["balance"],
            json!(format!("-{expected}")),
            "customer c{customer}: {view}"
        );
    }
    server.kill().expect("kill");
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&data);
}

/// `kill -9` of `refill serve` while it flushes 100 k dirty accounts (killed at several
/// points across the flush window, one per round): after each restart (rows + checkpoint +
/// the log after it) and a resend of everything, every balance is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_flush_of_100k_dirty_accounts_loses_nothing() {
    const ACCOUNTS: usize = 100_000;
    const PER_REQUEST: usize = 5_000;
    let data = std::env::temp_dir().join(format!("refill-kill9-flush-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client");
    let port = free_port();
    let mut server = start(&data, port);
    put_catalog(&client, port).await;
    // One event per account, worth 1 to 7 credits; the same ids every round.
    let value_of = |n: usize| n % 7 + 1;
    let requests: Vec<Value> = (0..ACCOUNTS / PER_REQUEST)
        .map(|request| {
            Value::Array(
                (0..PER_REQUEST)
                    .map(|i| {
                        let n = request * PER_REQUEST + i;
                        json!({"id": format!("f{n}"), "customer_id": format!("a{n}"), "feature_id": "api-call", "value": value_of(n)})
                    })
                    .collect(),
            )
        })
        .collect();
    for round in 0..4_u64 {
        for request in &requests {
            let status = send(&client, port, "/v1/events", request.clone())
                .await
                .expect("events");
            assert_eq!(status, reqwest::StatusCode::ACCEPTED);
        }
        // The flush of the 100 k dirty accounts is logged within a second of the first
        // event and takes a while to write: kill at a different point of it each round.
        tokio::time::sleep(Duration::from_millis(700 + round * 350)).await;
        server.kill().expect("kill -9");
        let _ = server.wait();
        server = start(&data, port);
    }
    for request in &requests {
        let status = send(&client, port, "/v1/events?sync=true", request.clone())
            .await
            .expect("resend");
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
    }
    for n in (0..ACCOUNTS).step_by(997).chain([ACCOUNTS - 1]) {
        let view: Value = client
            .get(format!(
                "http://127.0.0.1:{port}/v1/customers/a{n}/credits?credit_type=api-credits"
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("credits")
            .json()
            .await
            .expect("json");
        assert_eq!(
            view["balance"],
            json!(format!("-{}", value_of(n))),
            "account a{n}: {view}"
        );
    }
    server.kill().expect("kill");
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&data);
}
