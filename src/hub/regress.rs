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
        let fit = uuid::Uuid::new_v4().to_string();
        let deadline_ms = self.config.deadline.as_millis() as u64;
        let request = |step: RegressStep| RegressRequest {
            fit: fit.clone(),
            step,
            disclosure: self.config.disclosure,
            deadline_ms,
        };

        // Open: each region finds, checks and holds its rows.
        let open = request(RegressStep::Open {
            view_reference: approved.name.to_string(),
            view_digest: approved.digest.clone(),
            model: model.clone(),
        });
        let answers: Vec<(RegionReport, Option<NodeRegress>)> = self
            .fan_out(&regions, |client, url| {
                client.post(format!("{url}/federation/regress")).json(&open)
            })
            .await;
        let mut parts: Vec<RegionPart> = Vec::new();
        let mut reports: Vec<RegionReport> = Vec::new();
        let mut contributors: Vec<Contributor> = Vec::new();
        let mut levels: Vec<Vec<Vec<String>>> = Vec::new();
        let mut gate = self.config.disclosure;
        for ((mut report, answer), (_, url)) in answers.into_iter().zip(&regions) {
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
            let design = match Design::settle(&model, &level_refs) {
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

        let outcome = self
            .rounds(
                &request,
                &mut contributors,
                &mut parts,
                &design,
                &model,
                q.tolerance,
                q.max_iterations,
                gate,
            )
            .await;
        let (fitted, null_deviance) = match outcome {
            Ok(Ok(f)) => f,
            Ok(Err(problem)) => {
                self.close(&contributors, &request(RegressStep::Close)).await;
                self.record("regress", who, raw, &reports, format!("nothing: {problem}"))
                    .await?;
                return Err(not_fitted(problem, &parts));
            }
            Err(e) => {
                self.close(&contributors, &request(RegressStep::Close)).await;
                return Err(e);
            }
        };
        self.close(&contributors, &request(RegressStep::Close)).await;
        let summary = glm::summarise(model.family, &design.terms, &fitted);
        // Each region's row count, rounded as any released count (the total is exact, as df needs).
        for p in parts.iter_mut() {
            p.n = p.n.map(|n| round_to(n, gate.rounding));
        }
        let complete = every_region_asked && parts.iter().all(|p| p.status == "ok");
        let reply = regress::reply_json(
            if complete { "complete" } else { "partial" },
            &parts,
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
            &reports,
            format!(
                "a {} model of {} term(s) over {} row(s) from {} region(s); no rows, no matrices",
                model.family.as_str(),
                design.terms.len(),
                fitted.n,
                contributors.len()
            ),
        )
        .await?;
        Ok(reply)
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
