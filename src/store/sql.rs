//! Translation of typed search requests into SQL over the index tables.
//!
//! Placeholders are `?`; a backend with numbered placeholders renumbers them.
//! Every condition becomes a predicate on the resource alias, so chains nest.

use crate::search::params::ParamKind;
use crate::search::query::{
    Condition, DateCond, NumCond, Prefix, RefValue, SearchRequest, SortKey, StringMode, SystemMatch, UriMode,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Real(f64),
    Text(String),
}

#[derive(Debug, Default)]
pub struct Sql {
    pub text: String,
    pub args: Vec<Arg>,
}

impl Sql {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }
    fn arg(&mut self, a: Arg) {
        self.text.push('?');
        self.args.push(a);
    }
    fn text_arg(&mut self, s: &str) {
        self.arg(Arg::Text(s.to_string()));
    }
}

pub fn table_for(kind: ParamKind) -> &'static str {
    match kind {
        ParamKind::Token => "idx_token",
        ParamKind::String => "idx_string",
        ParamKind::Date => "idx_date",
        ParamKind::Reference => "idx_ref",
        ParamKind::Quantity | ParamKind::Number => "idx_quantity",
        ParamKind::Uri => "idx_uri",
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern with `ESCAPE '\'`.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_upper(prefix: &str) -> String {
    format!("{prefix}\u{10FFFF}")
}

fn or_join<T>(sql: &mut Sql, items: &[T], mut f: impl FnMut(&mut Sql, &T)) {
    sql.push("(");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(");
        f(sql, item);
        sql.push(")");
    }
    sql.push(")");
}

fn date_pred(sql: &mut Sql, lo: &str, hi: &str, c: &DateCond) {
    let now = crate::fhir::time::now_millis();
    match c.prefix {
        Prefix::Eq => {
            sql.push(&format!("{lo} >= "));
            sql.arg(Arg::Int(c.lo));
            sql.push(&format!(" AND {hi} <= "));
            sql.arg(Arg::Int(c.hi));
        }
        Prefix::Ne => {
            sql.push(&format!("NOT ({lo} >= "));
            sql.arg(Arg::Int(c.lo));
            sql.push(&format!(" AND {hi} <= "));
            sql.arg(Arg::Int(c.hi));
            sql.push(")");
        }
        Prefix::Gt => {
            sql.push(&format!("{hi} > "));
            sql.arg(Arg::Int(c.hi));
        }
        Prefix::Lt => {
            sql.push(&format!("{lo} < "));
            sql.arg(Arg::Int(c.lo));
        }
        Prefix::Ge => {
            sql.push(&format!("{hi} >= "));
            sql.arg(Arg::Int(c.lo));
        }
        Prefix::Le => {
            sql.push(&format!("{lo} <= "));
            sql.arg(Arg::Int(c.hi));
        }
        Prefix::Sa => {
            sql.push(&format!("{lo} > "));
            sql.arg(Arg::Int(c.hi));
        }
        Prefix::Eb => {
            sql.push(&format!("{hi} < "));
            sql.arg(Arg::Int(c.lo));
        }
        Prefix::Ap => {
            // 10% of the distance from now, at least a day.
            let gap = ((now - c.lo).abs() / 10).max(86_400_000);
            sql.push(&format!("{lo} <= "));
            sql.arg(Arg::Int(c.hi.saturating_add(gap)));
            sql.push(&format!(" AND {hi} >= "));
            sql.arg(Arg::Int(c.lo.saturating_sub(gap)));
        }
    }
}

fn number_pred(sql: &mut Sql, c: &NumCond) {
    match c.prefix {
        Prefix::Eq => {
            sql.push("value >= ");
            sql.arg(Arg::Real(c.lo));
            sql.push(" AND value < ");
            sql.arg(Arg::Real(c.hi));
        }
        Prefix::Ne => {
            sql.push("NOT (value >= ");
            sql.arg(Arg::Real(c.lo));
            sql.push(" AND value < ");
            sql.arg(Arg::Real(c.hi));
            sql.push(")");
        }
        Prefix::Gt | Prefix::Sa => {
            sql.push("value > ");
            sql.arg(Arg::Real(c.value));
        }
        Prefix::Lt | Prefix::Eb => {
            sql.push("value < ");
            sql.arg(Arg::Real(c.value));
        }
        Prefix::Ge => {
            sql.push("value >= ");
            sql.arg(Arg::Real(c.value));
        }
        Prefix::Le => {
            sql.push("value <= ");
            sql.arg(Arg::Real(c.value));
        }
        Prefix::Ap => {
            let d = (c.value * 0.1).abs();
            sql.push("value >= ");
            sql.arg(Arg::Real(c.value - d));
            sql.push(" AND value <= ");
            sql.arg(Arg::Real(c.value + d));
        }
    }
    match (&c.system, &c.code) {
        (Some(s), Some(code)) => {
            sql.push(" AND system = ");
            sql.text_arg(s);
            sql.push(" AND code = ");
            sql.text_arg(code);
        }
        (None, Some(code)) => {
            sql.push(" AND (code = ");
            sql.text_arg(code);
            sql.push(" OR unit = ");
            sql.text_arg(code);
            sql.push(")");
        }
        (Some(s), None) => {
            sql.push(" AND system = ");
            sql.text_arg(s);
        }
        (None, None) => {}
    }
}

fn index_subquery(sql: &mut Sql, table: &str, key: &str) {
    sql.push(&format!("SELECT rid FROM {table} WHERE param = "));
    sql.text_arg(key);
    sql.push(" AND ");
}

/// Appends a predicate on resource alias `r` for condition `c`.
pub fn condition(sql: &mut Sql, r: &str, c: &Condition) {
    match c {
        Condition::Id { values, not } => {
            sql.push(&format!("{r}.id {}IN (", if *not { "NOT " } else { "" }));
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.text_arg(v);
            }
            sql.push(")");
        }
        Condition::LastUpdated(values) => {
            let col = format!("{r}.last_updated");
            or_join(sql, values, |sql, v| date_pred(sql, &col, &col, v));
        }
        Condition::Token { key, not, values } => {
            sql.push(&format!("{r}.rid {}IN (", if *not { "NOT " } else { "" }));
            index_subquery(sql, "idx_token", key);
            or_join(sql, values, |sql, v| {
                match &v.code {
                    Some(code) => {
                        sql.push("code = ");
                        sql.text_arg(code);
                    }
                    None => sql.push("1 = 1"),
                }
                match &v.system {
                    SystemMatch::Any => {}
                    SystemMatch::Absent => sql.push(" AND system IS NULL"),
                    SystemMatch::Is(s) => {
                        sql.push(" AND system = ");
                        sql.text_arg(s);
                    }
                }
            });
            sql.push(")");
        }
        Condition::TokenText { key, values } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_token", key);
            or_join(sql, values, |sql, v| {
                sql.push("text LIKE ");
                sql.text_arg(&format!("%{}%", like_escape(v)));
                sql.push(" ESCAPE '\\'");
            });
            sql.push(")");
        }
        Condition::String { key, mode, values } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_string", key);
            or_join(sql, values, |sql, v| match mode {
                StringMode::StartsWith => {
                    sql.push("norm >= ");
                    sql.text_arg(v);
                    sql.push(" AND norm < ");
                    sql.text_arg(&prefix_upper(v));
                }
                StringMode::Exact => {
                    sql.push("exact = ");
                    sql.text_arg(v);
                }
                StringMode::Contains => {
                    sql.push("norm LIKE ");
                    sql.text_arg(&format!("%{}%", like_escape(v)));
                    sql.push(" ESCAPE '\\'");
                }
            });
            sql.push(")");
        }
        Condition::Date { key, values } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_date", key);
            or_join(sql, values, |sql, v| date_pred(sql, "lo", "hi", v));
            sql.push(")");
        }
        Condition::Quantity { key, values, .. } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_quantity", key);
            or_join(sql, values, number_pred);
            sql.push(")");
        }
        Condition::Uri { key, mode, values } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_uri", key);
            or_join(sql, values, |sql, v| match mode {
                UriMode::Exact => {
                    sql.push("value = ");
                    sql.text_arg(v);
                }
                UriMode::Below => {
                    sql.push("value >= ");
                    sql.text_arg(v);
                    sql.push(" AND value < ");
                    sql.text_arg(&prefix_upper(v));
                }
                UriMode::Above => {
                    // Portable across SQLite and PostgreSQL: `value` is a prefix of the argument.
                    sql.push("substr(");
                    sql.text_arg(v);
                    sql.push(", 1, length(value)) = value");
                }
            });
            sql.push(")");
        }
        Condition::Reference { key, values, only_type } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_ref", key);
            if let Some(t) = only_type {
                sql.push("ttype = ");
                sql.text_arg(t);
                sql.push(" AND ");
            }
            or_join(sql, values, |sql, v| match v {
                RefValue::Local { target_type, id } => {
                    sql.push("tid = ");
                    sql.text_arg(id);
                    if let Some(t) = target_type {
                        sql.push(" AND ttype = ");
                        sql.text_arg(t);
                    }
                }
                RefValue::Url(u) => {
                    sql.push("url = ");
                    sql.text_arg(u);
                }
            });
            sql.push(")");
        }
        Condition::Chain { key, targets } => {
            sql.push(&format!("{r}.rid IN ("));
            index_subquery(sql, "idx_ref", key);
            let inner_alias = format!("{r}c");
            or_join(sql, targets, |sql, (ttype, inner)| {
                sql.push("ttype = ");
                sql.text_arg(ttype);
                sql.push(&format!(
                    " AND tid IN (SELECT {inner_alias}.id FROM resources {inner_alias} WHERE {inner_alias}.type = "
                ));
                sql.text_arg(ttype);
                sql.push(&format!(" AND {inner_alias}.deleted = 0 AND "));
                condition(sql, &inner_alias, inner);
                sql.push(")");
            });
            sql.push(")");
        }
        Condition::Missing {
            key,
            kind,
            missing,
            only_type,
        } => {
            sql.push(&format!(
                "{r}.rid {}IN (SELECT rid FROM {} WHERE param = ",
                if *missing { "NOT " } else { "" },
                table_for(*kind)
            ));
            sql.text_arg(key);
            if let Some(t) = only_type {
                sql.push(" AND ttype = ");
                sql.text_arg(t);
            }
            sql.push(")");
        }
    }
}

