//! Child process of the kill -9 durability test (`tests/it/crash.rs`): writes to an
//! `Embedded` from several threads and prints every acknowledgement on stdout, until the
//! test kills it with SIGKILL. Of no use on its own.
//!
//! Usage: `refill-store-crash-helper DIR ROUND`. Lines printed (only after the call returned,
//! so each one is a durability promise):
//! - `append ROUND WRITER SEQ COUNT PARTITION OFFSET`: records `SEQ..SEQ+COUNT` of that writer
//!   are at `OFFSET..` of `PARTITION` (record bytes: see [`record`]).
//! - `put ROUND I`: key `ROUND/I` is in both crash tables (one batch).
//! - `seen PARTITION END`: a reader saw that end offset (so records below it were readable).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use refill_store::embedded::Embedded;
use refill_store::{Log, Store, Write};

/// Partitions of the crash log.
const PARTITIONS: u32 = 2;
/// The child stops by itself after this long, should the test never kill it.
const RUN_MAX: Duration = Duration::from_secs(60);

/// The bytes of record `seq` of `writer` in `round`: about 100 bytes, its identity readable.
fn record(round: u32, writer: u32, seq: u64) -> Vec<u8> {
    let mut bytes = format!("round {round} writer {writer} seq {seq} ").into_bytes();
    bytes.resize(100, b'.');
    bytes
}

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(round)) = (args.next(), args.next()) else {
        return Err("expected arguments DIR ROUND".to_owned());
    };
    let dir = PathBuf::from(dir);
    let round: u32 = round
        .parse()
        .map_err(|e| format!("expected ROUND as a number, found {round:?}: {e}"))?;
    let store = Embedded::open(&dir, PARTITIONS).map_err(|e| e.to_string())?;
    let out = Mutex::new(std::io::stdout());
    let say = |line: String| {
        let mut out = out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // The test reads these lines; losing stdout means the test is gone, so stop.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(0);
        }
    };
    let started = Instant::now();
    let store = &store;
    let say = &say;
    std::thread::scope(|scope| {
        for writer in 0..PARTITIONS {
            scope.spawn(move || {
                let mut seq = 0u64;
                let mut call = 0u64;
                while started.elapsed() < RUN_MAX {
                    let count = 1 + call % 37;
                    let batch: Vec<Vec<u8>> = (seq..seq + count)
                        .map(|s| record(round, writer, s))
                        .collect();
                    let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
                    match store.append(writer, &refs) {
                        Ok(offset) => say(format!(
                            "append {round} {writer} {seq} {count} {writer} {offset}"
                        )),
                        Err(e) => {
                            eprintln!("append failed: {e}");
                            std::process::exit(2);
                        }
                    }
                    seq += count;
                    call += 1;
                }
            });
        }
        scope.spawn(move || {
            let mut i = 0u64;
            while started.elapsed() < RUN_MAX {
                let key = format!("{round}/{i}").into_bytes();
                let writes = vec![
                    Write::Put {
                        table: "crash_a",
                        key: key.clone(),
                        value: key.clone(),
                    },
                    Write::Put {
                        table: "crash_b",
                        key: key.clone(),
                        value: key,
                    },
                ];
                if let Err(e) = store.write(writes) {
                    eprintln!("write failed: {e}");
                    std::process::exit(2);
                }
                say(format!("put {round} {i}"));
                i += 1;
            }
        });
        scope.spawn(move || {
            let mut seen = [0u64; PARTITIONS as usize];
            while started.elapsed() < RUN_MAX {
                for (partition, last) in (0..PARTITIONS).zip(seen.iter_mut()) {
                    match store.wait_beyond(partition, *last, Duration::from_millis(20)) {
                        Ok(end) if end > *last => {
                            *last = end;
                            say(format!("seen {partition} {end}"));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            eprintln!("wait_beyond failed: {e}");
                            std::process::exit(2);
                        }
                    }
                }
            }
        });
    });
    Ok(())
}
