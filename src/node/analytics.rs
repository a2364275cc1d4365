//! Views over a node's own data: `ViewDefinition/$run` rows for region-local
//! users, and the aggregate statistics the federation API returns to the hub.
//!
//! Rows for aggregation are cached per view and per resource key, with the
//! store's change marker they are current for. A question over unchanged data
//! reads nothing; after writes, only the resources written since the marker
//! are read and re-evaluated.

use super::{Error, FhirService};
use crate::federation::{self, GroupStats, Plan, ViewSource};
use crate::fhir::{Issue, IssueCode};
use crate::views::frame::{CellRef, FrameBuilder, HeldRows, RowRef};
use crate::views::{library, Row, View, ViewError};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What one evaluation of a view may spend: rows produced over the node's data
/// and a deadline. Work stops (and its memory returns) once either is passed.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_rows: usize,
    pub deadline: Instant,
}

impl Budget {
    /// The node's budget (`max_view_rows`, `max_view_seconds`), starting now.
    pub fn new(settings: &super::ServiceSettings) -> Budget {
        Budget {
            max_rows: settings.max_view_rows,
            deadline: Instant::now() + Duration::from_secs(settings.max_view_seconds),
        }
    }

    pub fn check(&self, rows: usize) -> Result<(), Error> {
        if rows > self.max_rows {
            return Err(Error::TooCostly(format!(
                "the view produces more than {} rows over this node's data (the node's max_view_rows)",
                self.max_rows
            )));
        }
        if Instant::now() > self.deadline {
            return Err(Error::TooCostly(
                "the view was stopped at its deadline (the node's max_view_seconds, or the hub's deadline)".into(),
            ));
        }
        Ok(())
    }
}

/// Resources read from the store per round trip during a scan.
const SCAN_BATCH: usize = 2000;
/// Views whose rows are kept in memory at once.
const CACHED_VIEWS: usize = 8;

/// One view's rows, column-wise, as of a store change marker.
#[derive(Default)]
struct ViewRows {
    marker: i64,
    built: bool,
    rows: HeldRows,
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
    /// What the warm-up at start-up did (`FhirService::warm`), for `/ready`.
    warm: Mutex<Warm>,
}

/// Memory held by the cached view rows, and the size of the same values stored as
/// plain columns: a string its bytes and a 4-byte offset, a number 8 bytes, a boolean
/// 1, a null nothing (a validity bit), and the resource key of each row 8.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    pub views: usize,
    pub rows: usize,
    pub held_bytes: usize,
    pub column_bytes: usize,
}

fn column_size(cell: CellRef<'_>) -> usize {
    match cell {
        CellRef::Null => 0,
        CellRef::Bool(_) => 1,
        CellRef::Int(_) | CellRef::Float(_) | CellRef::Number(_) => 8,
        CellRef::Str(t) | CellRef::Json(t) => t.len() + 4,
        CellRef::Value(v) => v.to_string().len() + 4,
    }
}

/// The state of the caches' warm-up after a start.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Warm {
    /// `cold` (not started), `warming`, `warm` or `failed`.
    pub state: &'static str,
    /// Approved views whose rows are built.
    pub views: usize,
    /// Whether the pathways' episodes are read. (Never their number: `/ready` is open to
    /// anyone, and a count of a region's episodes is a figure only the gate may release.)
    pub episodes: bool,
    /// How long the warm-up took (so far).
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn view_error(e: ViewError) -> Error {
    Error::invalid(Issue {
        expression: (!e.location.is_empty()).then_some(e.location),
        ..Issue::error(IssueCode::Invalid, e.message)
    })
}