/// The WHERE clause (after `FROM resources r`) for the request's conditions.
pub fn where_clause(sql: &mut Sql, req: &SearchRequest) {
    sql.push(" WHERE r.type = ");
    sql.text_arg(&req.rtype);
    sql.push(" AND r.deleted = 0");
    for c in &req.conditions {
        sql.push(" AND ");
        condition(sql, "r", c);
    }
}

fn order_by(sql: &mut Sql, req: &SearchRequest) {
    sql.push(" ORDER BY ");
    for s in &req.sort {
        let dir = if s.descending { "DESC" } else { "ASC" };
        match &s.key {
            SortKey::Id => sql.push(&format!("r.id {dir}, ")),
            SortKey::LastUpdated => sql.push(&format!("r.last_updated {dir}, ")),
            SortKey::Param { key, kind } => {
                let agg = if s.descending { "MAX" } else { "MIN" };
                let col = match kind {
                    ParamKind::Date if s.descending => "hi",
                    ParamKind::Date => "lo",
                    ParamKind::String => "norm",
                    ParamKind::Token => "code",
                    _ => "value",
                };
                sql.push(&format!(
                    "(SELECT {agg}({col}) FROM {} WHERE rid = r.rid AND param = ",
                    table_for(*kind)
                ));
                sql.text_arg(key);
                sql.push(&format!(") {dir} NULLS LAST, "));
            }
        }
    }
    sql.push("r.rid ASC");
}

