//! `$regress` at the hub: exact federated IRLS. The hub opens the fit at every
//! region (each checks its rows against its rules and says which levels its
//! categorical predictors take), settles the design, and then each round sends
//! the coefficients and adds the regions' Xᵀ W X, Xᵀ W z and deviances until
//! the deviance settles. Only the fitted model leaves; a region that stops
//! answering is dropped and the fit starts again without it while `minRegions`
//! still hold.

use super::{bad, Hub, RegionReport, RegionStatus};
use crate::error::Error;
use crate::federation::glm::{self, Fitted, Irls, Part, Step};
use crate::federation::regress::{self, not_fitted, problem_text, Design, Model, RegionPart, RegressQuery};
use crate::federation::wire::{NodeRegress, RegressRequest, RegressStep};
use crate::federation::{Disclosure, ViewSource};
use crate::views::library;
use serde_json::{json, Value};

/// A fit made across regions, still open at those that took part.
pub(super) struct FitAcross {
    close: RegressRequest,
    /// The `Expected` step at a design and coefficients.
    expected: Box<dyn Fn(Design, Vec<f64>) -> RegressRequest + Send + Sync>,
    pub parts: Vec<RegionPart>,
    pub reports: Vec<RegionReport>,
    contributors: Vec<Contributor>,
    pub design: Design,
    pub gate: Disclosure,
    /// The model and its null deviance, or why there is none.
    pub result: Result<(Fitted, f64), String>,
}

impl FitAcross {
    /// Lets the regions drop the rows they held.
    pub async fn close(&self, hub: &Hub) {
        hub.close(&self.contributors, &self.close).await;
    }

    /// The regions' expected outcomes per provider at the fitted model, by region, and
    /// their binned probabilities pooled; `Err` names a region that did not answer.
    pub async fn expected(
        &self,
        hub: &Hub,
        beta: &[f64],
    ) -> Result<(Vec<(String, regress::Expected)>, Vec<[u64; 2]>), String> {
        let step = (self.expected)(self.design.clone(), beta.to_vec());
        let targets: Vec<(String, String)> = self
            .contributors
            .iter()
            .map(|c| (c.region.clone(), c.url.clone()))
            .collect();
        let answers: Vec<(RegionReport, Option<NodeRegress>)> = hub
            .fan_out(&targets, |client, url| {
                client.post(format!("{url}/federation/regress")).json(&step)
            })
            .await;
        let mut out = Vec::new();
        let mut bins = vec![[0u64; 2]; regress::BINS];
        for (report, answer) in answers {
            match answer.and_then(|a| a.expected) {
                Some(e) if e.bins.len() == regress::BINS => {
                    for (b, x) in bins.iter_mut().zip(&e.bins) {
                        b[0] += x[0];
                        b[1] += x[1];
                    }
                    out.push((report.region, e));
                }
                _ => {
                    return Err(format!(
                        "{} did not give its expected counts: {}",
                        report.region,
                        report.detail.unwrap_or_default()
                    ))
                }
            }
        }
        Ok((out, bins))
    }
}

impl Hub {
    /// `$benchmark`'s figures per provider from a federated logistic model of `group`'s
    /// outcome in the pathway's cohort: each provider's rows, outcomes and the sum of
    /// their fitted probabilities (its expected count), the regions that took part, and
    /// the model (coefficients, c-statistic) for the reply.
    pub(super) async fn logistic_figures(
        &self,
        pathway: &crate::pathways::Pathway,
        period_start: &str,
        period_end: &str,
        group: &str,
        predictors: &[String],
    ) -> Result<(Vec<crate::pathways::benchmark::ProviderFigures>, usize, Value), Error> {
        let model = regress::cohort_model(predictors).map_err(|p| bad(p.message, Some("predictors")))?;
        let regions = self.regions_for(None)?;
        let open = RegressStep::OpenCohort {
            measure: pathway.id.clone(),
            version: pathway.version.clone(),
            period_start: period_start.to_string(),
            period_end: period_end.to_string(),
            group: group.to_string(),
            model: model.clone(),
        };
        let fit = self.fit_across(&regions, open, &model, 1e-8, 25).await?;
        let (fitted, null_deviance) = match &fit.result {
            Ok(f) => f.clone(),
            Err(problem) => {
                fit.close(self).await;
                return Err(not_fitted(
                    format!("the risk model could not be fitted: {problem}"),
                    &fit.parts,
                ));
            }
        };
        let expected = fit.expected(self, &fitted.beta).await;
        fit.close(self).await;
        let (by_region, bins) = expected.map_err(|why| not_fitted(why, &fit.parts))?;
        let figures = by_region
            .iter()
            .flat_map(|(region, e)| {
                e.providers
                    .iter()
                    .map(move |p| crate::pathways::benchmark::ProviderFigures {
                        provider: p.provider.clone(),
                        region: region.clone(),
                        n: p.n,
                        observed: p.observed,
                        expected: p.expected,
                        n_key: p.n_key,
                        observed_key: p.observed_key,
                    })
            })
            .collect();
        let summary = glm::summarise(model.family, &fit.design.terms, &fitted);
        let method = json!({
            "method": "logistic",
            "predictors": predictors,
            "model": {
                "n": fitted.n,
                "iterations": fitted.iterations,
                "converged": fitted.converged,
                "coefficients": summary.coefficients,
                "cStatistic": regress::c_statistic(&bins),
                "deviance": fitted.deviance,
                "nullDeviance": null_deviance,
                "aic": summary.aic,
                "regions": fit.parts.iter().map(|p| json!({"region": p.region, "status": p.status, "reason": p.reason})).collect::<Vec<_>>(),
            },
        });
        Ok((figures, by_region.len(), method))
    }
}

