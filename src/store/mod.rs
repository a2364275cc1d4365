//! Storage: the one trait every backend implements, and the types that cross it.
//!
//! The trait is blocking and object-safe; the HTTP layer calls it on a blocking
//! thread pool. Writes are units of work (`WriteJob`) that the backend runs
//! atomically inside its own transaction, so FHIR transaction semantics
//! (conditional creates, `ifNoneExist`, version checks) live once in the node
//! layer and every backend gets them for free. Only this module knows SQL.

pub mod postgres;
pub mod result_sets;
mod sql;
pub mod sqlite;

pub use result_sets::ResultSet;

use crate::search::query::Include;
use crate::search::{IndexRows, SearchRequest};
use std::sync::Arc;

/// Whether the one who asked still wants the answer: a search stops (between steps, and
/// inside an embedded-store query) once its client has gone. `Cancel::default()` never
/// cancels.
#[derive(Clone, Default)]
pub struct Cancel(Option<Arc<dyn Fn() -> bool + Send + Sync>>);

impl std::fmt::Debug for Cancel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Cancel(watched)"
        } else {
            "Cancel(never)"
        })
    }
}

impl Cancel {
    pub fn new(gone: impl Fn() -> bool + Send + Sync + 'static) -> Cancel {
        Cancel(Some(Arc::new(gone)))
    }

    pub fn cancelled(&self) -> bool {
        self.0.as_ref().is_some_and(|gone| gone())
    }

    /// Runs `f` with this as the calling thread's cancellation, which the embedded
    /// store's queries poll (SQLite's progress handler) and stop on.
    pub fn during<T>(&self, f: impl FnOnce() -> T) -> T {
        struct Reset(Option<Cancel>);
        impl Drop for Reset {
            fn drop(&mut self) {
                let previous = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = previous);
            }
        }
        let previous = CURRENT.with(|c| c.replace(Some(self.clone())));
        let _reset = Reset(previous);
        f()
    }
}

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Cancel>> = const { std::cell::RefCell::new(None) };
}

/// One write in a hundred also clears expired shared values.
fn rand_purge() -> bool {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).is_multiple_of(100)
}

/// The cancellation of the work running on this thread, if any (`Cancel::during`).
fn current_cancel() -> Option<Cancel> {
    CURRENT.with(|c| c.borrow().clone())
}

/// Whether the work running on this thread is no longer wanted (`Cancel::during`).
fn unwanted() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(Cancel::cancelled))
}

/// The index tables, in the order both backends record and clear them.
const INDEX_TABLES: [&str; 6] = [
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_ref",
    "idx_quantity",
    "idx_uri",
];

/// A resource's current state, as a write sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub version: u64,
    pub deleted: bool,
    pub last_updated: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Create,
    Update,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Create => "POST",
            Method::Update => "PUT",
            Method::Delete => "DELETE",
        }
    }

    fn parse(s: &str) -> Method {
        match s {
            "POST" => Method::Create,
            "DELETE" => Method::Delete,
            _ => Method::Update,
        }
    }
}

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The backend's key of the resource (stable across versions).
    pub key: i64,
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub last_updated: i64,
    pub method: Method,
    /// The resource JSON; `None` for a deletion.
    pub json: Option<Arc<[u8]>>,
}

impl Stored {
    pub fn deleted(&self) -> bool {
        self.json.is_none()
    }
}

/// A resource written after a change marker: its key and current JSON (`None` when deleted).
pub type Changed = (i64, Option<Arc<[u8]>>);

/// What a history request covers.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    System,
    Type(String),
    Instance(String, String),
}

#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub scope: HistoryScope,
    pub since: Option<i64>,
    pub at_or_before: Option<i64>,
    pub limit: usize,
    pub offset: usize,
}

/// A version to write, with everything computed outside the write lock.
#[derive(Debug, Clone)]
pub struct NewVersion<'a> {
    pub rtype: &'a str,
    pub id: &'a str,
    pub version: u64,
    pub last_updated: i64,
    pub method: Method,
    /// `None` writes a deletion.
    pub json: Option<&'a [u8]>,
    pub index: Option<&'a IndexRows>,
    /// Whether a row for this resource exists already (any version).
    pub existed: bool,
}

