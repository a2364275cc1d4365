//! The embedded store: one SQLite database file in WAL mode.
//!
//! One writer thread owns the write connection and group-commits: it takes
//! every unit of work that is waiting, runs each inside its own SAVEPOINT of one
//! transaction, commits once (one fsync for the whole group) and only then
//! answers the callers. Readers use a small pool of their own connections and
//! never block the writer. Because every write goes through the one thread,
//! conditional creates see each other and cannot duplicate.

use super::sql::{self, Arg, Sql};
use super::{
    add_counts, sum_counts, Current, HistoryQuery, Method, NewVersion, QualityCounts, Store, StoreError, Stored,
    WriteJob, WriteTxn,
};
use crate::search::query::Include;
use crate::search::{IndexRows, SearchRequest};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (type, id)
);
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    version INTEGER NOT NULL,
    type TEXT NOT NULL,
    last_updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    json BLOB,
    -- Where this version's index rows are: 'lo-hi' rowid ranges per index table.
    spans TEXT,
    UNIQUE (rid, version)
);
CREATE INDEX IF NOT EXISTS versions_type ON versions (type);
-- Scans of one type in key order (views, federation): the index ends in the rowid.
CREATE INDEX IF NOT EXISTS resources_type ON resources (type);
-- Data-quality figures: delta rows per unit of work, folded now and then; patients' keys.
CREATE TABLE IF NOT EXISTS quality_deltas (id INTEGER PRIMARY KEY, source TEXT NOT NULL, rtype TEXT NOT NULL,
    metric TEXT NOT NULL, n INTEGER NOT NULL, created INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS quality_patients (kind TEXT NOT NULL, key TEXT NOT NULL, patient TEXT NOT NULL,
    PRIMARY KEY (kind, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quality_pairs (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
-- What every process on this file must agree on (used assertion ids, failed secrets).
CREATE TABLE IF NOT EXISTS shared_state (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idx_token (rid INTEGER NOT NULL, param TEXT NOT NULL, system TEXT, code TEXT, text TEXT);
CREATE INDEX IF NOT EXISTS idx_token_code ON idx_token (param, code, system);
CREATE TABLE IF NOT EXISTS idx_string (rid INTEGER NOT NULL, param TEXT NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_string_norm ON idx_string (param, norm);
CREATE TABLE IF NOT EXISTS idx_date (rid INTEGER NOT NULL, param TEXT NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS idx_date_lo ON idx_date (param, lo);
CREATE TABLE IF NOT EXISTS idx_ref (rid INTEGER NOT NULL, param TEXT NOT NULL, ttype TEXT, tid TEXT, url TEXT);
CREATE INDEX IF NOT EXISTS idx_ref_target ON idx_ref (param, tid, ttype);
CREATE TABLE IF NOT EXISTS idx_quantity (rid INTEGER NOT NULL, param TEXT NOT NULL, value REAL NOT NULL, system TEXT, code TEXT, unit TEXT);
CREATE INDEX IF NOT EXISTS idx_quantity_value ON idx_quantity (param, value);
CREATE TABLE IF NOT EXISTS idx_uri (rid INTEGER NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS idx_uri_value ON idx_uri (param, value);
";

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Sqlite(std::sync::Arc::new(e))
}

struct Job {
    work: WriteJob,
    done: SyncSender<Result<(), StoreError>>,
}

/// The SQLite store. Cloning the handle is not needed: share it in an `Arc`.
pub struct SqliteStore {
    path: PathBuf,
    writer: Mutex<Option<SyncSender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<(StopSignal, std::thread::JoinHandle<()>)>>,
    readers: Mutex<Vec<Connection>>,
    result_sets: super::result_sets::MemoryResultSets,
}

fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -65536;
         PRAGMA mmap_size = 268435456;",
    )
    .map_err(db_err)
}

impl SqliteStore {
    /// Opens (creating if needed) the database `pennine.db` in `dir`.
    pub fn open(dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        let path = dir.join("pennine.db");
        let conn = Connection::open(&path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        configure(&conn)?;
        // Checkpoints run on their own thread (below), not inside the writer's commits.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0;").map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(db_err)?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                    params![SCHEMA_VERSION.to_string()],
                )
                .map_err(db_err)?;
            }
            Some(v) if v == SCHEMA_VERSION.to_string() => {}
            Some(v) => {
                return Err(StoreError::Open {
                    path: path.display().to_string(),
                    message: format!("schema version {v} is not supported by this build (expects {SCHEMA_VERSION})"),
                })
            }
        }
        let (tx, rx) = mpsc::sync_channel::<Job>(4096);
        let handle = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx))
            .map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let stop = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let checkpointer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sqlite-checkpoint".into())
                .spawn(move || checkpoint_loop(&path, &stop))
                .map_err(|e| StoreError::Open {
                    path: String::new(),
                    message: e.to_string(),
                })?
        };
        Ok(SqliteStore {
            path,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            readers: Mutex::new(Vec::new()),
            result_sets: super::result_sets::MemoryResultSets::new(1024),
        })
    }

    /// Opens an existing store in `dir` for reading only (no writer, no checkpoints):
    /// for tools that look at a store a running node may be writing (`audit verify`).
    pub fn open_read_only(dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = dir.join("pennine.db");
        if !path.is_file() {
            return Err(StoreError::Open {
                path: path.display().to_string(),
                message: "no store here".into(),
            });
        }
        Ok(SqliteStore {
            path,
            writer: Mutex::new(None),
            writer_thread: Mutex::new(None),
            checkpointer: Mutex::new(None),
            readers: Mutex::new(Vec::new()),
            result_sets: super::result_sets::MemoryResultSets::new(1),
        })
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
                )
                .map_err(db_err)?;
                configure(&c)?;
                c.execute_batch("PRAGMA query_only = 1;").map_err(db_err)?;
                // A reader's query stops (SQLITE_INTERRUPT) once its asker has gone.
                c.progress_handler(10_000, Some(super::unwanted));
                c
            }
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|e| e.into_inner());
        // Keep as many readers as the blocking pool is likely to use at once.
        if pool.len() < 64 {
            pool.push(conn);
        }
        out
    }

    /// Stops the writer after the work already queued; later writes fail with `Closed`.
    pub fn shutdown(&self) {
        if let Some((stop, h)) = self.checkpointer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            *stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
            stop.1.notify_all();
            let _ = h.join();
        }
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer_thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// Copies the database file `src` to `dest` (a new file) with SQLite's online backup
/// API, all pages in one step: the copy is one read transaction's consistent view,
/// and writers (WAL) go on meanwhile. Returns the pages copied.
pub fn backup_database(src: &Path, dest: &Path) -> Result<u64, StoreError> {
    let from = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|e| StoreError::Open {
            path: src.display().to_string(),
            message: e.to_string(),
        })?;
    from.busy_timeout(std::time::Duration::from_secs(30)).map_err(db_err)?;
    let mut to = Connection::open(dest).map_err(|e| StoreError::Open {
        path: dest.display().to_string(),
        message: e.to_string(),
    })?;
    {
        let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(db_err)?;
        let mut waits = 0;
        loop {
            match backup.step(-1).map_err(db_err)? {
                rusqlite::backup::StepResult::Done => break,
                rusqlite::backup::StepResult::More => continue,
                _ if waits < 300 => {
                    waits += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                _ => {
                    return Err(StoreError::Internal(
                        "the store stayed locked for 30 s during the backup".into(),
                    ))
                }
            }
        }
    }
    let pages: i64 = to.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(db_err)?;
    // The copy is a file of its own: no WAL beside it.
    to.execute_batch("PRAGMA journal_mode = DELETE;").map_err(db_err)?;
    check_database(&to)?;
    Ok(pages as u64)
}