pub fn problem_error(p: federation::QueryProblem) -> Error {
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
    pub fn run_view(&self, view: &View, limit: Option<usize>, budget: Budget) -> Result<Vec<Row>, Error> {
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
                budget.check(rows.len())?;
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => after = last.key,
                _ => return Ok(rows),
            }
        }
    }

    /// Calls `f` with the rows of `view` over all stored data (`HeldRows::rows`):
    /// built once, then kept current by re-evaluating what changed since.
    pub(super) fn with_view_rows<R>(
        &self,
        key: &str,
        view: &View,
        budget: Budget,
        f: impl FnOnce(&HeldRows) -> R,
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
            state.rows = HeldRows::default();
            state.rows = self.build_view_rows(view, budget)?;
        } else if state.marker != marker {
            let changed = self.store.changed_since(&view.resource, state.marker)?;
            if changed.len() > state.rows.len().max(1000) {
                state.built = false;
                state.rows = HeldRows::default();
                state.rows = self.build_view_rows(view, budget)?;
            } else {
                let model = &crate::fhir::definitions::get().choice;
                for (k, json) in changed {
                    let rows = match json {
                        Some(json) => eval_stored(view, model, &json, &view.resource, k)?,
                        None => Vec::new(),
                    };
                    state.rows.replace(k, rows);
                    if let Err(e) = budget.check(state.rows.len()) {
                        // Half-updated rows must not be taken for current ones.
                        state.built = false;
                        state.rows = HeldRows::default();
                        return Err(e);
                    }
                }
            }
        }
        state.marker = marker;
        state.built = true;
        Ok(f(&state.rows))
    }

    fn build_view_rows(&self, view: &View, budget: Budget) -> Result<HeldRows, Error> {
        let model = &crate::fhir::definitions::get().choice;
        let mut frame = FrameBuilder::new(view.columns.len());
        let mut after = 0;
        let mut total = 0;
        loop {
            let batch = self.store.scan(&view.resource, after, SCAN_BATCH)?;
            for s in &batch {
                let Some(json) = &s.json else { continue };
                let rows = eval_stored(view, model, json, &s.id, s.key)?;
                total += rows.len();
                budget.check(total)?;
                for row in &rows {
                    frame.push(s.key, RowRef::Plain(row));
                }
            }
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => after = last.key,
                _ => return Ok(HeldRows::new(frame.finish(), view.columns.len())),
            }
        }
    }

    /// Builds, in the background after a start, what the first federated questions
    /// need: every approved view's rows and the pathways' episodes. Questions that come
    /// meanwhile wait for the same build (never a second one) or find it done; `/ready`
    /// says how far it got (`warm_state`).
    pub fn warm(&self) {
        let started = Instant::now();
        let set = |w: Warm| *self.views.warm.lock().unwrap_or_else(|p| p.into_inner()) = w;
        set(Warm {
            state: "warming",
            ..Warm::default()
        });
        let mut done = Warm {
            state: "warm",
            ..Warm::default()
        };
        let result = (|| -> Result<(), Error> {
            for name in crate::views::library::names() {
                let Some(Ok(approved)) = crate::views::library::approved(name) else {
                    continue;
                };
                let key = format!("approved {}", approved.digest);
                self.with_view_rows(&key, &approved.view, Budget::new(&self.settings), |_| ())?;
                done.views += 1;
                set(Warm {
                    state: "warming",
                    views: done.views,
                    seconds: started.elapsed().as_secs_f64(),
                    ..Warm::default()
                });
            }
            let episodes = self.episodes(Budget::new(&self.settings))?.len();
            tracing::info!(episodes, "episodes read");
            done.episodes = true;
            Ok(())
        })();
        done.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
        if let Err(e) = result {
            tracing::warn!(error = %e, "warming the view and episode caches stopped; questions build them when asked");
            done.state = "failed";
            done.error = Some(e.to_string());
        } else {
            tracing::info!(
                views = done.views,
                episodes = done.episodes,
                seconds = done.seconds,
                "caches warm"
            );
        }
        set(done);
    }

    /// What the warm-up did so far.
    /// What the cached view rows cost in memory against the columns they hold
    /// (`Footprint`). Walks every cached row: for benchmarks and operators' tools, not
    /// for requests (and never for `/ready`, which anyone may read: the sizes follow
    /// the region's numbers).
    pub fn view_cache_footprint(&self) -> Footprint {
        let entries = self.views.entries.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = Footprint::default();
        for entry in entries {
            let state = entry.rows.lock().unwrap_or_else(|p| p.into_inner());
            out.views += 1;
            out.held_bytes += state.rows.heap_bytes();
            for (_, _, row) in state.rows.rows() {
                out.rows += 1;
                // The resource key a row belongs to is a column too.
                out.column_bytes += std::mem::size_of::<i64>();
                out.column_bytes += (0..state.rows.width()).map(|c| column_size(row.get(c))).sum::<usize>();
            }
        }
        out
    }

    pub fn warm_state(&self) -> Warm {
        let w = self.views.warm.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if w.state.is_empty() {
            Warm { state: "cold", ..w }
        } else {
            w
        }
    }

    /// This node's statistics for a federated aggregate question (an approved
    /// view, checked by `Plan::from_request`).
    pub fn aggregate(&self, plan: &Plan, budget: Budget) -> Result<Vec<GroupStats>, Error> {
        let view = &plan.approved.view;
        let key = format!("approved {}", plan.approved.digest);
        let keys = &self.record_keys;
        self.with_view_rows(&key, view, budget, |rows| federation::compute(plan, rows.rows(), keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn column_sizes_count_each_value_as_a_plain_column_would() {
        let row = [json!("F"), json!("1950s"), json!(3.5), json!(true), Value::Null];
        assert_eq!(
            row.iter().map(|v| column_size(CellRef::of(v))).sum::<usize>(),
            (1 + 4) + (5 + 4) + 8 + 1
        );
    }
}
