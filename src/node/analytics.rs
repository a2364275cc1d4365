//! Views over a node's own data: `ViewDefinition/$run` rows for region-local
//! users, and the aggregate statistics the federation API returns to the hub.
//!
//! Rows for aggregation are cached per view and invalidated by the store's
//! change marker, so repeated federated questions over unchanged data do not
//! re-read and re-parse every resource.

use super::{Error, FhirService};
use crate::federation::{self, AggregateQuery, GroupStats, ViewSource};
use crate::fhir::{Issue, IssueCode};
use crate::views::{library, Row, View, ViewError};
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// Resources read from the store per round trip during a scan.
const SCAN_BATCH: usize = 2000;
/// Views whose rows are kept in memory at once.
const CACHED_VIEWS: usize = 8;

/// A view's rows as of a store change marker, keyed by the view's JSON.
type CachedRows = (String, i64, Arc<Vec<Row>>);

#[derive(Default)]
pub struct ViewCache {
    /// Most recently used last.
    entries: Mutex<Vec<CachedRows>>,
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

    /// The rows of `view` over all stored data, from the cache when nothing changed.
    pub fn cached_view_rows(&self, key: &str, view: &View) -> Result<Arc<Vec<Row>>, Error> {
        let marker = self.store.change_marker()?;
        {
            let mut entries = self.views.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = entries.iter().position(|(k, m, _)| k == key && *m == marker) {
                let entry = entries.remove(i);
                let rows = entry.2.clone();
                entries.push(entry);
                return Ok(rows);
            }
        }
        let rows = Arc::new(self.run_view(view, None)?);
        // Only cache what is still current: a write during the scan may or may not be in it.
        if self.store.change_marker()? == marker {
            let mut entries = self.views.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.retain(|(k, _, _)| k != key);
            if entries.len() >= CACHED_VIEWS {
                entries.remove(0);
            }
            entries.push((key.to_string(), marker, rows.clone()));
        }
        Ok(rows)
    }

    /// This node's statistics for a federated aggregate query.
    pub fn aggregate(&self, q: &AggregateQuery) -> Result<Vec<GroupStats>, Error> {
        let (view, key) = resolve_view(&q.view)?;
        q.check_columns(&view).map_err(problem_error)?;
        let rows = self.cached_view_rows(&key, &view)?;
        federation::compute(&view, &rows, q).map_err(problem_error)
    }
}