/// SQLite's own consistency check of a database (`PRAGMA quick_check`).
fn check_database(conn: &Connection) -> Result<(), StoreError> {
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(db_err)?;
    if verdict != "ok" {
        return Err(StoreError::Internal(format!("the database fails its check: {verdict}")));
    }
    Ok(())
}

/// Checks the database file at `path` (a restored copy) with `PRAGMA quick_check`.
pub fn check_database_file(path: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    check_database(&conn)
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn to_sql_args(args: &[Arg]) -> Vec<rusqlite::types::Value> {
    args.iter()
        .map(|a| match a {
            Arg::Int(i) => rusqlite::types::Value::Integer(*i),
            Arg::Real(f) => rusqlite::types::Value::Real(*f),
            Arg::Text(s) => rusqlite::types::Value::Text(s.clone()),
        })
        .collect()
}

fn query_column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &Sql) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(&sql.text).map_err(db_err)?;
    let args = to_sql_args(&sql.args);
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, T>(0))
        .map_err(db_err)?;
    rows.collect::<Result<Vec<T>, _>>().map_err(db_err)
}

fn row_to_stored(r: &rusqlite::Row) -> rusqlite::Result<Stored> {
    let json: Option<Vec<u8>> = r.get(6)?;
    let method: String = r.get(5)?;
    Ok(Stored {
        key: r.get(0)?,
        rtype: r.get(1)?,
        id: r.get(2)?,
        version: r.get::<_, i64>(3)? as u64,
        last_updated: r.get(4)?,
        method: Method::parse(&method),
        json: json.map(Arc::from),
    })
}

