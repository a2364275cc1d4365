//! The PostgreSQL store, for regions that outgrow one file: several node
//! processes may share one database and behave as one node.
//!
//! Each unit of work runs in its own database transaction on a pooled
//! connection (PostgreSQL group-commits concurrent transactions itself).
//! Cross-process guarantees come from the database, not from process memory:
//! conditional searches take a transaction-scoped advisory lock on the resource
//! type, so two conditional creates anywhere serialise; current versions are
//! read `FOR UPDATE`; `(type, id)` is unique.

use super::sql::{self, Arg};
use super::{
    sum_counts, Current, HistoryQuery, Method, NewVersion, QualityCounts, Store, StoreError, Stored, WriteJob, WriteTxn,
};
use crate::search::query::Include;
use crate::search::{IndexRows, SearchRequest};
use postgres::binary_copy::BinaryCopyInWriter;
use postgres::types::{ToSql, Type};
use postgres::{Client, NoTls, Row, Statement, Transaction};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

/// Versioned, idempotent migrations; each runs once, in order, under a lock.
const MIGRATIONS: &[(i32, &str)] = &[
    (
    1,
    "
CREATE TABLE resources (
    rid BIGSERIAL PRIMARY KEY,
    type TEXT COLLATE \"C\" NOT NULL,
    id TEXT COLLATE \"C\" NOT NULL,
    version BIGINT NOT NULL,
    last_updated BIGINT NOT NULL,
    deleted SMALLINT NOT NULL DEFAULT 0,
    UNIQUE (type, id)
);
CREATE TABLE versions (
    seq BIGSERIAL PRIMARY KEY,
    rid BIGINT NOT NULL,
    version BIGINT NOT NULL,
    type TEXT COLLATE \"C\" NOT NULL,
    last_updated BIGINT NOT NULL,
    method TEXT NOT NULL,
    json BYTEA,
    UNIQUE (rid, version)
);
CREATE INDEX versions_type ON versions (type, seq);
CREATE TABLE idx_token (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, system TEXT COLLATE \"C\", code TEXT COLLATE \"C\", text TEXT COLLATE \"C\");
CREATE INDEX idx_token_code ON idx_token (param, code, system);
CREATE INDEX idx_token_rid ON idx_token (rid);
CREATE TABLE idx_string (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, norm TEXT COLLATE \"C\" NOT NULL, exact TEXT COLLATE \"C\" NOT NULL);
CREATE INDEX idx_string_norm ON idx_string (param, norm);
CREATE INDEX idx_string_rid ON idx_string (rid);
CREATE TABLE idx_date (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, lo BIGINT NOT NULL, hi BIGINT NOT NULL);
CREATE INDEX idx_date_lo ON idx_date (param, lo);
CREATE INDEX idx_date_rid ON idx_date (rid);
CREATE TABLE idx_ref (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, ttype TEXT COLLATE \"C\", tid TEXT COLLATE \"C\", url TEXT COLLATE \"C\");
CREATE INDEX idx_ref_target ON idx_ref (param, tid, ttype);
CREATE INDEX idx_ref_rid ON idx_ref (rid);
CREATE TABLE idx_quantity (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, value DOUBLE PRECISION NOT NULL, system TEXT COLLATE \"C\", code TEXT COLLATE \"C\", unit TEXT COLLATE \"C\");
CREATE INDEX idx_quantity_value ON idx_quantity (param, value);
CREATE INDEX idx_quantity_rid ON idx_quantity (rid);
CREATE TABLE idx_uri (rid BIGINT NOT NULL, param TEXT COLLATE \"C\" NOT NULL, value TEXT COLLATE \"C\" NOT NULL);
CREATE INDEX idx_uri_value ON idx_uri (param, value);
CREATE INDEX idx_uri_rid ON idx_uri (rid);
",
    ),
    (
        2,
        // Paging state shared by every process; disposable, so not WAL-logged.
        "CREATE UNLOGGED TABLE result_sets (
            id TEXT PRIMARY KEY, created BIGINT NOT NULL, payload BYTEA NOT NULL, keys BIGINT[] NOT NULL);
         CREATE INDEX result_sets_created ON result_sets (created);",
    ),
    (
        3,
        // Scans of one type in key order (views, federation) walk this index instead of sorting.
        "CREATE INDEX resources_type_rid ON resources (type, rid);",
    ),
    (
        4,
        // Data-quality figures shared by every process: delta rows appended by each unit of
        // work (no hot rows to lock), folded now and then; patients' keys for uniqueness.
        "CREATE TABLE quality_deltas (id BIGSERIAL PRIMARY KEY, source TEXT NOT NULL, rtype TEXT NOT NULL,
            metric TEXT NOT NULL, n BIGINT NOT NULL, created BIGINT NOT NULL);
         CREATE TABLE quality_patients (kind TEXT NOT NULL, key TEXT NOT NULL, patient TEXT NOT NULL,
            PRIMARY KEY (kind, key));
         CREATE TABLE quality_pairs (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b));",
    ),
    (
        5,
        // What every process of a node must agree on: used assertion ids, failed secrets.
        "CREATE TABLE shared_state (key TEXT PRIMARY KEY, value BYTEA NOT NULL, expires BIGINT NOT NULL);",
    ),
];

fn db_err(e: postgres::Error) -> StoreError {
    use postgres::error::SqlState;
    if e.code() == Some(&SqlState::UNIQUE_VIOLATION) {
        return StoreError::Conflict("a concurrent write created the same resource".into());
    }
    // Transactions that wrote the same resources in another order: one of them is
    // chosen to fail and may simply be tried again.
    if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED) || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE) {
        return StoreError::Conflict("a concurrent transaction wrote the same resources; try again".into());
    }
    StoreError::Postgres(Box::new(e))
}