/// A region taking part: its name, URL and usable rows.
struct Contributor {
    region: String,
    url: String,
    n: u64,
}

fn status_text(s: RegionStatus) -> &'static str {
    match s {
        RegionStatus::Ok => "ok",
        RegionStatus::Timeout => "timeout",
        RegionStatus::Error => "error",
        RegionStatus::Unreachable => "unreachable",
    }
}

impl Hub {
    /// `POST /fhir/$regress`: the model fitted over every region asked, as if over their rows together.
    pub async fn regress(&self, q: RegressQuery, raw: &str, who: &str) -> Result<Value, Error> {
        let approved = match &q.view {
            ViewSource::Reference(name) => match library::approved(name) {
                Some(Ok(a)) => a,
                Some(Err(e)) => return Err(bad(e.message, Some("viewReference"))),
                None => {
                    return Err(bad(
                        format!(
                            "no approved view named '{name}' (approved: {})",
                            library::names().collect::<Vec<_>>().join(", ")
                        ),
                        Some("viewReference"),
                    ))
                }
            },
            ViewSource::Inline(_) => {
                return Err(bad(
                    "federated models run approved views only: name one with 'viewReference'; \
                     inline views are for a region's own analysts ($regress at their node)",
                    Some("view"),
                ))
            }
        };
        let model = q.model();
        model
            .columns(&approved.view, true)
            .map_err(|p| bad(p.message, Some(&p.expression)))?;
        let regions = self.regions_for(q.regions.as_deref())?;
        let every_region_asked = regions.len() == self.config.nodes.len();
        let open = RegressStep::Open {
            view_reference: approved.name.to_string(),
            view_digest: approved.digest.clone(),
            model: model.clone(),
        };
        let mut fit = self
            .fit_across(&regions, open, &model, q.tolerance, q.max_iterations)
            .await?;
        fit.close(self).await;
        let (fitted, null_deviance) = match fit.result {
            Ok(f) => f,
            Err(problem) => {
                self.record("regress", who, raw, &fit.reports, format!("nothing: {problem}"))
                    .await?;
                return Err(not_fitted(problem, &fit.parts));
            }
        };
        let gate = fit.gate;
        let summary = glm::summarise(model.family, &fit.design.terms, &fitted);
        // Each region's row count, rounded as any released count (the total is exact, as df needs).
        for p in fit.parts.iter_mut() {
            p.n = p.n.map(|n| round_to(n, gate.rounding));
        }
        let complete = every_region_asked && fit.parts.iter().all(|p| p.status == "ok");
        let reply = regress::reply_json(
            if complete { "complete" } else { "partial" },
            &fit.parts,
            model.family,
            &fitted,
            &summary,
            null_deviance,
            json!({
                "minCell": gate.min_cell,
                "minRegions": gate.min_regions,
                "rounding": gate.rounding,
                "notes": [
                    "each contributing region has at least minCell usable rows, minCell rows in every level of a categorical predictor and every outcome class, and at least three rows per parameter",
                    "only the fitted model is released; the regions' matrices stay at the hub",
                    "regions' row counts are rounded; the total is exact"
                ],
            }),
        );
        self.record(
            "regress",
            who,
            raw,
            &fit.reports,
            format!(
                "a {} model of {} term(s) over {} row(s) from {} region(s); no rows, no matrices",
                model.family.as_str(),
                fit.design.terms.len(),
                fitted.n,
                fit.contributors.len()
            ),
        )
        .await?;
        Ok(reply)
    }