struct SqliteTxn<'c> {
    conn: &'c Connection,
    last_now: &'c mut i64,
    /// This unit's quality counts, written once per group at its commit (one row per
    /// figure for the whole group instead of one per unit).
    counts: QualityCounts,
}

/// Writes a group's quality counts, before its commit.
fn write_counts(conn: &Connection, counts: &QualityCounts) -> rusqlite::Result<()> {
    let now = crate::fhir::time::now_millis();
    let mut add = conn.prepare_cached(sql::QUALITY_ADD)?;
    for ((source, rtype, metric), n) in counts {
        if *n != 0 {
            add.execute(params![source, rtype, metric, n, now])?;
        }
    }
    Ok(())
}

/// Rowid ranges of one version's index rows, per table of `super::INDEX_TABLES`.
///
/// The single writer inserts a version's rows into each table back to back, so
/// they occupy one contiguous rowid range; recording it lets an update delete
/// them without a `rid` index on every index table (one B-tree less per row).
type Spans = [Option<(i64, i64)>; 6];

fn encode_spans(spans: &Spans) -> String {
    spans
        .iter()
        .map(|s| s.map_or(String::new(), |(lo, hi)| format!("{lo}-{hi}")))
        .collect::<Vec<_>>()
        .join(";")
}

fn decode_spans(text: &str) -> Spans {
    let mut out: Spans = [None; 6];
    for (i, part) in text.split(';').enumerate().take(6) {
        if let Some((lo, hi)) = part.split_once('-') {
            if let (Ok(lo), Ok(hi)) = (lo.parse(), hi.parse()) {
                out[i] = Some((lo, hi));
            }
        }
    }
    out
}

fn insert_index(conn: &Connection, rid: i64, index: &IndexRows) -> Result<Spans, StoreError> {
    let mut spans: Spans = [None; 6];
    let mut mark = |slot: usize, n: usize| {
        if n > 0 {
            let hi = conn.last_insert_rowid();
            spans[slot] = Some((hi - n as i64 + 1, hi));
        }
    };
    if !index.tokens.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO idx_token (rid, param, system, code, text) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(db_err)?;
        for t in &index.tokens {
            st.execute(params![rid, &*t.param, t.system, t.code, t.text])
                .map_err(db_err)?;
        }
        mark(0, index.tokens.len());
    }
    if !index.strings.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO idx_string (rid, param, norm, exact) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db_err)?;
        for s in &index.strings {
            st.execute(params![rid, &*s.param, s.norm, s.exact]).map_err(db_err)?;
        }
        mark(1, index.strings.len());
    }
    if !index.dates.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO idx_date (rid, param, lo, hi) VALUES (?1, ?2, ?3, ?4)")
            .map_err(db_err)?;
        for d in &index.dates {
            st.execute(params![rid, &*d.param, d.lo, d.hi]).map_err(db_err)?;
        }
        mark(2, index.dates.len());
    }
    if !index.refs.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO idx_ref (rid, param, ttype, tid, url) VALUES (?1, ?2, ?3, ?4, ?5)")
            .map_err(db_err)?;
        for r in &index.refs {
            st.execute(params![rid, &*r.param, r.target_type, r.target_id, r.url])
                .map_err(db_err)?;
        }
        mark(3, index.refs.len());
    }
    if !index.quantities.is_empty() || !index.numbers.is_empty() {
        let mut st = conn
            .prepare_cached(
                "INSERT INTO idx_quantity (rid, param, value, system, code, unit) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db_err)?;
        for q in index.quantities.iter().chain(&index.numbers) {
            st.execute(params![rid, &*q.param, q.value, q.system, q.code, q.unit])
                .map_err(db_err)?;
        }
        mark(4, index.quantities.len() + index.numbers.len());
    }
    if !index.uris.is_empty() {
        let mut st = conn
            .prepare_cached("INSERT INTO idx_uri (rid, param, value) VALUES (?1, ?2, ?3)")
            .map_err(db_err)?;
        for u in &index.uris {
            st.execute(params![rid, &*u.param, u.value]).map_err(db_err)?;
        }
        mark(5, index.uris.len());
    }
    Ok(spans)
}

