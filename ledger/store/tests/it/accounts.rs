//! `KvAccountStore` over `Embedded` against the conformance body of the account-state port:
//! the tables `refill serve` keeps when it runs with no store flags.

use std::sync::Mutex;

use refill_store::KvAccountStore;
use refill_store::accounts_conformance;
use refill_store::embedded::Embedded;
use tempfile::TempDir;

/// Closes the database under `store` and opens it again from its directory.
fn reopen(store: KvAccountStore<Embedded>) -> KvAccountStore<Embedded> {
    let dir = store.inner().dir().to_owned();
    drop(store);
    KvAccountStore::new(Embedded::open(&dir, 1).expect("the embedded database reopens"))
}

#[test]
fn kv_account_store_over_embedded_passes_conformance() {
    // The directories live as long as the test, one per store `create` opens.
    let dirs: Mutex<Vec<TempDir>> = Mutex::new(Vec::new());
    let create = || {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let embedded = Embedded::open(dir.path(), 1).expect("a new embedded database opens");
        dirs.lock().expect("dirs lock").push(dir);
        KvAccountStore::new(embedded)
    };
    accounts_conformance::account_store_conformance(create, reopen);
}
