//! Views over a node's own data: `ViewDefinition/$run` rows for region-local
//! users, and the aggregate statistics the federation API returns to the hub.
//!
//! Rows for aggregation are cached per view and per resource key, with the
//! store's change marker they are current for. A question over unchanged data
//! reads nothing; after writes, only the resources written since the marker
//! are read and re-evaluated.

use super::{Error, FhirService};
use crate::federation::{self, AggregateQuery, GroupStats, ViewSource};
use crate::fhir::{Issue, IssueCode};
use crate::views::{library, Row, View, ViewError};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Resources read from the store per round trip during a scan.
const SCAN_BATCH: usize = 2000;
/// Views whose rows are kept in memory at once.
const CACHED_VIEWS: usize = 8;

/// One view's rows, per resource key, as of a store change marker.
#[derive(Default)]
struct ViewRows {
    marker: i64,
    built: bool,
    by_key: HashMap<i64, Vec<Row>>,
}

/// A view's cached rows, keyed by the view's JSON.
struct CachedView {
    key: String,
    rows: Mutex<ViewRows>,
}

/// Rows of recently used views. After writes, only the resources written since
/// the cached marker are re-evaluated, so a question right after new data
/// arrives does not re-read every resource.
#[derive(Default)]
pub struct ViewCache {
    /// Most recently used last.
    entries: Mutex<Vec<Arc<CachedView>>>,
}

pub fn view_error(e: ViewError) -> Error {
    Error::invalid(Issue {
        expression: (!e.location.is_empty()).then_some(e.location),
        ..Issue::error(IssueCode::Invalid, e.message)
    })
}

fn problem_error(p: federation::QueryProblem) -> Error {
    Error::invalid(Issue {
        expression: (!p.expression.is_empty()).then_some(p.expression),
        ..Issue::error(IssueCode::Invalid, p.message)
    })
}

/// Compiles an inline view or looks up a shipped one.
pub fn resolve_view(source: &ViewSource) -> Result<(View, String), Error> {
    let json = match source {
        ViewSource::Inline(v) => v.clone(),
        ViewSource::Reference(name) => library::get(name).ok_or_else(|| {
            Error::invalid(Issue::error(
                IssueCode::NotFound,
                format!(
                    "no view named '{name}' (shipped views: {})",
                    library::names().collect::<Vec<_>>().join(", ")
                ),
            ))
        })?,
    };
    let view = View::compile(&json).map_err(view_error)?;
    Ok((view, json.to_string()))
}

/// The rows one stored resource produces (a stored JSON that does not parse is logged and skipped).
fn eval_stored(
    view: &View,
    model: &crate::fhirpath::ChoiceModel,
    json: &[u8],
    what: &str,
    key: i64,
) -> Result<Vec<Row>, Error> {
    let resource: Value = match serde_json::from_slice(json) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(key, error = %e, "stored JSON does not parse");
            return Ok(vec![]);
        }
    };
    let mut rows = Vec::new();
    view.rows(&resource, model, &mut rows).map_err(|e| {
        view_error(ViewError {
            message: format!("{}/{what}: {}", view.resource, e.message),
            location: e.location,
        })
    })?;
    Ok(rows)
}

impl FhirService {
    /// Runs `view` over every current resource of its type, stopping after `limit` rows.
    pub fn run_view(&self, view: &View, limit: Option<usize>) -> Result<Vec<Row>, Error> {
        let model = &crate::fhir::definitions::get().choice;
        let mut rows = Vec::new();
        let mut after = 0;
        loop {
            let batch = self.store.scan(&view.resource, after, SCAN_BATCH)?;
            for s in &batch {
                let Some(json) = &s.json else { continue };
                let resource: Value = match serde_json::from_slice(json) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!(rtype = %s.rtype, id = %s.id, error = %e, "stored JSON does not parse");
                        continue;
                    }
                };
                view.rows(&resource, model, &mut rows).map_err(|e| {
                    view_error(ViewError {
                        message: format!("{}/{}: {}", s.rtype, s.id, e.message),
                        location: e.location,
                    })
                })?;
                if limit.is_some_and(|l| rows.len() >= l) {
                    rows.truncate(limit.unwrap_or(0));
                    return Ok(rows);
                }
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => after = last.key,
                _ => return Ok(rows),
            }
        }
    }

    /// Calls `f` with the rows of `view` over all stored data, per resource key:
    /// built once, then kept current by re-evaluating what changed since.
    fn with_view_rows<R>(
        &self,
        key: &str,
        view: &View,
        f: impl FnOnce(&HashMap<i64, Vec<Row>>) -> R,
    ) -> Result<R, Error> {
        let entry = {
            let mut entries = self.views.entries.lock().unwrap_or_else(|p| p.into_inner());
            let entry = match entries.iter().position(|e| e.key == key) {
                Some(i) => entries.remove(i),
                None => Arc::new(CachedView {
                    key: key.to_string(),
                    rows: Mutex::default(),
                }),
            };
            entries.push(entry.clone());
            if entries.len() > CACHED_VIEWS {
                entries.remove(0);
            }
            entry
        };
        let mut state = entry.rows.lock().unwrap_or_else(|p| p.into_inner());
        // Read before looking at the data: anything written later is caught next time
        // (re-evaluating a resource twice is harmless).
        let marker = self.store.change_marker()?;
        if !state.built {
            state.by_key = self.view_rows_by_key(view)?;
        } else if state.marker != marker {
            let changed = self.store.changed_since(&view.resource, state.marker)?;
            if changed.len() > state.by_key.len().max(1000) {
                state.by_key = self.view_rows_by_key(view)?;
            } else {
                let model = &crate::fhir::definitions::get().choice;
                for (k, json) in changed {
                    state.by_key.remove(&k);
                    if let Some(json) = json {
                        let rows = eval_stored(view, model, &json, &view.resource, k)?;
                        if !rows.is_empty() {
                            state.by_key.insert(k, rows);
                        }
                    }
                }
            }
        }
        state.marker = marker;
        state.built = true;
        Ok(f(&state.by_key))
    }

    fn view_rows_by_key(&self, view: &View) -> Result<HashMap<i64, Vec<Row>>, Error> {
        let model = &crate::fhir::definitions::get().choice;
        let mut out = HashMap::new();
        let mut after = 0;
        loop {
            let batch = self.store.scan(&view.resource, after, SCAN_BATCH)?;
            for s in &batch {
                let Some(json) = &s.json else { continue };
                let rows = eval_stored(view, model, json, &s.id, s.key)?;
                if !rows.is_empty() {
                    out.insert(s.key, rows);
                }
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => after = last.key,
                _ => return Ok(out),
            }
        }
    }

    /// This node's statistics for a federated aggregate query.
    pub fn aggregate(&self, q: &AggregateQuery) -> Result<Vec<GroupStats>, Error> {
        let (view, key) = resolve_view(&q.view)?;
        q.check_columns(&view).map_err(problem_error)?;
        self.with_view_rows(&key, &view, |rows| {
            federation::compute(&view, rows.values().flatten(), q)
        })?
        .map_err(problem_error)
    }
}