/// Whether `s` can be used as a schema name unquoted (it is spliced into SQL).
pub fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Prepared statements per connection, by SQL text; bounded so that ad-hoc
/// search shapes cannot grow it without limit.
#[derive(Default)]
struct StatementCache(HashMap<String, Statement>);

const STATEMENT_CACHE_SIZE: usize = 512;

impl StatementCache {
    fn get(
        &mut self,
        prepare: impl FnOnce(&str) -> Result<Statement, postgres::Error>,
        sql: &str,
    ) -> Result<Statement, StoreError> {
        if let Some(st) = self.0.get(sql) {
            return Ok(st.clone());
        }
        let st = prepare(sql).map_err(db_err)?;
        if self.0.len() >= STATEMENT_CACHE_SIZE {
            self.0.clear();
        }
        self.0.insert(sql.to_string(), st.clone());
        Ok(st)
    }
}

/// A pooled connection with its statement cache.
struct Conn {
    client: Client,
    cache: StatementCache,
}

impl Conn {
    fn stmt(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let client = &mut self.client;
        self.cache.get(|q| client.prepare(q), sql)
    }
}

/// A small blocking connection pool.
struct Pool {
    url: String,
    schema: String,
    idle: Mutex<Vec<Conn>>,
    available: Condvar,
    open: Mutex<usize>,
    max: usize,
}

impl Pool {
    fn connect(&self) -> Result<Conn, StoreError> {
        let mut c = Client::connect(&self.url, NoTls).map_err(|e| StoreError::Open {
            path: redact(&self.url),
            message: e.to_string(),
        })?;
        c.batch_execute(&format!("SET search_path TO {}", self.schema))
            .map_err(db_err)?;
        Ok(Conn {
            client: c,
            cache: StatementCache::default(),
        })
    }

    fn get(&self) -> Result<Conn, StoreError> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(c) = idle.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                *self.open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                continue;
            }
            {
                let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
                if *open < self.max {
                    *open += 1;
                    drop(open);
                    drop(idle);
                    return self.connect().inspect_err(|_| {
                        *self.open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
                    });
                }
            }
            idle = self.available.wait(idle).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn put(&self, c: Conn) {
        if c.client.is_closed() {
            *self.open.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        } else {
            self.idle.lock().unwrap_or_else(|e| e.into_inner()).push(c);
        }
        self.available.notify_one();
    }
}

impl Pool {
    /// Closes idle connections on a plain thread: the blocking client must not
    /// be dropped on a thread that drives async tasks (an actix worker).
    fn close_idle(&self) {
        let clients: Vec<Conn> = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|e| e.into_inner()));
        if !clients.is_empty() {
            let _ = std::thread::spawn(move || drop(clients)).join();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close_idle();
    }
}

/// Hides a password in a connection URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

pub struct PostgresStore {
    pool: Arc<Pool>,
    /// Resources written, and the count at the last ANALYZE: after bulk loads
    /// the planner needs fresh statistics sooner than autovacuum gives them.
    written: std::sync::atomic::AtomicU64,
    analyzed_at: std::sync::atomic::AtomicU64,
}

/// New resources after which the node refreshes planner statistics itself.
const ANALYZE_EVERY: u64 = 20_000;

/// Applies pending migrations to `schema` (created if absent). Safe to run
/// concurrently from several processes and to run again.
pub fn migrate(url: &str, schema: &str) -> Result<Vec<i32>, StoreError> {
    if !valid_schema(schema) {
        return Err(StoreError::Open {
            path: redact(url),
            message: format!("schema name '{schema}' must be lower-case letters, digits and '_'"),
        });
    }
    let mut c = Client::connect(url, NoTls).map_err(|e| StoreError::Open {
        path: redact(url),
        message: e.to_string(),
    })?;
    let mut tx = c.transaction().map_err(db_err)?;
    // One migrator at a time, whatever the process.
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('pennine-migrate'))", &[])
        .map_err(db_err)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET LOCAL search_path TO {schema};
         CREATE TABLE IF NOT EXISTS schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());"
    ))
    .map_err(db_err)?;
    let applied: Vec<i32> = tx
        .query("SELECT version FROM schema_migrations", &[])
        .map_err(db_err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, script) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(script).map_err(db_err)?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version])
            .map_err(db_err)?;
        done.push(*version);
    }
    let newest = applied.iter().copied().max().unwrap_or(0);
    let known = MIGRATIONS.iter().map(|m| m.0).max().unwrap_or(0);
    if newest > known {
        return Err(StoreError::Open {
            path: redact(url),
            message: format!("the database is at schema version {newest}, newer than this build knows ({known})"),
        });
    }
    tx.commit().map_err(db_err)?;
    Ok(done)
}