impl WriteTxn for SqliteTxn<'_> {
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError> {
        let mut st = self
            .conn
            .prepare_cached("SELECT version, deleted, last_updated FROM resources WHERE type = ?1 AND id = ?2")
            .map_err(db_err)?;
        st.query_row(params![rtype, id], |r| {
            Ok(Current {
                version: r.get::<_, i64>(0)? as u64,
                deleted: r.get::<_, i64>(1)? != 0,
                last_updated: r.get(2)?,
            })
        })
        .optional()
        .map_err(db_err)
    }

    fn search_ids(&mut self, req: &SearchRequest, limit: usize) -> Result<Vec<String>, StoreError> {
        query_column(self.conn, &sql::search_ids(req, limit))
    }

    fn write(&mut self, v: &NewVersion) -> Result<(), StoreError> {
        let deleted = v.json.is_none() as i64;
        let rid: i64 = if v.existed {
            let mut st = self
                .conn
                .prepare_cached(
                    "UPDATE resources SET version = ?3, last_updated = ?4, deleted = ?5 WHERE type = ?1 AND id = ?2 RETURNING rid",
                )
                .map_err(db_err)?;
            let rid: i64 = st
                .query_row(params![v.rtype, v.id, v.version as i64, v.last_updated, deleted], |r| {
                    r.get(0)
                })
                .map_err(db_err)?;
            // The previous version's index rows go, found by their recorded spans.
            let old: Option<String> = self
                .conn
                .prepare_cached("SELECT spans FROM versions WHERE rid = ?1 AND version = ?2")
                .map_err(db_err)?
                .query_row(params![rid, v.version as i64 - 1], |r| r.get(0))
                .optional()
                .map_err(db_err)?
                .flatten();
            if let Some(old) = old {
                for (table, span) in super::INDEX_TABLES.iter().zip(decode_spans(&old)) {
                    if let Some((lo, hi)) = span {
                        self.conn
                            .prepare_cached(&format!("DELETE FROM {table} WHERE rowid BETWEEN ?1 AND ?2"))
                            .map_err(db_err)?
                            .execute(params![lo, hi])
                            .map_err(db_err)?;
                    }
                }
            }
            rid
        } else {
            let mut st = self
                .conn
                .prepare_cached(
                    "INSERT INTO resources (type, id, version, last_updated, deleted) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .map_err(db_err)?;
            st.execute(params![v.rtype, v.id, v.version as i64, v.last_updated, deleted])
                .map_err(db_err)?;
            self.conn.last_insert_rowid()
        };
        let spans = match (v.index, v.json) {
            (Some(index), Some(_)) => Some(encode_spans(&insert_index(self.conn, rid, index)?)),
            _ => None,
        };
        self.conn
            .prepare_cached(
                "INSERT INTO versions (rid, version, type, last_updated, method, json, spans) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(db_err)?
            .execute(params![
                rid,
                v.version as i64,
                v.rtype,
                v.last_updated,
                v.method.as_str(),
                v.json,
                spans
            ])
            .map_err(db_err)?;
        Ok(())
    }

    fn add_quality(
        &mut self,
        counts: &QualityCounts,
        patients: &[(String, Vec<(String, String)>)],
    ) -> Result<usize, StoreError> {
        let new = sum_counts(&mut self.counts, counts);
        for (patient, keys) in patients {
            let mut key = self.conn.prepare_cached(sql::QUALITY_KEY).map_err(db_err)?;
            key.execute(params!["id", patient, patient]).map_err(db_err)?;
            for (kind, k) in keys {
                key.execute(params![kind, k, patient]).map_err(db_err)?;
                let holder: String = self
                    .conn
                    .prepare_cached(sql::QUALITY_KEY_HOLDER)
                    .map_err(db_err)?
                    .query_row(params![kind, k], |r| r.get(0))
                    .map_err(db_err)?;
                if &holder != patient {
                    let (a, b) = if *patient < holder {
                        (patient, &holder)
                    } else {
                        (&holder, patient)
                    };
                    self.conn
                        .prepare_cached(sql::QUALITY_PAIR)
                        .map_err(db_err)?
                        .execute(params![a, b])
                        .map_err(db_err)?;
                }
            }
        }
        Ok(new)
    }

    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        // The writer holds the database's write lock for the whole unit.
        self.conn
            .prepare_cached(sql::SHARED_GET)
            .map_err(db_err)?
            .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db_err)
    }

    fn shared_put(&mut self, key: &str, value: Option<(&[u8], i64)>) -> Result<(), StoreError> {
        match value {
            Some((v, expires)) => self
                .conn
                .prepare_cached(sql::SHARED_PUT)
                .map_err(db_err)?
                .execute(params![key, v, expires]),
            None => self
                .conn
                .prepare_cached(sql::SHARED_DELETE)
                .map_err(db_err)?
                .execute(params![key]),
        }
        .map_err(db_err)?;
        if super::rand_purge() {
            let now = crate::fhir::time::now_millis() / 1000;
            self.conn
                .prepare_cached(sql::SHARED_PURGE)
                .map_err(db_err)?
                .execute(params![now])
                .map_err(db_err)?;
        }
        Ok(())
    }

    fn compact_quality(&mut self) -> Result<(), StoreError> {
        // One writer: the two statements see the same rows.
        self.conn
            .execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS quality_fold (source TEXT, rtype TEXT, metric TEXT, n INTEGER, created INTEGER);
                 DELETE FROM quality_fold;
                 INSERT INTO quality_fold SELECT source, rtype, metric, SUM(n), MIN(created) FROM quality_deltas
                     GROUP BY source, rtype, metric;
                 DELETE FROM quality_deltas;
                 INSERT INTO quality_deltas (source, rtype, metric, n, created) SELECT * FROM quality_fold;
                 DELETE FROM quality_fold;",
            )
            .map_err(db_err)
    }

    fn nested(&mut self, f: &mut dyn FnMut(&mut dyn WriteTxn) -> bool) -> Result<bool, StoreError> {
        self.conn.execute_batch("SAVEPOINT entry").map_err(db_err)?;
        let counts_before = self.counts.clone();
        let keep = f(self);
        if !keep {
            self.counts = counts_before;
        }
        let end = if keep {
            "RELEASE entry"
        } else {
            "ROLLBACK TO entry; RELEASE entry"
        };
        self.conn.execute_batch(end).map_err(db_err)?;
        Ok(keep)
    }

    fn now(&mut self) -> i64 {
        let now = crate::fhir::time::now_millis().max(*self.last_now);
        *self.last_now = now;
        now
    }
}

