//! A node's part in `$regress`: its usable rows of a model, held fixed while the
//! hub's rounds run (`Sessions`), the disclosure rules checked on them, and the
//! whole fit over this region's own rows for its analysts.

use super::analytics::Budget;
use super::FhirService;
use crate::error::Error;
use crate::federation::glm::{self, Family, Fitted, Irls, Part, Step, Summary};
use crate::federation::regress::{rows_apart, Columns, Design, Fit, Model, Table};
use crate::views::View;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Fits open at once on a node, and how long one waits for its next round.
const MAX_OPEN: usize = 8;
const IDLE: Duration = Duration::from_secs(600);
/// How long the rows of a fit are remembered for the differencing rule, and how many fits.
const REMEMBER: Duration = Duration::from_secs(7 * 24 * 3600);
const REMEMBERED: usize = 64;

struct Open {
    touched: Instant,
    family: Family,
    fit: Arc<Mutex<Fit>>,
}

/// The fits open on this node and the rows of recent fits.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, Open>>,
    history: Mutex<Vec<Remembered>>,
}

/// An earlier fit: its model's signature, when, and its rows' sorted record keys.
type Remembered = (String, Instant, Arc<Vec<u64>>);

/// What a node tells the hub when a fit opens.
pub struct Opened {
    pub n: u64,
    pub missing: u64,
    pub out_of_range: u64,
    pub levels: Vec<Vec<String>>,
}

impl Sessions {
    /// Refuses rows that differ from an earlier fit of the same model by fewer than
    /// `min_cell` rows (and more than none), then remembers these.
    fn differencing(&self, signature: &str, keys: &[u64], min_cell: u64) -> Option<String> {
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.retain(|(_, at, _)| at.elapsed() < REMEMBER);
        for (sig, _, earlier) in history.iter() {
            if sig != signature {
                continue;
            }
            let apart = rows_apart(&sorted, earlier);
            if apart > 0 && apart < min_cell {
                return Some(format!(
                    "the rows differ from those of an earlier fit of the same model by fewer than minCell ({min_cell}); \
                     the two fits together would give those rows away. Ask again when more data has arrived"
                ));
            }
        }
        if !history
            .iter()
            .any(|(sig, _, earlier)| sig == signature && **earlier == sorted)
        {
            history.push((signature.to_string(), Instant::now(), Arc::new(sorted)));
            if history.len() > REMEMBERED {
                history.remove(0);
            }
        }
        None
    }

    fn get(&self, fit: &str) -> Option<(Family, Arc<Mutex<Fit>>)> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, o| o.touched.elapsed() < IDLE);
        open.get_mut(fit).map(|o| {
            o.touched = Instant::now();
            (o.family, o.fit.clone())
        })
    }

    pub fn close(&self, fit: &str) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(fit);
    }
}

/// A model's fit over rows, run to its end (the node's own fits).
pub fn fit_locally(
    fit: &mut Fit,
    family: Family,
    design: &Design,
    tolerance: f64,
    max_iterations: u32,
) -> Result<Result<Fitted, glm::FitProblem>, String> {
    let mut irls = Irls::new(family, design.p(), tolerance, max_iterations);
    loop {
        let beta = irls.asked_at().map(<[f64]>::to_vec);
        let part = fit.part(family, design, beta.as_deref())?;
        match irls.step(&part) {
            Step::Ask(_) => continue,
            Step::Done(f) => return Ok(Ok(f)),
            Step::Failed(p) => return Ok(Err(p)),
        }
    }
}

impl FhirService {
    /// The usable rows of `model` over `view` (the view's cached rows, keyed by `view_key`).
    pub fn regression_table(
        &self,
        view_key: &str,
        view: &View,
        model: &Model,
        columns: &Columns,
        budget: Budget,
    ) -> Result<Table, Error> {
        let keys = &self.record_keys;
        self.with_view_rows(view_key, view, budget, |rows| {
            Table::build(model, columns, rows.rows(), keys)
        })
    }

    /// Checks this node's rows of `model` against the disclosure rules: `Err` says why
    /// this region does not take part.
    pub fn regression_rows(
        &self,
        view_key: &str,
        view: &View,
        model: &Model,
        columns: &Columns,
        min_cell: u64,
    ) -> Result<Result<Table, String>, Error> {
        let table = self.regression_table(view_key, view, model, columns, Budget::new(&self.settings))?;
        if let Some(why) = table.refusal(model, min_cell) {
            return Ok(Err(why));
        }
        let signature = format!("{view_key} {}", serde_json::to_string(model).unwrap_or_default());
        if let Some(why) = self.regressions.differencing(&signature, &table.keys, min_cell) {
            return Ok(Err(why));
        }
        Ok(Ok(table))
    }