/// `Display` of a postgres error hides the server's message; this shows it with its SQLSTATE.
fn postgres_message(e: &::postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// A storage failure, with its cause kept (not flattened to text): the log shows the
/// chain, the client an opaque outcome (`crate::error`).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store failed. Shared, so one failed group commit can answer every job in it.
    #[error("SQLite: {0}")]
    Sqlite(#[source] std::sync::Arc<rusqlite::Error>),
    /// PostgreSQL failed (its SQLSTATE and server message are in the source).
    #[error("PostgreSQL: {}", postgres_message(.0))]
    Postgres(#[source] Box<::postgres::Error>),
    /// Stored bytes that are not the JSON they were written as.
    #[error("stored resource is not JSON: {0}")]
    Corrupt(#[source] serde_json::Error),
    /// A broken invariant inside a backend.
    #[error("storage invariant: {0}")]
    Internal(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("storage is shutting down")]
    Closed,
    #[error("a write job panicked")]
    JobPanicked,
    #[error("cannot open the store at {path}: {message}")]
    Open { path: String, message: String },
}

/// What a unit of work adds to the node's data-quality figures (`node::quality`),
/// written in its transaction so that the figures count exactly what committed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct QualityDelta {
    /// (source, resource type, metric) → amount.
    pub counts: QualityCounts,
    /// Stored patients and their keys (kind, key) for the uniqueness rule: a key
    /// already held by another patient makes the two a likely duplicate pair.
    pub patients: Vec<(String, Vec<(String, String)>)>,
}

impl QualityDelta {
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.patients.is_empty()
    }

    pub fn merge(&mut self, other: QualityDelta) {
        add_counts(&mut self.counts, other.counts);
        self.patients.extend(other.patients);
    }
}

/// Quality figures: (source, resource type, metric) → amount.
pub type QualityCounts = std::collections::BTreeMap<(String, String, String), i64>;

/// Adds `from`'s figures to `into`'s.
pub fn add_counts(into: &mut QualityCounts, from: QualityCounts) {
    for (k, n) in from {
        *into.entry(k).or_default() += n;
    }
}

/// Adds `from`'s figures to `into`'s, copying a key only when `into` lacks it (the
/// writer sums one resource's figures after another's, mostly under the same keys).
/// Returns how many keys were new to `into`.
pub fn sum_counts(into: &mut QualityCounts, from: &QualityCounts) -> usize {
    let mut new = 0;
    for (k, n) in from {
        match into.get_mut(k) {
            Some(total) => *total += n,
            None => {
                into.insert(k.clone(), *n);
                new += 1;
            }
        }
    }
    new
}

/// The node's quality figures as stored: every (source, type, metric) with its total.
#[derive(Debug, Default, Clone)]
pub struct QualityTotals {
    pub counts: Vec<((String, String, String), i64)>,
    /// When the first figure was counted.
    pub since: Option<i64>,
    /// Patients stored, and likely duplicate pairs among them.
    pub patients: u64,
    pub pairs: u64,
    /// Stored delta rows (compacted when they grow).
    pub rows: u64,
}

/// The operations a unit of work may perform inside the store's transaction.
pub trait WriteTxn {
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError>;
    /// The ids of current resources matching `req` (its conditions only).
    fn search_ids(&mut self, req: &SearchRequest, limit: usize) -> Result<Vec<String>, StoreError>;
    fn write(&mut self, v: &NewVersion) -> Result<(), StoreError>;
    /// Runs `f` in a nested savepoint: its writes are kept if it returns `true`
    /// and undone if it returns `false` (a batch entry that failed).
    fn nested(&mut self, f: &mut dyn FnMut(&mut dyn WriteTxn) -> bool) -> Result<bool, StoreError>;
    /// A timestamp for this unit of work: never earlier than any earlier unit's.
    fn now(&mut self) -> i64;
    /// Adds quality figures to the unit's, and patients with their keys (kind, key) for
    /// the uniqueness rule; the figures are stored as delta rows (appended without
    /// locks on hot rows) when the unit commits. Returns how many of the figures are new
    /// to the unit: each is a delta row.
    fn add_quality(
        &mut self,
        counts: &QualityCounts,
        patients: &[(String, Vec<(String, String)>)],
    ) -> Result<usize, StoreError>;
    /// Folds the quality delta rows into one row per (source, type, metric).
    fn compact_quality(&mut self) -> Result<(), StoreError>;
    /// A shared value (`auth::Shared`: used assertion ids, failed secrets) and its expiry
    /// (seconds), held until this unit ends so that no other process changes it meanwhile.
    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError>;
    /// Sets (or, with `None`, deletes) a shared value.
    fn shared_put(&mut self, key: &str, value: Option<(&[u8], i64)>) -> Result<(), StoreError>;
}

/// A unit of work. It returns `true` to keep its writes, `false` to roll them back;
/// it reports its own results through what it captured. The store runs it
/// atomically and returns from `submit` only once it is durable (or rolled back).
pub type WriteJob = Box<dyn FnOnce(&mut dyn WriteTxn) -> bool + Send>;

/// Runs `f` as one unit of work on `store` and returns what it returned: its
/// writes are kept (and durable) when it returns `Ok`, rolled back otherwise.
pub fn run_unit<T, E>(
    store: &dyn Store,
    f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, E> + Send + 'static,
) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    let slot: Arc<std::sync::Mutex<Option<Result<T, E>>>> = Arc::new(std::sync::Mutex::new(None));
    let out = slot.clone();
    store.submit(Box::new(move |txn| {
        let r = f(txn);
        let keep = r.is_ok();
        *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        keep
    }))?;
    let result = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    result.unwrap_or(Err(E::from(StoreError::JobPanicked)))
}