type StopSignal = Arc<(Mutex<bool>, std::sync::Condvar)>;

/// Copies committed WAL frames back into the database file every half second,
/// without blocking the writer (PASSIVE), so the WAL stays small.
fn checkpoint_loop(path: &Path, stop: &StopSignal) {
    let Ok(conn) = Connection::open(path) else { return };
    let _ = conn.busy_timeout(std::time::Duration::from_millis(100));
    let (lock, cvar) = &**stop;
    let mut stopped = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        let (guard, _) = cvar
            .wait_timeout(stopped, std::time::Duration::from_millis(500))
            .unwrap_or_else(|e| e.into_inner());
        stopped = guard;
        if !*stopped {
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
        }
    }
}

/// Most units of work a single commit takes; more wait for the next group.
const MAX_GROUP: usize = 256;

/// Runs one unit of work on the writer's open transaction: whether it keeps its
/// writes, or `JobPanicked` when it panicked (its writes are then rolled back too).
/// A unit that keeps its writes adds its quality counts to `counts`.
fn run_job(
    conn: &Connection,
    work: WriteJob,
    last_now: &mut i64,
    counts: &mut QualityCounts,
) -> Result<bool, StoreError> {
    let mut txn = SqliteTxn {
        conn,
        last_now,
        counts: QualityCounts::new(),
    };
    let kept =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&mut txn))).map_err(|_| StoreError::JobPanicked);
    if let Ok(true) = kept {
        add_counts(counts, txn.counts);
    }
    kept
}