    /// Opens a fit for the hub's rounds: the rows are fixed from here on.
    pub fn regress_open(
        &self,
        fit: &str,
        view_key: &str,
        view: &View,
        model: &Model,
        columns: &Columns,
        min_cell: u64,
    ) -> Result<Result<Opened, String>, Error> {
        let table = match self.regression_rows(view_key, view, model, columns, min_cell)? {
            Ok(t) => t,
            Err(why) => return Ok(Err(why)),
        };
        self.hold(fit, model.family, table).map(Ok)
    }

    /// Opens a fit of a pathway cohort's risk model: the population of `group` over the
    /// period, with its outcome, held for the rounds like a view's rows.
    #[allow(clippy::too_many_arguments)]
    pub fn regress_open_cohort(
        &self,
        fit: &str,
        pathway: &crate::pathways::Pathway,
        start: &str,
        end: &str,
        group: &str,
        model: &Model,
        min_cell: u64,
    ) -> Result<Result<Opened, String>, Error> {
        let episodes = self.episodes(Budget::new(&self.settings))?;
        let rows: Vec<(u64, crate::views::Row)> = episodes
            .iter()
            .filter_map(|e| {
                pathway
                    .outcome_in(e, group, start, end)
                    .map(|y| (e.key, crate::federation::regress::cohort_row(e, y)))
            })
            .collect();
        let columns = crate::federation::regress::cohort_columns(model);
        let table = Table::from_rows(
            model,
            &columns,
            rows.iter().map(|(k, r)| (*k, crate::views::frame::RowRef::Plain(r))),
        );
        if let Some(why) = table.refusal(model, min_cell) {
            return Ok(Err(why));
        }
        let signature = format!(
            "cohort {} {} {start} {end} {group} {}",
            pathway.id,
            pathway.version,
            serde_json::to_string(model).unwrap_or_default()
        );
        if let Some(why) = self.regressions.differencing(&signature, &table.keys, min_cell) {
            return Ok(Err(why));
        }
        self.hold(fit, model.family, table).map(Ok)
    }

    /// Keeps `table` for the rounds of `fit`.
    fn hold(&self, fit: &str, family: Family, table: Table) -> Result<Opened, Error> {
        let opened = Opened {
            n: table.n(),
            missing: table.missing,
            out_of_range: table.out_of_range,
            levels: table.levels.clone(),
        };
        let mut open = self.regressions.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, o| o.touched.elapsed() < IDLE);
        if open.len() >= MAX_OPEN && !open.contains_key(fit) {
            return Err(Error::TooCostly(format!(
                "{MAX_OPEN} regressions are being fitted on this node; try again when one has finished"
            )));
        }
        open.insert(
            fit.to_string(),
            Open {
                touched: Instant::now(),
                family,
                fit: Arc::new(Mutex::new(Fit::new(table))),
            },
        );
        Ok(opened)
    }

    /// Expected outcomes per provider at the fitted coefficients of an open cohort fit.
    pub fn regress_expected(
        &self,
        fit: &str,
        design: &Design,
        beta: &[f64],
    ) -> Result<Result<crate::federation::regress::Expected, String>, Error> {
        let (family, session) = self.open_fit(fit)?;
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        Ok(session.expected(family, design, beta))
    }

    fn open_fit(&self, fit: &str) -> Result<(Family, Arc<Mutex<Fit>>), Error> {
        self.regressions.get(fit).ok_or_else(|| {
            Error::NotFound(
                "regression".into(),
                format!("{fit} (not open here, or idle for more than {} s)", IDLE.as_secs()),
            )
        })
    }

    /// This node's part of one round of an open fit; `Err` says why the node stops taking part.
    pub fn regress_round(
        &self,
        fit: &str,
        design: &Design,
        beta: Option<&[f64]>,
    ) -> Result<Result<Part, String>, Error> {
        let (family, session) = self.open_fit(fit)?;
        let mut session = session.lock().unwrap_or_else(|p| p.into_inner());
        let n = session.table.n();
        if design.p() as u64 * 3 > n {
            return Ok(Err(format!(
                "the model has {} parameters: more than one per three of this node's rows",
                design.p()
            )));
        }
        Ok(session.part(family, design, beta))
    }
}

/// A fitted model with its summary and null deviance.
pub struct LocalFit {
    pub fitted: Fitted,
    pub summary: Summary,
    pub null_deviance: f64,
}

/// Fits `design` and its null model over one node's rows.
pub fn fit_all(
    table: Table,
    family: Family,
    design: &Design,
    tolerance: f64,
    max_iterations: u32,
) -> Result<Result<LocalFit, glm::FitProblem>, String> {
    let mut fit = Fit::new(table);
    let fitted = match fit_locally(&mut fit, family, design, tolerance, max_iterations)? {
        Ok(f) => f,
        Err(p) => return Ok(Err(p)),
    };
    let null = fit_locally(&mut fit, family, &design.null_model(), tolerance, max_iterations)?
        .map_or(f64::NAN, |f| f.deviance);
    let summary = glm::summarise(family, &design.terms, &fitted);
    Ok(Ok(LocalFit {
        fitted,
        summary,
        null_deviance: null,
    }))
}