pub fn search_keys(req: &SearchRequest, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.rid FROM resources r");
    where_clause(&mut sql, req);
    order_by(&mut sql, req);
    sql.push(" LIMIT ");
    sql.arg(Arg::Int(limit as i64));
    sql
}

pub fn search_ids(req: &SearchRequest, limit: usize) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT r.id FROM resources r");
    where_clause(&mut sql, req);
    sql.push(" LIMIT ");
    sql.arg(Arg::Int(limit as i64));
    sql
}

pub fn count(req: &SearchRequest) -> Sql {
    let mut sql = Sql::default();
    sql.push("SELECT COUNT(*) FROM resources r");
    where_clause(&mut sql, req);
    sql
}

/// The columns of a `Stored` row, in the order backends read them.
pub const STORED_COLUMNS: &str = "v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json";

pub const READ_CURRENT: &str = "SELECT v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json \
     FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version WHERE r.type = ? AND r.id = ?";

pub const READ_VERSION: &str = "SELECT v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json \
     FROM resources r JOIN versions v ON v.rid = r.rid WHERE r.type = ? AND r.id = ? AND v.version = ?";

pub const FETCH_CURRENT: &str = "SELECT v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json \
     FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version WHERE r.rid = ? AND r.deleted = 0";

/// Current versions of one type after a key, in key order (keyset paging for scans).
pub const SCAN_CURRENT: &str = "SELECT v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json \
     FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version \
     WHERE r.type = ? AND r.rid > ? AND r.deleted = 0 ORDER BY r.rid LIMIT ?";

/// The current version of the newest resource of a type (highest key).
pub const SCAN_LAST: &str = "SELECT v.rid, v.type, r.id, v.version, v.last_updated, v.method, v.json \
     FROM resources r JOIN versions v ON v.rid = r.rid AND v.version = r.version \
     WHERE r.type = ? AND r.deleted = 0 ORDER BY r.rid DESC LIMIT 1";