/// A FHIR resource store.
pub trait Store: Send + Sync + 'static {
    fn read(&self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError>;
    fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<Stored>, StoreError>;
    /// History entries, newest first, and the total count in scope.
    fn history(&self, q: &HistoryQuery) -> Result<(Vec<Stored>, u64), StoreError>;
    /// Keys of current resources matching `req`, in the requested sort order.
    fn search(&self, req: &SearchRequest, limit: usize) -> Result<Vec<i64>, StoreError>;
    fn count(&self, req: &SearchRequest) -> Result<u64, StoreError>;
    /// Current versions of `keys`, in the same order (missing or deleted ones left out).
    fn fetch(&self, keys: &[i64]) -> Result<Vec<Stored>, StoreError>;
    /// Keys of resources that `keys` reference through `inc`.
    fn include(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError>;
    /// Keys of resources of `inc.source_type` that reference any of `keys` through `inc`.
    fn revinclude(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError>;
    /// Runs a unit of work atomically and durably (group-committed with others).
    fn submit(&self, job: WriteJob) -> Result<(), StoreError>;
    /// Current versions of `rtype` with keys above `after`, in key order, at most `limit`.
    fn scan(&self, rtype: &str, after: i64, limit: usize) -> Result<Vec<Stored>, StoreError>;
    /// The current version of the newest resource of `rtype` (the highest key), if any.
    fn last(&self, rtype: &str) -> Result<Option<Stored>, StoreError>;
    /// Resources of `rtype` written after the change marker `since`: key and current
    /// JSON (`None` when now deleted).
    fn changed_since(&self, rtype: &str, since: i64) -> Result<Vec<Changed>, StoreError>;
    /// A number that grows whenever a write commits (for caches of derived data).
    fn change_marker(&self) -> Result<i64, StoreError>;
    /// The newest `last_updated` of any resource, if any (data freshness).
    fn newest(&self) -> Result<Option<i64>, StoreError>;
    /// Whether the store answers.
    fn ready(&self) -> Result<(), StoreError>;
    /// The data-quality figures as stored.
    fn quality(&self) -> Result<QualityTotals, StoreError>;
    /// A shared value unless absent or expired at `now` (seconds), read without a lock.
    fn shared_read(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keeps a search's result list for paging; returns its id.
    fn save_result_set(&self, set: ResultSet) -> Result<String, StoreError>;
    /// A result list saved within `result_sets::RESULT_SET_TTL`, if any.
    fn load_result_set(&self, id: &str) -> Result<Option<std::sync::Arc<ResultSet>>, StoreError>;
    /// Finishes queued work and releases connections; later calls may fail.
    fn close(&self);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer sums resource after resource into its unit's figures; what it reports as
    /// new is what becomes a delta row (and drives the folding), so it must count keys new
    /// to the unit, not figures added.
    #[test]
    fn sums_by_key_and_counts_only_keys_new_to_the_unit() {
        let key = |metric: &str| ("ehr".to_string(), "Patient".to_string(), metric.to_string());
        let one: QualityCounts = [(key("received"), 1), (key("accepted"), 1)].into();
        let other: QualityCounts = [(key("received"), 1), (key("delayms\t3"), 250)].into();
        let mut unit = QualityCounts::new();
        assert_eq!(sum_counts(&mut unit, &one), 2);
        assert_eq!(sum_counts(&mut unit, &one), 0);
        assert_eq!(sum_counts(&mut unit, &other), 1);
        let expected: QualityCounts = [(key("received"), 3), (key("accepted"), 2), (key("delayms\t3"), 250)].into();
        assert_eq!(unit, expected);
        // The same figures summed by the owned path agree.
        let mut owned = QualityCounts::new();
        for c in [one.clone(), one, other] {
            add_counts(&mut owned, c);
        }
        assert_eq!(owned, unit);
    }
}