fn writer_loop(conn: Connection, rx: Receiver<Job>) {
    let mut last_now = 0i64;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let mut answers = Vec::with_capacity(group.len());
        let mut counts = QualityCounts::new();
        // Whether the transaction is open, and whether it holds no unit's writes yet.
        let mut open = false;
        let mut fresh = false;
        for job in group {
            if !open {
                if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                    answers.push((job.done, Err(db_err(e))));
                    continue;
                }
                open = true;
                fresh = true;
            }
            let outcome = if fresh {
                // Nothing else is in the transaction yet: rolling all of it back undoes
                // exactly this unit, so it runs without a savepoint (a savepoint copies
                // every page the unit touches first; that was an eighth of this thread's
                // time on MLLP feeds). The transaction is begun again for the next unit.
                match run_job(&conn, job.work, &mut last_now, &mut counts) {
                    Ok(true) => {
                        fresh = false;
                        Ok(())
                    }
                    kept => {
                        open = false;
                        conn.execute_batch("ROLLBACK").map_err(db_err).and(kept.map(|_| ()))
                    }
                }
            } else {
                // Prepared once: these run for every unit of work.
                match conn.prepare_cached("SAVEPOINT job").and_then(|mut st| st.execute([])) {
                    Err(e) => Err(db_err(e)),
                    Ok(_) => match run_job(&conn, job.work, &mut last_now, &mut counts) {
                        Ok(true) => conn
                            .prepare_cached("RELEASE job")
                            .and_then(|mut st| st.execute([]))
                            .map(|_| ())
                            .map_err(db_err),
                        kept => conn
                            .execute_batch("ROLLBACK TO job; RELEASE job")
                            .map_err(db_err)
                            .and(kept.map(|_| ())),
                    },
                }
            };
            answers.push((job.done, outcome));
        }
        if !open {
            for (done, outcome) in answers {
                let _ = done.send(outcome);
            }
            continue;
        }
        match write_counts(&conn, &counts).and_then(|()| conn.execute_batch("COMMIT")) {
            Ok(()) => {
                for (done, outcome) in answers {
                    let _ = done.send(outcome);
                }
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                let err = std::sync::Arc::new(e);
                for (done, _) in answers {
                    let _ = done.send(Err(StoreError::Sqlite(err.clone())));
                }
            }
        }
    }
    // Leave a tidy file behind: fold the WAL back into the database.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