impl PostgresStore {
    /// Connects, migrates the schema and keeps up to `pool_size` connections.
    pub fn open(url: &str, schema: &str, pool_size: usize) -> Result<PostgresStore, StoreError> {
        migrate(url, schema)?;
        let pool = Arc::new(Pool {
            url: url.to_string(),
            schema: schema.to_string(),
            idle: Mutex::new(Vec::new()),
            available: Condvar::new(),
            open: Mutex::new(0),
            max: pool_size.max(2),
        });
        // Fail at start-up, not on the first request.
        let c = pool.get()?;
        pool.put(c);
        Ok(PostgresStore {
            pool,
            written: Default::default(),
            analyzed_at: Default::default(),
        })
    }

    /// Runs ANALYZE in the background once enough has been written since the last one.
    fn note_written(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let total = self.written.fetch_add(n, Ordering::Relaxed) + n;
        let last = self.analyzed_at.load(Ordering::Relaxed);
        if total - last >= ANALYZE_EVERY
            && self
                .analyzed_at
                .compare_exchange(last, total, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let pool = self.pool.clone();
            std::thread::spawn(move || {
                if let Ok(mut c) = pool.get() {
                    if let Err(e) = c.client.batch_execute(
                        "ANALYZE resources, versions, idx_token, idx_string, idx_date, idx_ref, idx_quantity, idx_uri",
                    ) {
                        tracing::warn!(error = %e, "ANALYZE failed");
                    }
                    pool.put(c);
                }
            });
        }
    }

    fn with_client<T>(&self, f: impl FnOnce(&mut Conn) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut c = self.pool.get()?;
        let r = match super::current_cancel() {
            None => f(&mut c),
            // A search whose client may go: a watcher asks the server to cancel the
            // running statement once it has (PostgreSQL's cancel request).
            Some(cancel) => {
                let token = c.client.cancel_token();
                // `done` is held while a cancel is sent, so none reaches a later statement.
                let done = Arc::new(Mutex::new(false));
                let (stop, stopped) = std::sync::mpsc::channel::<()>();
                let finished = done.clone();
                let watcher = std::thread::Builder::new()
                    .name("pg-cancel-watch".into())
                    .spawn(move || loop {
                        match stopped.recv_timeout(std::time::Duration::from_millis(25)) {
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        if cancel.cancelled() {
                            let finished = finished.lock().unwrap_or_else(|e| e.into_inner());
                            if !*finished {
                                let _ = token.cancel_query(postgres::NoTls);
                            }
                            return;
                        }
                    });
                let r = f(&mut c);
                *done.lock().unwrap_or_else(|e| e.into_inner()) = true;
                drop(stop);
                if let Ok(w) = watcher {
                    let _ = w.join();
                }
                r
            }
        };
        self.pool.put(c);
        r
    }
}

fn pg_args(args: &[Arg]) -> Vec<Box<dyn ToSql + Sync>> {
    args.iter()
        .map(|a| -> Box<dyn ToSql + Sync> {
            match a {
                Arg::Int(i) => Box::new(*i),
                Arg::Real(f) => Box::new(*f),
                Arg::Text(s) => Box::new(s.clone()),
            }
        })
        .collect()
}

fn refs(args: &[Box<dyn ToSql + Sync>]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|b| b.as_ref()).collect()
}

fn row_to_stored(r: &Row) -> Stored {
    let json: Option<Vec<u8>> = r.get(6);
    let method: String = r.get(5);
    Stored {
        key: r.get(0),
        rtype: r.get(1),
        id: r.get(2),
        version: r.get::<_, i64>(3) as u64,
        last_updated: r.get(4),
        method: Method::parse(&method),
        json: json.map(Arc::from),
    }
}

type SqlValue = Box<dyn ToSql + Sync>;