    /// Opens the fit at every region in `regions` with `open`, settles the design from the
    /// regions that take part and runs the rounds of the model and of its null model. The
    /// fit stays open at the regions (for `Expected`) until `FitAcross::close`.
    pub(super) async fn fit_across(
        &self,
        regions: &[(String, String)],
        open: RegressStep,
        model: &Model,
        tolerance: f64,
        max_iterations: u32,
    ) -> Result<FitAcross, Error> {
        let fit = uuid::Uuid::new_v4().to_string();
        let deadline_ms = self.config.deadline.as_millis() as u64;
        let disclosure = self.config.disclosure;
        let request = move |step: RegressStep| RegressRequest {
            fit: fit.clone(),
            step,
            disclosure,
            deadline_ms,
        };
        // Open: each region finds, checks and holds its rows.
        let open = request(open);
        let answers: Vec<(RegionReport, Option<NodeRegress>)> = self
            .fan_out(regions, |client, url| {
                client.post(format!("{url}/federation/regress")).json(&open)
            })
            .await;
        let mut parts: Vec<RegionPart> = Vec::new();
        let mut reports: Vec<RegionReport> = Vec::new();
        let mut contributors: Vec<Contributor> = Vec::new();
        let mut levels: Vec<Vec<Vec<String>>> = Vec::new();
        let mut gate = self.config.disclosure;
        for ((mut report, answer), (_, url)) in answers.into_iter().zip(regions) {
            let part = match answer {
                Some(a) if a.region != report.region => {
                    report.status = RegionStatus::Error;
                    let why = format!("the node at this URL says it serves '{}'", a.region);
                    report.detail = Some(why.clone());
                    refused(&report.region, "error", why)
                }
                Some(a) if a.refused.is_some() => refused(&report.region, "refused", a.refused.unwrap_or_default()),
                Some(a) => match (a.n, a.levels) {
                    (Some(n), Some(l)) if l.len() == model.predictors.len() => {
                        gate = gate.stricter(Disclosure {
                            min_regions: gate.min_regions,
                            ..a.disclosure
                        });
                        contributors.push(Contributor {
                            region: report.region.clone(),
                            url: url.clone(),
                            n,
                        });
                        levels.push(l);
                        RegionPart {
                            region: report.region.clone(),
                            status: "ok".into(),
                            n: Some(n),
                            reason: None,
                        }
                    }
                    _ => refused(
                        &report.region,
                        "error",
                        "the node's answer does not fit the model".into(),
                    ),
                },
                None => refused(
                    &report.region,
                    status_text(report.status),
                    report.detail.clone().unwrap_or_default(),
                ),
            };
            parts.push(part);
            reports.push(report);
        }
        // The hub's own check of what each node reported, under the stricter gate; the design
        // is settled from the regions that take part (a refused region's levels would be
        // columns without rows), so it is settled again until no region drops out.
        let design = loop {
            let level_refs: Vec<&[Vec<String>]> = levels.iter().map(Vec::as_slice).collect();
            let design = match Design::settle(model, &level_refs) {
                Ok(d) => d,
                Err(p) => {
                    self.close(&contributors, &request(RegressStep::Close)).await;
                    return Err(bad(p.message, Some(&p.expression)));
                }
            };
            let before = contributors.len();
            let mut keep = Vec::new();
            for c in contributors.iter() {
                let why = if c.n < gate.min_cell {
                    Some(format!("fewer than minCell ({}) usable rows", gate.min_cell))
                } else if design.p() as u64 * 3 > c.n {
                    Some(format!(
                        "the model has {} parameters: more than one per three of this region's rows",
                        design.p()
                    ))
                } else {
                    None
                };
                if let Some(why) = &why {
                    if let Some(p) = parts.iter_mut().find(|p| p.region == c.region) {
                        *p = refused(&c.region, "refused", why.clone());
                    }
                }
                keep.push(why.is_none());
            }
            let mut k = keep.iter();
            contributors.retain(|_| *k.next().unwrap_or(&false));
            let mut k = keep.iter();
            levels.retain(|_| *k.next().unwrap_or(&false));
            if contributors.len() == before {
                break design;
            }
        };

        let result = self
            .rounds(
                &request,
                &mut contributors,
                &mut parts,
                &design,
                model,
                tolerance,
                max_iterations,
                gate,
            )
            .await?;
        Ok(FitAcross {
            close: request(RegressStep::Close),
            expected: Box::new(move |design, beta| request(RegressStep::Expected { design, beta })),
            parts,
            reports,
            contributors,
            design,
            gate,
            result,
        })
    }