impl Store for SqliteStore {
    fn read(&self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::READ_CURRENT).map_err(db_err)?;
            st.query_row(params![rtype, id], row_to_stored)
                .optional()
                .map_err(db_err)
        })
    }

    fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<Stored>, StoreError> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::READ_VERSION).map_err(db_err)?;
            st.query_row(params![rtype, id, version as i64], row_to_stored)
                .optional()
                .map_err(db_err)
        })
    }

    fn history(&self, q: &HistoryQuery) -> Result<(Vec<Stored>, u64), StoreError> {
        self.with_reader(|c| {
            let (filter, args) = sql::history_filter(q);
            let args = to_sql_args(&args);
            let total: i64 = c
                .prepare_cached(&format!("SELECT COUNT(*) FROM versions v JOIN resources r ON r.rid = v.rid{filter}"))
                .map_err(db_err)?
                .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get(0))
                .map_err(db_err)?;
            let mut page_args = args.clone();
            page_args.push((q.limit as i64).into());
            page_args.push((q.offset as i64).into());
            let mut st = c
                .prepare_cached(&format!(
                    "SELECT {} FROM versions v JOIN resources r ON r.rid = v.rid{filter} ORDER BY v.seq DESC LIMIT ? OFFSET ?",
                    sql::STORED_COLUMNS
                ))
                .map_err(db_err)?;
            let rows = st
                .query_map(rusqlite::params_from_iter(page_args.iter()), row_to_stored)
                .map_err(db_err)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(db_err)?;
            Ok((rows, total as u64))
        })
    }

    fn search(&self, req: &SearchRequest, limit: usize) -> Result<Vec<i64>, StoreError> {
        self.with_reader(|c| query_column(c, &sql::search_keys(req, limit)))
    }

    fn count(&self, req: &SearchRequest) -> Result<u64, StoreError> {
        self.with_reader(|c| {
            let n: Vec<i64> = query_column(c, &sql::count(req))?;
            Ok(n.first().copied().unwrap_or(0) as u64)
        })
    }

    fn fetch(&self, keys: &[i64]) -> Result<Vec<Stored>, StoreError> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::FETCH_CURRENT).map_err(db_err)?;
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                if let Some(s) = st.query_row(params![k], row_to_stored).optional().map_err(db_err)? {
                    out.push(s);
                }
            }
            Ok(out)
        })
    }

    fn include(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::INCLUDE).map_err(db_err)?;
            let mut target = c.prepare_cached(sql::TYPE_AND_ID).map_err(db_err)?;
            let mut out = Vec::new();
            for k in keys {
                let rows = st
                    .query_map(params![k, &*inc.key], |r| r.get::<_, i64>(0))
                    .map_err(db_err)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(db_err)?;
                for rid in rows {
                    if let Some(want) = &inc.target_type {
                        let t: String = target.query_row(params![rid], |r| r.get(0)).map_err(db_err)?;
                        if &t != want {
                            continue;
                        }
                    }
                    out.push(rid);
                }
            }
            Ok(out)
        })
    }

    fn revinclude(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError> {
        self.with_reader(|c| {
            let mut target = c.prepare_cached(sql::TYPE_AND_ID).map_err(db_err)?;
            let mut st = c.prepare_cached(sql::REVINCLUDE).map_err(db_err)?;
            let mut out = Vec::new();
            for k in keys {
                let Some((t, id)) = target
                    .query_row(params![k], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                    .optional()
                    .map_err(db_err)?
                else {
                    continue;
                };
                if inc.target_type.as_deref().is_some_and(|want| want != t) {
                    continue;
                }
                let rows = st
                    .query_map(params![&*inc.key, id, t], |r| r.get::<_, i64>(0))
                    .map_err(db_err)?;
                for r in rows {
                    out.push(r.map_err(db_err)?);
                }
            }
            Ok(out)
        })
    }

    fn submit(&self, job: WriteJob) -> Result<(), StoreError> {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let sender = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(StoreError::Closed)?;
        sender
            .send(Job {
                work: job,
                done: done_tx,
            })
            .map_err(|_| StoreError::Closed)?;
        done_rx.recv().map_err(|_| StoreError::Closed)?
    }

    fn scan(&self, rtype: &str, after: i64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::SCAN_CURRENT).map_err(db_err)?;
            let rows = st
                .query_map(params![rtype, after, limit as i64], row_to_stored)
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    fn last(&self, rtype: &str) -> Result<Option<Stored>, StoreError> {
        self.with_reader(|c| {
            c.query_row(sql::SCAN_LAST, params![rtype], row_to_stored)
                .optional()
                .map_err(db_err)
        })
    }

    fn changed_since(&self, rtype: &str, since: i64) -> Result<Vec<super::Changed>, StoreError> {
        self.with_reader(|c| {
            let mut st = c.prepare_cached(sql::CHANGED_SINCE).map_err(db_err)?;
            let rows = st
                .query_map(params![since, rtype], |r| {
                    let json: Option<Vec<u8>> = r.get(1)?;
                    Ok((r.get::<_, i64>(0)?, json.map(Arc::from)))
                })
                .map_err(db_err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(db_err)
        })
    }

    fn change_marker(&self) -> Result<i64, StoreError> {
        self.with_reader(|c| c.query_row(sql::CHANGE_MARKER, [], |r| r.get(0)).map_err(db_err))
    }

    fn newest(&self) -> Result<Option<i64>, StoreError> {
        self.with_reader(|c| {
            c.query_row("SELECT last_updated FROM versions ORDER BY seq DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map(Option::flatten)
            .map_err(db_err)
        })
    }

    fn save_result_set(&self, set: super::ResultSet) -> Result<String, StoreError> {
        Ok(self.result_sets.insert(set))
    }

    fn load_result_set(&self, id: &str) -> Result<Option<Arc<super::ResultSet>>, StoreError> {
        Ok(self.result_sets.get(id))
    }

    fn close(&self) {
        self.shutdown();
    }

    fn shared_read(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_reader(|c| {
            let found: Option<(Vec<u8>, i64)> = c
                .prepare_cached(sql::SHARED_GET)
                .map_err(db_err)?
                .query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
                .map_err(db_err)?;
            Ok(found.filter(|(_, exp)| *exp >= now).map(|(v, _)| v))
        })
    }

    fn quality(&self) -> Result<super::QualityTotals, StoreError> {
        self.with_reader(|c| {
            let mut totals = super::QualityTotals::default();
            let mut st = c.prepare_cached(sql::QUALITY_TOTALS).map_err(db_err)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        (r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, i64>(5)?,
                    ))
                })
                .map_err(db_err)?;
            for row in rows {
                let (key, n, created, rows) = row.map_err(db_err)?;
                totals.since = Some(totals.since.map_or(created, |s| s.min(created)));
                totals.rows += rows as u64;
                totals.counts.push((key, n));
            }
            totals.patients = c
                .query_row(sql::QUALITY_PATIENTS, [], |r| r.get::<_, i64>(0))
                .map_err(db_err)? as u64;
            totals.pairs = c
                .query_row(sql::QUALITY_PAIRS, [], |r| r.get::<_, i64>(0))
                .map_err(db_err)? as u64;
            Ok(totals)
        })
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.with_reader(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(db_err))?;
        if self.writer.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Err(StoreError::Closed);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_stops_soon_after_its_asker_has_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path()).unwrap();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = flag.clone();
        let cancel = crate::store::Cancel::new(move || seen.load(std::sync::atomic::Ordering::SeqCst));
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        // Hundreds of millions of rows: tens of seconds if it ran to the end.
        let counted = cancel.during(|| {
            store.with_reader(|c| {
                c.query_row(
                    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 300000000) \
                     SELECT count(*) FROM n",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db_err)
            })
        });
        setter.join().unwrap();
        assert!(counted.is_err(), "the query was interrupted: {counted:?}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The thread's cancellation ends with `during`: the same reader answers again.
        let one = store.with_reader(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map_err(db_err));
        assert_eq!(one.unwrap(), 1);
    }

    /// Units that keep, roll back or panic, submitted alone (each first in its group: no
    /// savepoint) and from many threads at once (groups with savepoints): exactly the kept
    /// units' writes and quality counts remain.
    #[test]
    fn a_group_keeps_exactly_its_kept_units() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(dir.path()).unwrap());
        // Unit `i` keeps when i % 3 == 0, rolls back when i % 3 == 1, panics otherwise.
        let unit = |i: usize| -> WriteJob {
            Box::new(move |txn: &mut dyn WriteTxn| {
                txn.shared_put(&format!("k{i}"), Some((b"v", i64::MAX))).unwrap();
                let mut delta = super::super::QualityDelta::default();
                delta.counts.insert(("t".into(), "Patient".into(), "n".into()), 1);
                txn.add_quality(&delta.counts, &delta.patients).unwrap();
                match i % 3 {
                    0 => true,
                    1 => false,
                    _ => panic!("unit {i} fails on purpose"),
                }
            })
        };
        let alone: Vec<_> = (0..6).map(|i| store.submit(unit(i))).collect();
        assert!(alone[0].is_ok() && alone[1].is_ok() && matches!(alone[2], Err(StoreError::JobPanicked)));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in (6 + t..600).step_by(8) {
                        let answer = store.submit(unit(i));
                        assert_eq!(answer.is_ok(), i % 3 != 2, "unit {i}: {answer:?}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let kept: Vec<String> = store
            .with_reader(|c| {
                let mut st = c.prepare("SELECT key FROM shared_state ORDER BY key").map_err(db_err)?;
                let keys = st.query_map([], |r| r.get(0)).map_err(db_err)?;
                keys.collect::<Result<_, _>>().map_err(db_err)
            })
            .unwrap();
        let mut expected: Vec<String> = (0..600).filter(|i| i % 3 == 0).map(|i| format!("k{i}")).collect();
        expected.sort();
        assert_eq!(kept, expected);
        let totals = store.quality().unwrap();
        assert_eq!(totals.counts, vec![(("t".into(), "Patient".into(), "n".into()), 200)]);
    }

    #[test]
    fn spans_round_trip() {
        let spans: Spans = [Some((1, 5)), None, Some((7, 7)), None, None, Some((10, 20))];
        assert_eq!(decode_spans(&encode_spans(&spans)), spans);
        assert_eq!(decode_spans(""), [None; 6]);
    }
}