/// Tables that take bulk inserts, in the order `flush` writes them: each one's `COPY`
/// and its columns' types as `COPY ... BINARY` sends them.
const TABLES: [(&str, &[Type]); 9] = [
    (
        "COPY resources (rid, type, id, version, last_updated, deleted) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::INT2],
    ),
    (
        "COPY versions (rid, version, type, last_updated, method, json) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::INT8, Type::TEXT, Type::INT8, Type::TEXT, Type::BYTEA],
    ),
    (
        "COPY idx_token (rid, param, system, code, text) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
    ),
    (
        "COPY idx_string (rid, param, norm, exact) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT],
    ),
    (
        "COPY idx_date (rid, param, lo, hi) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::INT8, Type::INT8],
    ),
    (
        "COPY idx_ref (rid, param, ttype, tid, url) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::TEXT, Type::TEXT, Type::TEXT],
    ),
    (
        "COPY idx_quantity (rid, param, value, system, code, unit) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::FLOAT8, Type::TEXT, Type::TEXT, Type::TEXT],
    ),
    (
        "COPY idx_uri (rid, param, value) FROM STDIN (FORMAT binary)",
        &[Type::INT8, Type::TEXT, Type::TEXT],
    ),
    (
        "COPY quality_deltas (source, rtype, metric, n, created) FROM STDIN (FORMAT binary)",
        &[Type::TEXT, Type::TEXT, Type::TEXT, Type::INT8, Type::INT8],
    ),
];

struct PgTxn<'a, 'c> {
    tx: &'a mut Transaction<'c>,
    cache: &'a mut StatementCache,
    locked_types: Vec<String>,
    savepoints: usize,
    /// New rows by table (index into `TABLES`), inserted in bulk by `flush`
    /// before any read in the transaction and before commit.
    pending: [Vec<Vec<SqlValue>>; 9],
    /// The unit's quality figures, queued as delta rows when it commits.
    counts: QualityCounts,
    /// Pre-allocated resource keys from the `resources` sequence.
    rids: Vec<i64>,
    /// Versions written by this unit of work.
    written: u64,
}

impl PgTxn<'_, '_> {
    fn stmt(&mut self, sql: &str) -> Result<Statement, StoreError> {
        let tx = &mut *self.tx;
        self.cache.get(|q| tx.prepare(q), sql)
    }

    fn next_rid(&mut self) -> Result<i64, StoreError> {
        if self.rids.is_empty() {
            let st =
                self.stmt("SELECT nextval(pg_get_serial_sequence('resources', 'rid')) FROM generate_series(1, 256)")?;
            let rows = self.tx.query(&st, &[]).map_err(db_err)?;
            self.rids = rows.iter().rev().map(|r| r.get(0)).collect();
        }
        self.rids
            .pop()
            .ok_or_else(|| StoreError::Internal("no resource key allocated".into()))
    }

    /// Inserts every pending row, one binary `COPY` per table. One statement text per
    /// table whatever the row count: multi-row `INSERT`s were a new statement for
    /// every count, parsed and planned each time, and that was most of the backend's
    /// ingest time.
    fn flush(&mut self) -> Result<(), StoreError> {
        for (t, (copy, types)) in TABLES.iter().enumerate() {
            if self.pending[t].is_empty() {
                continue;
            }
            let rows = std::mem::take(&mut self.pending[t]);
            let st = self.stmt(copy)?;
            let sink = self.tx.copy_in(&st).map_err(db_err)?;
            let mut w = BinaryCopyInWriter::new(sink, types);
            for row in &rows {
                let values: Vec<&(dyn ToSql + Sync)> = row.iter().map(|b| b.as_ref()).collect();
                w.write(&values).map_err(db_err)?;
            }
            w.finish().map_err(db_err)?;
        }
        Ok(())
    }

    /// Queues the unit's quality figures as one delta row per (source, type, metric).
    fn queue_counts(&mut self) {
        let now = crate::fhir::time::now_millis();
        for ((source, rtype, metric), n) in std::mem::take(&mut self.counts) {
            self.pending[8].push(vec![
                Box::new(source),
                Box::new(rtype),
                Box::new(metric),
                Box::new(n),
                Box::new(now),
            ]);
        }
    }

    fn queue_index(&mut self, rid: i64, index: &IndexRows) {
        let b = |v: &str| -> SqlValue { Box::new(v.to_string()) };
        let o = |v: &Option<String>| -> SqlValue { Box::new(v.clone()) };
        let key = || -> SqlValue { Box::new(rid) };
        for t in &index.tokens {
            self.pending[2].push(vec![key(), b(&t.param), o(&t.system), o(&t.code), o(&t.text)]);
        }
        for s in &index.strings {
            self.pending[3].push(vec![key(), b(&s.param), b(&s.norm), b(&s.exact)]);
        }
        for d in &index.dates {
            self.pending[4].push(vec![key(), b(&d.param), Box::new(d.lo), Box::new(d.hi)]);
        }
        for r in &index.refs {
            self.pending[5].push(vec![key(), b(&r.param), o(&r.target_type), o(&r.target_id), o(&r.url)]);
        }
        for q in index.quantities.iter().chain(&index.numbers) {
            self.pending[6].push(vec![
                key(),
                b(&q.param),
                Box::new(q.value),
                o(&q.system),
                o(&q.code),
                o(&q.unit),
            ]);
        }
        for u in &index.uris {
            self.pending[7].push(vec![key(), b(&u.param), b(&u.value)]);
        }
    }
}