    /// Runs the rounds of the model and of its null model. `Ok(Err(why))`: no model (too few
    /// regions, separation, a singular design).
    #[allow(clippy::too_many_arguments)]
    async fn rounds(
        &self,
        request: &dyn Fn(RegressStep) -> RegressRequest,
        contributors: &mut Vec<Contributor>,
        parts: &mut [RegionPart],
        design: &Design,
        model: &Model,
        tolerance: f64,
        max_iterations: u32,
        gate: Disclosure,
    ) -> Result<Result<(Fitted, f64), String>, Error> {
        'attempt: loop {
            if contributors.len() < gate.min_regions.max(1) {
                return Ok(Err(format!(
                    "{} region(s) could take part; the gate needs at least {} (minRegions)",
                    contributors.len(),
                    gate.min_regions.max(1)
                )));
            }
            let mut fits = Vec::new();
            for d in [design.clone(), design.null_model()] {
                let mut irls = Irls::new(model.family, d.p(), tolerance, max_iterations);
                let fitted = loop {
                    let beta = irls.asked_at().map(<[f64]>::to_vec);
                    let step = request(RegressStep::Round {
                        design: d.clone(),
                        beta,
                    });
                    let sum = match self.round(contributors, parts, &step, d.p()).await {
                        Some(sum) => sum,
                        // A region dropped out: start again without it.
                        None => continue 'attempt,
                    };
                    match irls.step(&sum) {
                        Step::Ask(_) => continue,
                        Step::Done(f) => break Some(f),
                        Step::Failed(p) if d.null => {
                            tracing::warn!(problem = ?p, "the null model could not be fitted");
                            break None;
                        }
                        Step::Failed(p) => return Ok(Err(problem_text(&p, &d.terms))),
                    }
                };
                fits.push(fitted);
            }
            let null = fits.pop().flatten().map_or(f64::NAN, |f| f.deviance);
            return match fits.pop().flatten() {
                Some(f) => Ok(Ok((f, null))),
                None => Ok(Err("the model could not be fitted".into())),
            };
        }
    }

    /// One round at every contributor, summed; `None` when a region failed (it is dropped).
    async fn round(
        &self,
        contributors: &mut Vec<Contributor>,
        parts: &mut [RegionPart],
        step: &RegressRequest,
        p: usize,
    ) -> Option<Part> {
        let targets: Vec<(String, String)> = contributors.iter().map(|c| (c.region.clone(), c.url.clone())).collect();
        let answers: Vec<(RegionReport, Option<NodeRegress>)> = self
            .fan_out(&targets, |client, url| {
                client.post(format!("{url}/federation/regress")).json(step)
            })
            .await;
        let mut sum = Part::zero(p);
        let mut failed = Vec::new();
        for (report, answer) in answers {
            match answer {
                Some(NodeRegress {
                    region,
                    refused: None,
                    part: Some(part),
                    ..
                }) if region == report.region && part.well_formed(p) => sum.add(&part),
                Some(NodeRegress { refused: Some(why), .. }) => failed.push((report.region, "refused", why)),
                Some(_) => failed.push((report.region, "error", "the node's sums do not fit the model".into())),
                None => failed.push((
                    report.region.clone(),
                    status_text(report.status),
                    report.detail.unwrap_or_default(),
                )),
            }
        }
        if failed.is_empty() {
            return Some(sum);
        }
        for (region, status, why) in failed {
            contributors.retain(|c| c.region != region);
            if let Some(part) = parts.iter_mut().find(|x| x.region == region) {
                *part = refused(&region, status, format!("stopped answering during the fit: {why}"));
            }
        }
        None
    }

    async fn close(&self, contributors: &[Contributor], step: &RegressRequest) {
        let targets: Vec<(String, String)> = contributors.iter().map(|c| (c.region.clone(), c.url.clone())).collect();
        let _: Vec<(RegionReport, Option<NodeRegress>)> = self
            .fan_out(&targets, |client, url| {
                client.post(format!("{url}/federation/regress")).json(step)
            })
            .await;
    }
}

fn refused(region: &str, status: &str, reason: String) -> RegionPart {
    RegionPart {
        region: region.to_string(),
        status: status.to_string(),
        n: None,
        reason: Some(reason),
    }
}

fn round_to(n: u64, base: u64) -> u64 {
    if base <= 1 {
        n
    } else {
        (n + base / 2) / base * base
    }
}