/// Current state (JSON, or NULL when deleted) of the resources of a type written after a marker.
pub const CHANGED_SINCE: &str = "SELECT r.rid, v.json FROM resources r \
     JOIN versions v ON v.rid = r.rid AND v.version = r.version \
     WHERE r.rid IN (SELECT c.rid FROM versions c WHERE c.seq > ? AND c.type = ?)";

/// A number that grows with every committed write.
pub const CHANGE_MARKER: &str = "SELECT COALESCE(MAX(seq), 0) FROM versions";

pub const INCLUDE: &str = "SELECT t.rid FROM idx_ref x JOIN resources t ON t.type = x.ttype AND t.id = x.tid \
     WHERE x.rid = ? AND x.param = ? AND t.deleted = 0";

pub const TYPE_AND_ID: &str = "SELECT type, id FROM resources WHERE rid = ?";

pub const REVINCLUDE: &str = "SELECT x.rid FROM idx_ref x JOIN resources s ON s.rid = x.rid \
     WHERE x.param = ? AND x.tid = ? AND x.ttype = ? AND s.deleted = 0";

/// History rows and their count for a scope, newest first. Returns the WHERE
/// clause (with `?` placeholders) and its arguments.
pub fn history_filter(q: &super::HistoryQuery) -> (String, Vec<Arg>) {
    let mut filter = String::from(" WHERE 1 = 1");
    let mut args = Vec::new();
    match &q.scope {
        super::HistoryScope::System => {}
        super::HistoryScope::Type(t) => {
            filter.push_str(" AND v.type = ?");
            args.push(Arg::Text(t.clone()));
        }
        super::HistoryScope::Instance(t, id) => {
            filter.push_str(" AND r.type = ? AND r.id = ?");
            args.push(Arg::Text(t.clone()));
            args.push(Arg::Text(id.clone()));
        }
    }
    if let Some(since) = q.since {
        filter.push_str(" AND v.last_updated >= ?");
        args.push(Arg::Int(since));
    }
    if let Some(at) = q.at_or_before {
        filter.push_str(" AND v.last_updated <= ?");
        args.push(Arg::Int(at));
    }
    (filter, args)
}

/// Rewrites `?` placeholders as `$1`, `$2`, ... (outside string literals) for PostgreSQL.
pub fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    let mut in_string = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                in_string = !in_string;
                out.push(c);
            }
            '?' if !in_string => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    out
}

/// Data-quality figures (`node::quality`): delta rows appended by each unit of work.
pub const QUALITY_ADD: &str = "INSERT INTO quality_deltas (source, rtype, metric, n, created) VALUES (?, ?, ?, ?, ?)";
/// A patient's key; the first patient to hold it keeps it.
pub const QUALITY_KEY: &str =
    "INSERT INTO quality_patients (kind, key, patient) VALUES (?, ?, ?) ON CONFLICT (kind, key) DO NOTHING";
pub const QUALITY_KEY_HOLDER: &str = "SELECT patient FROM quality_patients WHERE kind = ? AND key = ?";
pub const QUALITY_PAIR: &str = "INSERT INTO quality_pairs (a, b) VALUES (?, ?) ON CONFLICT (a, b) DO NOTHING";
pub const QUALITY_TOTALS: &str = "SELECT source, rtype, metric, CAST(SUM(n) AS BIGINT), MIN(created), COUNT(*) \
     FROM quality_deltas GROUP BY source, rtype, metric";
pub const QUALITY_PATIENTS: &str = "SELECT COUNT(*) FROM quality_patients WHERE kind = 'id'";
pub const QUALITY_PAIRS: &str = "SELECT COUNT(*) FROM quality_pairs";

/// Values every process of a node shares (`auth::Shared`), with an expiry in seconds.
pub const SHARED_GET: &str = "SELECT value, expires FROM shared_state WHERE key = ?";
pub const SHARED_PUT: &str = "INSERT INTO shared_state (key, value, expires) VALUES (?, ?, ?) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, expires = excluded.expires";
pub const SHARED_DELETE: &str = "DELETE FROM shared_state WHERE key = ?";
pub const SHARED_PURGE: &str = "DELETE FROM shared_state WHERE expires < ?";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders_outside_strings() {
        assert_eq!(
            numbered("a = ? AND b LIKE ? ESCAPE '\\' AND c = '?' AND d = ?"),
            "a = $1 AND b LIKE $2 ESCAPE '\\' AND c = '?' AND d = $3"
        );
    }
}