impl WriteTxn for PgTxn<'_, '_> {
    fn current(&mut self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError> {
        self.flush()?;
        let st =
            self.stmt("SELECT version, deleted, last_updated FROM resources WHERE type = $1 AND id = $2 FOR UPDATE")?;
        let row = self.tx.query_opt(&st, &[&rtype, &id]).map_err(db_err)?;
        Ok(row.map(|r| Current {
            version: r.get::<_, i64>(0) as u64,
            deleted: r.get::<_, i16>(1) != 0,
            last_updated: r.get(2),
        }))
    }

    fn search_ids(&mut self, req: &SearchRequest, limit: usize) -> Result<Vec<String>, StoreError> {
        self.flush()?;
        // Conditional interactions on a type serialise across every process
        // sharing the database until this transaction ends.
        if !self.locked_types.contains(&req.rtype) {
            let st = self.stmt("SELECT pg_advisory_xact_lock(hashtext('pennine-conditional:' || $1))")?;
            self.tx.execute(&st, &[&req.rtype]).map_err(db_err)?;
            self.locked_types.push(req.rtype.clone());
        }
        let q = sql::search_ids(req, limit);
        let args = pg_args(&q.args);
        let rows = self
            .tx
            .query(sql::numbered(&q.text).as_str(), &refs(&args))
            .map_err(db_err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    fn write(&mut self, v: &NewVersion) -> Result<(), StoreError> {
        let deleted: i16 = v.json.is_none() as i16;
        let version = v.version as i64;
        let rid: i64 = if v.existed {
            self.flush()?;
            let st = self.stmt(
                "UPDATE resources SET version = $3, last_updated = $4, deleted = $5 WHERE type = $1 AND id = $2 RETURNING rid",
            )?;
            let row = self
                .tx
                .query_one(&st, &[&v.rtype, &v.id, &version, &v.last_updated, &deleted])
                .map_err(db_err)?;
            let rid: i64 = row.get(0);
            for table in super::INDEX_TABLES {
                let st = self.stmt(&format!("DELETE FROM {table} WHERE rid = $1"))?;
                self.tx.execute(&st, &[&rid]).map_err(db_err)?;
            }
            rid
        } else {
            let rid = self.next_rid()?;
            self.pending[0].push(vec![
                Box::new(rid),
                Box::new(v.rtype.to_string()),
                Box::new(v.id.to_string()),
                Box::new(version),
                Box::new(v.last_updated),
                Box::new(deleted),
            ]);
            rid
        };
        self.written += 1;
        self.pending[1].push(vec![
            Box::new(rid),
            Box::new(version),
            Box::new(v.rtype.to_string()),
            Box::new(v.last_updated),
            Box::new(v.method.as_str()),
            Box::new(v.json.map(<[u8]>::to_vec)),
        ]);
        if let (Some(index), Some(_)) = (v.index, v.json) {
            self.queue_index(rid, index);
        }
        Ok(())
    }

    fn add_quality(
        &mut self,
        counts: &QualityCounts,
        patients: &[(String, Vec<(String, String)>)],
    ) -> Result<usize, StoreError> {
        let new = sum_counts(&mut self.counts, counts);
        let key = self.stmt(&sql::numbered(sql::QUALITY_KEY))?;
        let holder = self.stmt(&sql::numbered(sql::QUALITY_KEY_HOLDER))?;
        let pair = self.stmt(&sql::numbered(sql::QUALITY_PAIR))?;
        for (patient, keys) in patients {
            self.tx.execute(&key, &[&"id", patient, patient]).map_err(db_err)?;
            for (kind, k) in keys {
                self.tx.execute(&key, &[kind, k, patient]).map_err(db_err)?;
                let held: String = self.tx.query_one(&holder, &[kind, k]).map_err(db_err)?.get(0);
                if &held != patient {
                    let (a, b) = if *patient < held {
                        (patient, &held)
                    } else {
                        (&held, patient)
                    };
                    self.tx.execute(&pair, &[a, b]).map_err(db_err)?;
                }
            }
        }
        Ok(new)
    }

    fn shared_get(&mut self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        // Held until the unit ends, whether or not the row exists yet.
        let lock = self.stmt("SELECT pg_advisory_xact_lock(hashtext('pennine-shared:' || $1))")?;
        self.tx.execute(&lock, &[&key]).map_err(db_err)?;
        let st = self.stmt(&sql::numbered(sql::SHARED_GET))?;
        let row = self.tx.query_opt(&st, &[&key]).map_err(db_err)?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    fn shared_put(&mut self, key: &str, value: Option<(&[u8], i64)>) -> Result<(), StoreError> {
        match value {
            Some((v, expires)) => {
                let st = self.stmt(&sql::numbered(sql::SHARED_PUT))?;
                self.tx.execute(&st, &[&key, &v, &expires]).map_err(db_err)?
            }
            None => {
                let st = self.stmt(&sql::numbered(sql::SHARED_DELETE))?;
                self.tx.execute(&st, &[&key]).map_err(db_err)?
            }
        };
        if super::rand_purge() {
            let now = crate::fhir::time::now_millis() / 1000;
            let st = self.stmt(&sql::numbered(sql::SHARED_PURGE))?;
            self.tx.execute(&st, &[&now]).map_err(db_err)?;
        }
        Ok(())
    }

    fn compact_quality(&mut self) -> Result<(), StoreError> {
        // One statement, one snapshot: rows other processes add meanwhile are left alone.
        self.tx
            .batch_execute(
                "WITH gone AS (DELETE FROM quality_deltas RETURNING source, rtype, metric, n, created)
                 INSERT INTO quality_deltas (source, rtype, metric, n, created)
                 SELECT source, rtype, metric, SUM(n)::BIGINT, MIN(created) FROM gone GROUP BY source, rtype, metric",
            )
            .map_err(db_err)
    }

    fn nested(&mut self, f: &mut dyn FnMut(&mut dyn WriteTxn) -> bool) -> Result<bool, StoreError> {
        self.flush()?;
        let counts_before = self.counts.clone();
        self.savepoints += 1;
        let name = format!("entry{}", self.savepoints);
        self.tx.batch_execute(&format!("SAVEPOINT {name}")).map_err(db_err)?;
        let mut keep = f(self);
        if keep {
            keep = self.flush().is_ok();
        }
        if !keep {
            // What the entry queued but did not flush is dropped with it.
            self.pending.iter_mut().for_each(Vec::clear);
            self.counts = counts_before;
        }
        let end = if keep {
            format!("RELEASE SAVEPOINT {name}")
        } else {
            format!("ROLLBACK TO SAVEPOINT {name}; RELEASE SAVEPOINT {name}")
        };
        self.tx.batch_execute(&end).map_err(db_err)?;
        Ok(keep)
    }

    fn now(&mut self) -> i64 {
        crate::fhir::time::now_millis()
    }
}

impl Store for PostgresStore {
    fn read(&self, rtype: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::READ_CURRENT))?;
            let row = c.client.query_opt(&st, &[&rtype, &id]).map_err(db_err)?;
            Ok(row.as_ref().map(row_to_stored))
        })
    }

    fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<Option<Stored>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::READ_VERSION))?;
            let version = version as i64;
            let row = c.client.query_opt(&st, &[&rtype, &id, &version]).map_err(db_err)?;
            Ok(row.as_ref().map(row_to_stored))
        })
    }

    fn history(&self, q: &HistoryQuery) -> Result<(Vec<Stored>, u64), StoreError> {
        self.with_client(|c| {
            let (filter, args) = sql::history_filter(q);
            let count_sql = sql::numbered(&format!("SELECT COUNT(*) FROM versions v JOIN resources r ON r.rid = v.rid{filter}"));
            let pa = pg_args(&args);
            let st = c.stmt(&count_sql)?;
            let total: i64 = c.client.query_one(&st, &refs(&pa)).map_err(db_err)?.get(0);
            let mut page_args = args;
            page_args.push(Arg::Int(q.limit as i64));
            page_args.push(Arg::Int(q.offset as i64));
            let page_sql = sql::numbered(&format!(
                "SELECT {} FROM versions v JOIN resources r ON r.rid = v.rid{filter} ORDER BY v.seq DESC LIMIT ? OFFSET ?",
                sql::STORED_COLUMNS
            ));
            let pa = pg_args(&page_args);
            let st = c.stmt(&page_sql)?;
            let rows = c.client.query(&st, &refs(&pa)).map_err(db_err)?;
            Ok((rows.iter().map(row_to_stored).collect(), total as u64))
        })
    }

    fn search(&self, req: &SearchRequest, limit: usize) -> Result<Vec<i64>, StoreError> {
        self.with_client(|c| {
            let q = sql::search_keys(req, limit);
            let args = pg_args(&q.args);
            let st = c.stmt(&sql::numbered(&q.text))?;
            let rows = c.client.query(&st, &refs(&args)).map_err(db_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn count(&self, req: &SearchRequest) -> Result<u64, StoreError> {
        self.with_client(|c| {
            let q = sql::count(req);
            let args = pg_args(&q.args);
            let st = c.stmt(&sql::numbered(&q.text))?;
            let n: i64 = c.client.query_one(&st, &refs(&args)).map_err(db_err)?.get(0);
            Ok(n as u64)
        })
    }

    fn fetch(&self, keys: &[i64]) -> Result<Vec<Stored>, StoreError> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        self.with_client(|c| {
            // One round trip for the page, then back into the requested order.
            let st = c.stmt(&format!(
                "SELECT {} FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version
                 WHERE r.rid = ANY($1) AND r.deleted = 0",
                sql::STORED_COLUMNS
            ))?;
            let rows = c.client.query(&st, &[&keys]).map_err(db_err)?;
            let mut by_key: std::collections::HashMap<i64, Stored> =
                rows.iter().map(row_to_stored).map(|s| (s.key, s)).collect();
            Ok(keys.iter().filter_map(|k| by_key.remove(k)).collect())
        })
    }

    fn include(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(
                "SELECT t.rid, t.type FROM idx_ref x JOIN resources t ON t.type = x.ttype AND t.id = x.tid
                 WHERE x.rid = ANY($1) AND x.param = $2 AND t.deleted = 0",
            )?;
            let rows = c.client.query(&st, &[&keys, &&*inc.key]).map_err(db_err)?;
            Ok(rows
                .iter()
                .filter(|r| inc.target_type.as_deref().is_none_or(|t| r.get::<_, &str>(1) == t))
                .map(|r| r.get(0))
                .collect())
        })
    }

    fn revinclude(&self, keys: &[i64], inc: &Include) -> Result<Vec<i64>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(
                "SELECT x.rid FROM resources t
                 JOIN idx_ref x ON x.param = $2 AND x.tid = t.id AND x.ttype = t.type
                 JOIN resources s ON s.rid = x.rid
                 WHERE t.rid = ANY($1) AND s.deleted = 0 AND ($3::text IS NULL OR t.type = $3)",
            )?;
            let rows = c
                .client
                .query(&st, &[&keys, &&*inc.key, &inc.target_type])
                .map_err(db_err)?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn submit(&self, job: WriteJob) -> Result<(), StoreError> {
        self.with_client(|c| {
            let Conn { client, cache } = c;
            let mut tx = client.transaction().map_err(db_err)?;
            let mut txn = PgTxn {
                tx: &mut tx,
                cache,
                locked_types: Vec::new(),
                savepoints: 0,
                pending: Default::default(),
                counts: QualityCounts::new(),
                rids: Vec::new(),
                written: 0,
            };
            let kept = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut txn)));
            let flushed = match kept {
                Ok(true) => {
                    txn.queue_counts();
                    txn.flush().map(|()| true)
                }
                Ok(false) => Ok(false),
                Err(_) => Err(StoreError::JobPanicked),
            };
            let written = txn.written;
            match flushed {
                Ok(true) => {
                    tx.commit().map_err(db_err)?;
                    self.note_written(written);
                    Ok(())
                }
                Ok(false) => tx.rollback().map_err(db_err),
                Err(e) => {
                    let _ = tx.rollback();
                    Err(e)
                }
            }
        })
    }

    fn scan(&self, rtype: &str, after: i64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::SCAN_CURRENT))?;
            let rows = c
                .client
                .query(&st, &[&rtype, &after, &(limit as i64)])
                .map_err(db_err)?;
            Ok(rows.iter().map(row_to_stored).collect())
        })
    }

    fn last(&self, rtype: &str) -> Result<Option<Stored>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::SCAN_LAST))?;
            let rows = c.client.query(&st, &[&rtype]).map_err(db_err)?;
            Ok(rows.first().map(row_to_stored))
        })
    }

    fn changed_since(&self, rtype: &str, since: i64) -> Result<Vec<super::Changed>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::CHANGED_SINCE))?;
            let rows = c.client.query(&st, &[&since, &rtype]).map_err(db_err)?;
            Ok(rows
                .iter()
                .map(|r| (r.get::<_, i64>(0), r.get::<_, Option<Vec<u8>>>(1).map(Arc::from)))
                .collect())
        })
    }

    fn change_marker(&self) -> Result<i64, StoreError> {
        self.with_client(|c| {
            let row = c.client.query_one(sql::CHANGE_MARKER, &[]).map_err(db_err)?;
            Ok(row.get(0))
        })
    }

    fn newest(&self) -> Result<Option<i64>, StoreError> {
        self.with_client(|c| {
            let row = c
                .client
                .query_opt("SELECT last_updated FROM versions ORDER BY seq DESC LIMIT 1", &[])
                .map_err(db_err)?;
            Ok(row.map(|r| r.get(0)))
        })
    }

    fn shared_read(&self, key: &str, now: i64) -> Result<Option<Vec<u8>>, StoreError> {
        self.with_client(|c| {
            let st = c.stmt(&sql::numbered(sql::SHARED_GET))?;
            let row = c.client.query_opt(&st, &[&key]).map_err(db_err)?;
            Ok(row
                .filter(|r| r.get::<_, i64>(1) >= now)
                .map(|r| r.get::<_, Vec<u8>>(0)))
        })
    }

    fn quality(&self) -> Result<super::QualityTotals, StoreError> {
        self.with_client(|c| {
            let mut totals = super::QualityTotals::default();
            let st = c.stmt(&sql::numbered(sql::QUALITY_TOTALS))?;
            for r in c.client.query(&st, &[]).map_err(db_err)? {
                let created: i64 = r.get(4);
                totals.since = Some(totals.since.map_or(created, |s| s.min(created)));
                totals.rows += r.get::<_, i64>(5) as u64;
                totals.counts.push(((r.get(0), r.get(1), r.get(2)), r.get(3)));
            }
            let st = c.stmt(sql::QUALITY_PATIENTS)?;
            totals.patients = c.client.query_one(&st, &[]).map_err(db_err)?.get::<_, i64>(0) as u64;
            let st = c.stmt(sql::QUALITY_PAIRS)?;
            totals.pairs = c.client.query_one(&st, &[]).map_err(db_err)?.get::<_, i64>(0) as u64;
            Ok(totals)
        })
    }

    fn ready(&self) -> Result<(), StoreError> {
        self.with_client(|c| c.client.simple_query("SELECT 1").map(|_| ()).map_err(db_err))
    }

    fn save_result_set(&self, set: super::ResultSet) -> Result<String, StoreError> {
        let id = super::result_sets::new_id();
        let now = crate::fhir::time::now_millis();
        let expired = now - super::result_sets::RESULT_SET_TTL.as_millis() as i64;
        self.with_client(|c| {
            let st = c.stmt("INSERT INTO result_sets (id, created, payload, keys) VALUES ($1, $2, $3, $4)")?;
            c.client
                .execute(&st, &[&id, &now, &set.payload, &set.keys])
                .map_err(db_err)?;
            // Expired sets go as new ones arrive (cheap: indexed on `created`).
            let st = c.stmt("DELETE FROM result_sets WHERE created < $1")?;
            c.client.execute(&st, &[&expired]).map_err(db_err)?;
            Ok(id)
        })
    }

    fn load_result_set(&self, id: &str) -> Result<Option<Arc<super::ResultSet>>, StoreError> {
        let fresh = crate::fhir::time::now_millis() - super::result_sets::RESULT_SET_TTL.as_millis() as i64;
        self.with_client(|c| {
            let st = c.stmt("SELECT payload, keys FROM result_sets WHERE id = $1 AND created >= $2")?;
            let row = c.client.query_opt(&st, &[&id, &fresh]).map_err(db_err)?;
            Ok(row.map(|r| {
                Arc::new(super::ResultSet {
                    payload: r.get(0),
                    keys: r.get(1),
                })
            }))
        })
    }

    fn close(&self) {
        self.pool.close_idle();
    }
}

