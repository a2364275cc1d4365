//! The federation hub: asks every node the same aggregate question over mutual
//! TLS, waits for each at most the deadline, pools the answers exactly and
//! releases them through the disclosure gate. It never asks for rows.
//!
//! A slow, failing or unreachable node is reported in `regions` and makes the
//! reply `partial`; it never makes the whole query hang or fail.

pub mod oidc;
mod regress;

use crate::audit::{AuditLog, AuditRecord};
use crate::config::HubConfig;
use crate::error::Error;
use crate::federation::{self, counts, AggregateQuery, Disclosure, NodeAggregate, NodeCount, Release};
use crate::fhir::{Issue, IssueCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How one region's part of a query went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RegionStatus {
    Ok,
    Timeout,
    Error,
    Unreachable,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RegionReport {
    pub region: String,
    pub status: RegionStatus,
    pub latency_ms: u64,
    pub detail: Option<String>,
    pub last_updated: Option<String>,
    /// The node's completeness of must-support elements for the type asked about.
    pub completeness: Option<f64>,
}

/// A question the hub refuses (400), naming the member at fault.
fn bad(message: impl Into<String>, expression: Option<&str>) -> Error {
    Error::invalid(Issue {
        expression: expression.map(str::to_string),
        ..Issue::error(IssueCode::Invalid, message)
    })
}

#[derive(Clone)]
pub struct Hub {
    pub config: Arc<HubConfig>,
    client: reqwest::Client,
    /// The hub's audit trail.
    pub audit: Arc<AuditLog>,
    /// Released answers by canonical query, for `HubConfig::answer_cache` (identical questions get the same answer).
    answers: Arc<std::sync::Mutex<std::collections::HashMap<String, (Instant, Answer)>>>,
    /// The pathways the hub federates (the version every node must run).
    pub pathways: Arc<crate::pathways::Library>,
    /// Recent aggregate questions per client, for the rate limit: in the hub's store,
    /// so that every hub process counts the same questions.
    shared: Arc<dyn crate::auth::tokens::Shared>,
}

/// The rate limit's window.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Retries a failed connection attempt after this long, while the deadline allows.
const RETRY_AFTER: Duration = Duration::from_millis(100);

impl Hub {
    pub fn new(config: Arc<HubConfig>, audit: Arc<AuditLog>) -> Result<Hub, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.deadline)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("pennine-hub/", env!("CARGO_PKG_VERSION")));
        if let Some(files) = &config.tls {
            let tls = crate::tls::client_config(files)
                .map_err(|e| Error::Internal(format!("cannot build the HTTPS client: {e}")))?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let client = builder
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the HTTPS client: {e}")))?;
        Ok(Hub {
            config,
            client,
            audit,
            answers: Arc::default(),
            pathways: crate::pathways::Library::built_in(),
            shared: Arc::new(crate::auth::tokens::MemoryShared::default()),
        })
    }

    /// The same hub keeping its rate limit in `shared` (its store).
    pub fn with_shared(mut self, shared: Arc<dyn crate::auth::tokens::Shared>) -> Hub {
        self.shared = shared;
        self
    }

    /// The same hub federating these pathways.
    pub fn with_pathways(mut self, pathways: Arc<crate::pathways::Library>) -> Hub {
        self.pathways = pathways;
        self
    }

    /// A released answer to the same question within the cache window, if any.
    pub fn cached(&self, key: &str) -> Option<Answer> {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        let ttl = self.config.answer_cache;
        answers.retain(|_, (at, _)| at.elapsed() < ttl);
        answers.get(key).map(|(_, v)| v.clone())
    }

    pub fn remember(&self, key: String, answer: &Answer) {
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        answers.insert(key, (Instant::now(), answer.clone()));
    }

    /// Counts a question against the client's rate; `Err(seconds)` to wait when over it.
    /// Blocking (the count may be in PostgreSQL): call it on the blocking pool. When
    /// the count cannot be read the question is refused (a limit that fails open is none).
    pub fn admit(&self, client: &str) -> Result<(), u64> {
        let now = crate::fhir::time::now_millis();
        let window = RATE_WINDOW.as_millis() as i64;
        let limit = self.config.aggregate_rate as usize;
        // Times (ms) of the questions within the window, oldest first.
        let recent = move |value: Option<&[u8]>| -> Vec<i64> {
            let mut times: Vec<i64> = value.and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
            times.retain(|t| now - t < window);
            times
        };
        let key = format!("rate:{client}");
        let previous = self.shared.update(
            &key,
            Box::new(move |value| {
                let mut times = recent(value);
                if times.len() < limit {
                    times.push(now);
                }
                let expires = (now + window) / 1000 + 1;
                Some((serde_json::to_vec(&times).unwrap_or_default(), expires))
            }),
        );
        match previous {
            Ok(value) => {
                let times = recent(value.as_deref());
                if times.len() >= limit {
                    let oldest = times.first().copied().unwrap_or(now);
                    Err(((window - (now - oldest)) / 1000).max(1) as u64)
                } else {
                    Ok(())
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "the rate limit could not be read; the question is refused");
                Err(1)
            }
        }
    }

    fn regions_for(&self, asked: Option<&[String]>) -> Result<Vec<(String, String)>, Error> {
        let all: Vec<(String, String)> = self
            .config
            .nodes
            .iter()
            .map(|(r, u)| (r.to_string(), u.clone()))
            .collect();
        let Some(asked) = asked else { return Ok(all) };
        if asked.is_empty() {
            return Err(bad("'regions' must name at least one region", Some("regions")));
        }
        let mut out = Vec::new();
        for (i, r) in asked.iter().enumerate() {
            let node = all.iter().find(|(name, _)| name == r).ok_or_else(|| {
                bad(
                    format!(
                        "unknown region '{r}' (this hub federates {})",
                        all.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                    ),
                    Some(&format!("regions[{i}]")),
                )
            })?;
            if !out.contains(node) {
                out.push(node.clone());
            }
        }
        // Replies follow the configured order, whatever order the client used.
        out.sort_by_key(|(name, _)| all.iter().position(|(n, _)| n == name));
        Ok(out)
    }

    /// Calls every region at once; each call has the deadline and may retry a
    /// failed connection within it (the calls are read-only, so idempotent).
    async fn fan_out<T: DeserializeOwned + Send + 'static>(
        &self,
        regions: &[(String, String)],
        request: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Vec<(RegionReport, Option<T>)> {
        let deadline = self.config.deadline;
        let calls = regions.iter().map(|(region, url)| {
            let attempt = || request(&self.client, url);
            async move {
                let started = Instant::now();
                let result = tokio::time::timeout(deadline, async {
                    loop {
                        match attempt().send().await {
                            Err(e)
                                if e.is_connect() && !e.is_timeout() && started.elapsed() + RETRY_AFTER < deadline =>
                            {
                                if is_tls_failure(&e) {
                                    return Err(e);
                                }
                                tokio::time::sleep(RETRY_AFTER).await;
                            }
                            other => return other,
                        }
                    }
                })
                .await;
                let latency_ms = started.elapsed().as_millis() as u64;
                let report = |status, detail: Option<String>| RegionReport {
                    region: region.clone(),
                    status,
                    latency_ms,
                    detail,
                    last_updated: None,
                    completeness: None,
                };
                match result {
                    Err(_) => (
                        report(
                            RegionStatus::Timeout,
                            Some(format!("no answer within {} ms", deadline.as_millis())),
                        ),
                        None,
                    ),
                    Ok(Err(e)) if e.is_timeout() => (
                        report(
                            RegionStatus::Timeout,
                            Some(format!(
                                "no answer within {} ms: {}",
                                deadline.as_millis(),
                                error_chain(&e)
                            )),
                        ),
                        None,
                    ),
                    Ok(Err(e)) => {
                        let status = if is_tls_failure(&e) || !e.is_connect() {
                            RegionStatus::Error
                        } else {
                            RegionStatus::Unreachable
                        };
                        (report(status, Some(error_chain(&e))), None)
                    }
                    Ok(Ok(res)) => {
                        let code = res.status();
                        let remaining = deadline.saturating_sub(started.elapsed());
                        let body = tokio::time::timeout(remaining, res.bytes()).await;
                        match body {
                            Err(_) => (
                                report(RegionStatus::Timeout, Some("the answer came too slowly".into())),
                                None,
                            ),
                            Ok(Err(e)) => (report(RegionStatus::Error, Some(error_chain(&e))), None),
                            Ok(Ok(bytes)) if !code.is_success() => (
                                report(RegionStatus::Error, Some(outcome_text(code.as_u16(), &bytes))),
                                None,
                            ),
                            Ok(Ok(bytes)) => match serde_json::from_slice::<T>(&bytes) {
                                Ok(v) => (report(RegionStatus::Ok, None), Some(v)),
                                Err(e) => (
                                    report(
                                        RegionStatus::Error,
                                        Some(format!("the node's answer is not understood: {e}")),
                                    ),
                                    None,
                                ),
                            },
                        }
                    }
                }
            }
        });
        futures_util::future::join_all(calls).await
    }

    /// `POST /fhir/$aggregate`: the question is checked against its approved
    /// view, put to every region asked, pooled and released through the gate.
    pub async fn aggregate(&self, q: AggregateQuery, raw: &str, who: &str) -> Result<AggregateReply, Error> {
        let plan = q.plan().map_err(|p| bad(p.message, Some(&p.expression)))?;
        let regions = self.regions_for(q.regions.as_deref())?;
        let every_region_asked = regions.len() == self.config.nodes.len();
        let request = plan.request(self.config.disclosure, self.config.deadline.as_millis() as u64);
        let answers: Vec<(RegionReport, Option<NodeAggregate>)> = self
            .fan_out(&regions, |client, url| {
                client.post(format!("{url}/federation/aggregate")).json(&request)
            })
            .await;
        let mut reports = Vec::new();
        let mut answered_names = Vec::new();
        let mut answered = Vec::new();
        let mut gate = self.config.disclosure;
        for (mut report, answer) in answers {
            if let Some(a) = answer {
                if a.region != report.region {
                    report.status = RegionStatus::Error;
                    report.detail = Some(format!("the node at this URL says it serves '{}'", a.region));
                } else {
                    report.last_updated = a.last_updated.clone();
                    report.completeness = a.completeness;
                    gate = gate.stricter(Disclosure {
                        min_regions: gate.min_regions,
                        ..a.disclosure
                    });
                    answered_names.push(a.region.clone());
                    answered.push(a);
                }
            }
            reports.push(report);
        }
        let slices: Vec<&[federation::GroupStats]> = answered.iter().map(|a| a.groups.as_slice()).collect();
        let pooled = federation::pool(&plan, &slices).map_err(|e| bad(e, None))?;
        let release = gate.release(&plan, &answered_names, &pooled, every_region_asked);
        let reply = AggregateReply {
            complete: reports.iter().all(|r| r.status == RegionStatus::Ok),
            regions: reports,
            release,
            gate,
        };
        self.record(
            "aggregate",
            who,
            raw,
            &reply.regions,
            format!(
                "view {} {}: {} row(s) released; {} row(s) withheld",
                plan.approved.name,
                plan.approved.version,
                reply.release.rows().len(),
                reply.release.withheld_rows()
            ),
        )
        .await?;
        Ok(reply)
    }

    /// Every node's exact counts of `pathway` over the period: the regions' reports,
    /// the versions they run, the counts of those on the hub's version, and the gate
    /// (the stricter of the hub's settings and each answering node's floor).
    #[allow(clippy::type_complexity)]
    /// The regions' counts of a pathway for a period: within the answer cache window,
    /// the counts of the last complete answer (a page asks `$evaluate-measure` and
    /// `$benchmark` of the same counts); a partial answer is never kept, so a region
    /// that comes back is asked again. Every question is still recorded.
    async fn measure_counts(
        &self,
        pathway: &crate::pathways::Pathway,
        period_start: &str,
        period_end: &str,
    ) -> Result<Arc<MeasureCounts>, Error> {
        let key = format!("measure {} {} {period_start} {period_end}", pathway.id, pathway.version);
        if let Some(Answer::Measure(m)) = self.cached(&key) {
            return Ok(m);
        }
        let m = Arc::new(self.measure_counts_now(pathway, period_start, period_end).await?);
        if m.0.iter().all(|r| r.status == RegionStatus::Ok) && !self.config.answer_cache.is_zero() {
            self.remember(key, &Answer::Measure(m.clone()));
        }
        Ok(m)
    }

    async fn measure_counts_now(
        &self,
        pathway: &crate::pathways::Pathway,
        period_start: &str,
        period_end: &str,
    ) -> Result<MeasureCounts, Error> {
        let regions = self.regions_for(None)?;
        let request = federation::MeasureRequest {
            measure: pathway.id.clone(),
            version: pathway.version.clone(),
            period_start: period_start.to_string(),
            period_end: period_end.to_string(),
            disclosure: self.config.disclosure,
            deadline_ms: self.config.deadline.as_millis() as u64,
        };
        let answers: Vec<(RegionReport, Option<federation::NodeMeasure>)> = self
            .fan_out(&regions, |client, url| {
                client.post(format!("{url}/federation/measure")).json(&request)
            })
            .await;
        let mut reports = Vec::new();
        let mut answered: Vec<(String, crate::pathways::Counts)> = Vec::new();
        let mut versions: Vec<(String, String)> = Vec::new();
        let mut gate = self.config.disclosure;
        for (mut report, answer) in answers {
            if let Some(a) = answer {
                versions.push((a.region.clone(), a.version.clone()));
                if a.region != report.region {
                    report.status = RegionStatus::Error;
                    report.detail = Some(format!("the node at this URL says it serves '{}'", a.region));
                } else if a.version != pathway.version || a.measure != pathway.id {
                    report.status = RegionStatus::Error;
                    report.detail = Some(format!(
                        "the node runs {} {}, not {}: its counts are not mixed in",
                        a.measure, a.version, pathway.version
                    ));
                } else if let Some(counts) = a.counts {
                    report.last_updated = a.last_updated.clone();
                    report.completeness = a.completeness;
                    gate = gate.stricter(Disclosure {
                        min_regions: gate.min_regions,
                        ..a.disclosure
                    });
                    answered.push((a.region.clone(), counts));
                }
            }
            reports.push(report);
        }
        Ok((reports, versions, answered, gate))
    }

    fn pathway(&self, id: &str) -> Result<Arc<crate::pathways::Pathway>, Error> {
        self.pathways
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound("Measure".into(), id.to_string()))
    }

    /// `Measure/{id}/$evaluate-measure` at the hub: every node evaluates the same
    /// version of the pathway; nodes on another version are reported, not mixed in;
    /// the pooled counts are released through the gate as one summary MeasureReport.
    pub async fn evaluate_measure(
        &self,
        id: &str,
        period_start: &str,
        period_end: &str,
        raw: &str,
        who: &str,
    ) -> Result<Value, Error> {
        let pathway = self.pathway(id)?;
        let counts = self.measure_counts(&pathway, period_start, period_end).await?;
        let (reports, versions, answered, gate) = &*counts;
        let groups: Vec<String> = pathway.group_codes().iter().map(|s| s.to_string()).collect();
        let slices: Vec<(String, &crate::pathways::Counts)> = answered.iter().map(|(r, c)| (r.clone(), c)).collect();
        let release = gate.release_measure(&groups, &slices, true);
        let report = released_report(&pathway, &release, period_start, period_end, reports, versions, gate);
        let withheld = release.rows().iter().filter(|r| r.withheld().is_some()).count();
        self.record(
            "evaluate-measure",
            who,
            raw,
            reports,
            format!(
                "{} {}: {} stratum row(s) released; {} withheld",
                pathway.id,
                pathway.version,
                release.rows().len() - withheld,
                withheld
            ),
        )
        .await?;
        Ok(report)
    }

    /// `Measure/{id}/$benchmark`: indirectly standardised ratios per provider across
    /// the regions, with flags and funnel limits, through the gate.
    #[allow(clippy::too_many_arguments)]
    pub async fn benchmark(
        &self,
        id: &str,
        period_start: &str,
        period_end: &str,
        group: &str,
        adjustment: &Adjustment,
        raw: &str,
        who: &str,
    ) -> Result<(Value, crate::federation::disclosure::BenchmarkRelease), Error> {
        let pathway = self.pathway(id)?;
        if !pathway.group_codes().contains(&group) {
            return Err(bad(
                format!(
                    "{id} has no group '{group}' (its groups: {})",
                    pathway.group_codes().join(", ")
                ),
                Some("group"),
            ));
        }
        let counts = self.measure_counts(&pathway, period_start, period_end).await?;
        let (reports, _versions, answered, gate) = &*counts;
        let slices: Vec<(String, &crate::pathways::Counts)> = answered.iter().map(|(r, c)| (r.clone(), c)).collect();
        let (figures, answering, method) = match adjustment {
            Adjustment::Indirect => (
                crate::pathways::benchmark::providers(&slices, group),
                answered.len(),
                json!({"method": "indirect-standardisation", "strata": ["age-band", "sex"]}),
            ),
            Adjustment::Logistic(predictors) => {
                self.logistic_figures(&pathway, period_start, period_end, group, predictors)
                    .await?
            }
        };
        let release = gate.release_benchmark(&figures, answering);
        self.record(
            "benchmark",
            who,
            raw,
            reports,
            format!(
                "{} {} {group}: {} provider(s) released; {} withheld",
                pathway.id,
                pathway.version,
                release.released(),
                release.withheld()
            ),
        )
        .await?;
        let reply = json!({
            "measure": pathway.id,
            "version": pathway.version,
            "group": group,
            "period": {"start": period_start, "end": period_end},
            "status": if reports.iter().all(|r| r.status == RegionStatus::Ok) { "complete" } else { "partial" },
            "regions": reports,
            "adjustment": method,
            "providers": release.providers_json(),
            "funnel": release.funnel_json(),
            "disclosure": {
                "minCell": gate.min_cell,
                "rounding": gate.rounding,
                "noise": gate.noise,
                "minRegions": gate.min_regions,
                "notes": release.notes(),
            },
        });
        Ok((reply, release))
    }

    /// `GET /quality`: the regions' quality figures (per resource type, aggregates only).
    pub async fn quality(&self) -> Result<Value, Error> {
        let regions = self.regions_for(None)?;
        let answers: Vec<(RegionReport, Option<Value>)> = self
            .fan_out(&regions, |client, url| client.get(format!("{url}/federation/quality")))
            .await;
        let mut out = serde_json::Map::new();
        let mut statuses = Vec::new();
        for (mut report, answer) in answers {
            if let Some(mut a) = answer {
                if a.get("region").and_then(Value::as_str) == Some(report.region.as_str()) {
                    report.last_updated = a.get("lastUpdated").and_then(Value::as_str).map(str::to_string);
                    if let Some(o) = a.as_object_mut() {
                        o.remove("region");
                        o.remove("bySource");
                    }
                    // Every figure that leaves the hub passes the gate, the quality counts too.
                    self.config.disclosure.release_quality(&mut a);
                    out.insert(report.region.clone(), a);
                } else {
                    report.status = RegionStatus::Error;
                    report.detail = Some("the node at this URL serves another region".into());
                }
            }
            statuses.push(report);
        }
        let complete = statuses.iter().all(|r| r.status == RegionStatus::Ok);
        Ok(json!({
            "status": if complete { "complete" } else { "partial" },
            "regions": statuses,
            "quality": out,
        }))
    }

    /// `GET /fhir/<type>?...&_summary=count`: a searchset Bundle with the pooled
    /// total. `pairs` are the search parameters without `_summary`, `_count` and
    /// `_format`; only approved parameters in generalised forms are accepted.
    pub async fn count(&self, rtype: &str, pairs: &[(String, String)], who: &str) -> Result<Value, Error> {
        counts::check(rtype, pairs).map_err(|p| bad(p.message, Some(&p.expression)))?;
        let regions = self.regions_for(None)?;
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs.iter())
            .finish();
        let answers: Vec<(RegionReport, Option<NodeCount>)> = self
            .fan_out(&regions, |client, url| {
                client.get(format!("{url}/federation/count/{rtype}?{query}"))
            })
            .await;
        let mut reports = Vec::new();
        let mut answered: Vec<(String, (u64, u64))> = Vec::new();
        let mut gate = self.config.disclosure;
        for (mut report, answer) in answers {
            if let Some(a) = answer {
                if a.region == report.region {
                    report.last_updated = a.last_updated;
                    report.completeness = a.completeness;
                    gate = gate.stricter(Disclosure {
                        min_regions: gate.min_regions,
                        ..a.disclosure
                    });
                    answered.push((a.region, (a.count, a.cell_key)));
                } else {
                    report.status = RegionStatus::Error;
                    report.detail = Some(format!("the node at this URL says it serves '{}'", a.region));
                }
            }
            reports.push(report);
        }
        let figures: Vec<(u64, u64)> = answered.iter().map(|(_, f)| *f).collect();
        let released = gate.release_counts(&figures, true);
        let complete = reports.iter().all(|r| r.status == RegionStatus::Ok);
        let mut extensions = Vec::new();
        for r in &reports {
            let mut ext = vec![json!({"url": "region", "valueString": r.region})];
            if let Some(i) = answered.iter().position(|(name, _)| *name == r.region) {
                match released.region(i) {
                    Some(n) => ext.push(json!({"url": "count", "valueUnsignedInt": n})),
                    None => ext.push(json!({"url": "suppressed", "valueBoolean": true})),
                }
            }
            ext.push(json!({"url": "status", "valueCode": r.status}));
            if let Some(t) = &r.last_updated {
                ext.push(json!({"url": "lastUpdated", "valueInstant": t}));
            }
            if let Some(c) = r.completeness {
                ext.push(json!({"url": "completeness", "valueDecimal": c}));
            }
            if let Some(d) = &r.detail {
                ext.push(json!({"url": "detail", "valueString": d}));
            }
            extensions.push(json!({"url": REGION_COUNT_EXTENSION, "extension": ext}));
        }
        extensions.push(json!({"url": FEDERATION_STATUS_EXTENSION,
            "valueCode": if complete { "complete" } else { "partial" }}));
        for note in released.notes() {
            extensions.push(json!({"url": DISCLOSURE_NOTE_EXTENSION, "valueString": note}));
        }
        let mut bundle = json!({
            "resourceType": "Bundle",
            "type": "searchset",
            "extension": extensions,
        });
        if let Some(t) = released.total() {
            bundle["total"] = json!(t);
        }
        self.record(
            "count",
            who,
            &format!("{rtype}?{query}"),
            &reports,
            match released.total() {
                Some(t) => format!("pooled count {t} released"),
                None => "pooled count withheld".into(),
            },
        )
        .await?;
        Ok(bundle)
    }

    async fn record(
        &self,
        action: &str,
        who: &str,
        query: &str,
        reports: &[RegionReport],
        released: String,
    ) -> Result<(), Error> {
        let regions = reports
            .iter()
            .map(|r| {
                format!(
                    "{}={}",
                    r.region,
                    serde_json::to_value(r.status)
                        .unwrap_or_default()
                        .as_str()
                        .unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let audit = self.audit.clone();
        let (action, who, query) = (action.to_string(), who.to_string(), query.to_string());
        // The audit write is durable before the answer goes out.
        tokio::task::spawn_blocking(move || {
            audit.record_now(&AuditRecord {
                action: &action,
                who: &who,
                observer: "hub",
                outcome: Ok(()),
                query: &query,
                details: vec![("regions", regions), ("released", released)],
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("audit task failed: {e}")))??;
        Ok(())
    }
}

pub const REGION_COUNT_EXTENSION: &str = "https://pennine.nhs.example/fhir/StructureDefinition/federated-region-count";
pub const FEDERATION_STATUS_EXTENSION: &str = "https://pennine.nhs.example/fhir/StructureDefinition/federation-status";
pub const DISCLOSURE_NOTE_EXTENSION: &str = "https://pennine.nhs.example/fhir/StructureDefinition/disclosure-note";

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

fn is_tls_failure(e: &reqwest::Error) -> bool {
    let text = format!("{e:?}").to_ascii_lowercase();
    text.contains("certificate") || text.contains("tls") || text.contains("handshake")
}

fn outcome_text(status: u16, body: &[u8]) -> String {
    let diagnostics = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
        v["issue"].as_array().map(|issues| {
            issues
                .iter()
                .filter_map(|i| i["diagnostics"].as_str())
                .collect::<Vec<_>>()
                .join("; ")
        })
    });
    match diagnostics {
        Some(d) if !d.is_empty() => format!("HTTP {status}: {d}"),
        _ => format!("HTTP {status}"),
    }
}

/// A released answer, kept for the cache window.
/// How `$benchmark` adjusts for case mix.
#[derive(Debug, Clone, PartialEq)]
pub enum Adjustment {
    /// Indirect standardisation by age band and sex (the programme's method).
    Indirect,
    /// Expected outcomes from a federated logistic model of the cohort with these predictors.
    Logistic(Vec<String>),
}

#[derive(Debug, Clone)]
pub enum Answer {
    Aggregate(Arc<AggregateReply>),
    Count(Value),
    Measure(Arc<MeasureCounts>),
    Regress(Arc<Value>),
}

/// What the regions answered about a pathway: each region's report, the versions
/// they run, the counts of those that answered with the version asked, and the
/// gate (the stricter of the hub's and the answering nodes' settings).
pub type MeasureCounts = (
    Vec<RegionReport>,
    Vec<(String, String)>,
    Vec<(String, crate::pathways::Counts)>,
    Disclosure,
);

/// The reply of `$aggregate`: how each region answered and what the gate released.
#[derive(Debug, Clone)]
pub struct AggregateReply {
    pub complete: bool,
    pub regions: Vec<RegionReport>,
    pub release: Release,
    pub gate: Disclosure,
}

impl AggregateReply {
    pub fn to_json(&self) -> Value {
        json!({
            "status": if self.complete { "complete" } else { "partial" },
            "regions": self.regions,
            "rows": self.release.rows_json(),
            "disclosure": {
                "minCell": self.gate.min_cell,
                "rounding": self.gate.rounding,
                "noise": self.gate.noise,
                "notes": self.release.notes(),
            },
        })
    }

    /// The released rows as CSV (the same rows as the JSON reply).
    pub fn to_csv(&self) -> Vec<u8> {
        self.release.csv()
    }
}

const EXT: &str = "https://pennine.nhs.example/fhir/StructureDefinition/";

fn released_populations(c: &crate::federation::disclosure::ReleasedCell) -> Value {
    let p = |code: &str, n: u64| json!({"code": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/measure-population", "code": code}]}, "count": n});
    json!([
        p("initial-population", c.population),
        p("denominator", c.population),
        p("numerator", c.numerator)
    ])
}

/// A stratum with row `r`'s released figures for group `gi`, or the reason it is
/// withheld; `None` when the group has no one in the stratum.
fn with_figures(mut stratum: Value, r: &crate::federation::disclosure::MeasureRow, gi: usize) -> Option<Value> {
    if let Some(why) = r.withheld() {
        stratum["extension"] = withheld_extension(why);
        return Some(stratum);
    }
    let c = r.cell(gi)?;
    stratum["population"] = released_populations(c);
    if let Some(sc) = c.score {
        stratum["measureScore"] = json!({"value": sc});
    }
    Some(stratum)
}

fn withheld_extension(why: &str) -> Value {
    json!([{"url": format!("{EXT}withheld"), "valueString": why}])
}

/// The region × month stratifier of group `gi`: strata with two components
/// (`region`, `month`), as R4 MeasureReport carries a cross-stratification.
fn region_months(release: &crate::federation::disclosure::MeasureRelease, gi: usize) -> Value {
    use crate::federation::disclosure::REGION_MONTH;
    use crate::pathways::{MONTH, STRATIFIER_SYSTEM};
    let code = |c: &str| json!({"coding": [{"system": STRATIFIER_SYSTEM, "code": c}]});
    let strata: Vec<Value> = release
        .rows()
        .iter()
        .filter(|r| r.stratifier.as_deref() == Some(REGION_MONTH))
        .filter_map(|r| {
            let (region, month) = r.value.split_once('|')?;
            let stratum = json!({"component": [
                {"code": code("region"), "value": {"text": region}},
                {"code": code(MONTH), "value": {"text": month}},
            ]});
            with_figures(stratum, r, gi)
        })
        .collect();
    json!({"code": [code("region"), code(MONTH)], "stratum": strata})
}

/// The hub's summary MeasureReport, from what the gate released: withheld cells are
/// absent from `population` and named in a `withheld` extension with the reason.
pub fn released_report(
    pathway: &crate::pathways::Pathway,
    release: &crate::federation::disclosure::MeasureRelease,
    start: &str,
    end: &str,
    regions: &[RegionReport],
    versions: &[(String, String)],
    gate: &Disclosure,
) -> Value {
    use crate::pathways::{GROUP_SYSTEM, STRATIFIERS, STRATIFIER_SYSTEM};
    let total = release.rows().iter().find(|r| r.stratifier.is_none());
    let groups: Vec<Value> = release
        .groups()
        .iter()
        .enumerate()
        .map(|(gi, code)| {
            let mut group = json!({"code": {"coding": [{"system": GROUP_SYSTEM, "code": code}]}});
            match total {
                Some(t) if t.withheld().is_some() => {
                    group["extension"] = withheld_extension(t.withheld().unwrap_or(""))
                }
                Some(t) => {
                    if let Some(c) = t.cell(gi) {
                        group["population"] = released_populations(c);
                        if let Some(sc) = c.score {
                            group["measureScore"] = json!({"value": sc});
                        }
                    }
                }
                None => group["extension"] = withheld_extension("no region answered"),
            }
            let stratifiers: Vec<Value> = std::iter::once("region")
                .chain(STRATIFIERS)
                .map(|s| {
                    let strata: Vec<Value> = release
                        .rows()
                        .iter()
                        .filter(|r| r.stratifier.as_deref() == Some(s))
                        .filter_map(|r| with_figures(json!({"value": {"text": r.value}}), r, gi))
                        .collect();
                    json!({"code": [{"coding": [{"system": STRATIFIER_SYSTEM, "code": s}]}], "stratum": strata})
                })
                .collect();
            let mut stratifiers = stratifiers;
            stratifiers.push(region_months(release, gi));
            group["stratifier"] = Value::Array(stratifiers);
            group
        })
        .collect();
    let region_extensions: Vec<Value> = regions
        .iter()
        .map(|r| {
            let mut parts = vec![
                json!({"url": "region", "valueString": r.region}),
                json!({"url": "status", "valueCode": serde_json::to_value(r.status).unwrap_or_default()}),
                json!({"url": "latencyMs", "valueInteger": r.latency_ms}),
            ];
            if let Some((_, v)) = versions.iter().find(|(reg, _)| *reg == r.region) {
                parts.push(json!({"url": "version", "valueString": v}));
            }
            if let Some(d) = &r.detail {
                parts.push(json!({"url": "detail", "valueString": d}));
            }
            if let Some(u) = &r.last_updated {
                parts.push(json!({"url": "lastUpdated", "valueString": u}));
            }
            if let Some(c) = r.completeness {
                parts.push(json!({"url": "completeness", "valueDecimal": c}));
            }
            json!({"url": format!("{EXT}region-status"), "extension": parts})
        })
        .collect();
    let mut extensions = region_extensions;
    extensions.push(json!({"url": format!("{EXT}disclosure"), "extension": [
        {"url": "minCell", "valueInteger": gate.min_cell},
        {"url": "rounding", "valueInteger": gate.rounding},
        {"url": "noise", "valueInteger": gate.noise},
        {"url": "minRegions", "valueInteger": gate.min_regions},
    ]}));
    for n in release.notes() {
        extensions.push(json!({"url": format!("{EXT}disclosure-note"), "valueString": n}));
    }
    let complete = regions.iter().all(|r| r.status == RegionStatus::Ok);
    json!({
        "resourceType": "MeasureReport",
        "extension": extensions,
        "status": if complete { "complete" } else { "pending" },
        "type": "summary",
        "measure": format!("{}|{}", pathway.url, pathway.version),
        "date": crate::fhir::time::format_instant(crate::fhir::time::now_millis()),
        "reporter": {"display": "Pennine hub"},
        "period": {"start": start, "end": end},
        "group": groups,
    })
}