/// Drops a schema and everything in it (benchmarks clean up after themselves).
/// On a thread of its own: the synchronous client must not run on an async worker.
pub fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    if !valid_schema(schema) {
        return Err(StoreError::Internal(format!("'{schema}' is not a schema name")));
    }
    let (url, schema) = (url.to_string(), schema.to_string());
    std::thread::spawn(move || -> Result<(), StoreError> {
        let mut c = postgres::Client::connect(&url, postgres::NoTls).map_err(db_err)?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .map_err(db_err)
    })
    .join()
    .map_err(|_| StoreError::Internal("the schema-dropping thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in `.ci/run`'s PostgreSQL pass (`PENNINE_TEST_DATABASE`); says so otherwise.
    #[test]
    fn a_statement_is_cancelled_soon_after_its_asker_has_gone() {
        let Ok(url) = std::env::var("PENNINE_TEST_DATABASE") else {
            println!("a_statement_is_cancelled_soon_after_its_asker_has_gone: needs PENNINE_TEST_DATABASE");
            return;
        };
        let schema = format!("t_cancel_{}", uuid::Uuid::new_v4().simple());
        let store = PostgresStore::open(&url, &schema, 2).unwrap();
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = flag.clone();
        let cancel = crate::store::Cancel::new(move || seen.load(std::sync::atomic::Ordering::SeqCst));
        let setter = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let started = std::time::Instant::now();
        let slept =
            cancel.during(|| store.with_client(|c| c.client.batch_execute("SELECT pg_sleep(30)").map_err(db_err)));
        setter.join().unwrap();
        assert!(slept.is_err(), "the statement was cancelled");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        // The connection serves the next statement (no cancel left over for it).
        let one = store.with_client(|c| {
            Ok(c.client
                .query_one("SELECT 1::INT", &[])
                .map_err(db_err)?
                .get::<_, i32>(0))
        });
        assert_eq!(one.unwrap(), 1);
        store.close();
        if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }

    #[test]
    fn hides_passwords_and_checks_schema_names() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://h/db"), "postgres://h/db");
        assert!(valid_schema("pennine_nenc"));
        assert!(!valid_schema("x; DROP TABLE y"));
        assert!(!valid_schema("Upper"));
    }
}
