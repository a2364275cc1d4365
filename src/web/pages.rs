//! The pages, each from released JSON: the hub's MeasureReport, `$benchmark`
//! reply, quality figures and the log of federated questions.

use super::charts::{self, FunnelPoint, Limits, Month};
use super::{layout, period_form, Chrome};
use maud::{html, Markup};
use serde_json::Value;

const EXT: &str = "https://pennine.nhs.example/fhir/StructureDefinition/";

pub use crate::config::BenchmarkLabels as Labels;

/// A group of a MeasureReport by its code.
fn group<'a>(report: &'a Value, code: &str) -> Option<&'a Value> {
    report["group"]
        .as_array()?
        .iter()
        .find(|g| g["code"]["coding"][0]["code"] == code)
}

fn population(v: &Value, code: &str) -> Option<u64> {
    v["population"]
        .as_array()?
        .iter()
        .find(|p| p["code"]["coding"][0]["code"] == code)?["count"]
        .as_u64()
}

fn withheld(v: &Value) -> Option<&str> {
    v["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str() == Some(&format!("{EXT}withheld")))?["valueString"]
        .as_str()
}

fn strata<'a>(group: &'a Value, stratifier: &str) -> Vec<&'a Value> {
    group["stratifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| {
            s["code"].as_array().is_some_and(|c| c.len() == 1) && s["code"][0]["coding"][0]["code"] == stratifier
        })
        .flat_map(|s| s["stratum"].as_array().into_iter().flatten())
        .collect()
}

/// A count as released, or why it is not.
fn cell(v: Option<&Value>, code: &str) -> Markup {
    match v {
        None => html! { span.muted { "—" } },
        Some(v) => match (population(v, code), withheld(v)) {
            (_, Some(why)) => html! { span.muted title=(why) { "withheld" } },
            (Some(n), None) => html! { (n) },
            (None, None) => html! { span.muted { "—" } },
        },
    }
}

/// Each region's status in a released report: (region, status, lastUpdated, completeness, version).
fn region_statuses(report: &Value) -> Vec<[String; 5]> {
    report["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"].as_str() == Some(&format!("{EXT}region-status")))
        .map(|e| {
            let part = |k: &str| -> String {
                e["extension"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["url"] == k)
                    .map(|p| {
                        for key in ["valueString", "valueCode"] {
                            if let Some(s) = p[key].as_str() {
                                return s.to_string();
                            }
                        }
                        p["valueDecimal"]
                            .as_f64()
                            .map(|d| format!("{:.0}%", d * 100.0))
                            .unwrap_or_default()
                    })
                    .unwrap_or_default()
            };
            [
                part("region"),
                part("status"),
                part("lastUpdated"),
                part("completeness"),
                part("version"),
            ]
        })
        .collect()
}

fn regions_table(report: &Value) -> Markup {
    html! {
        table {
            caption { "Regions that answered" }
            thead { tr { th { "Region" } th { "Status" } th { "Data as of" } th.num { "Completeness" } th { "Pathway version" } } }
            tbody {
                @for [region, status, updated, completeness, version] in region_statuses(report) {
                    tr { td { (region) } td { (status) } td { (updated) } td.num { (completeness) } td { (version) } }
                }
            }
        }
    }
}

/// The sign-in page: local account form, and the OpenID button when configured.
pub fn login(error: Option<&str>, csrf: &str, next: &str, oidc: Option<&str>) -> Markup {
    layout(
        &Chrome {
            title: "Sign in",
            person: None,
            csrf: None,
        },
        html! {
            h1 { "Sign in" }
            @if let Some(e) = error { p.notice.error role="alert" { (e) } }
            form.login method="post" action="/app/login" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                div { label for="username" { "Username" } input id="username" name="username" autocomplete="username" required; }
                div { label for="password" { "Password" } input id="password" name="password" type="password" autocomplete="current-password" required; }
                div { button.primary type="submit" { "Sign in" } }
            }
            @if let Some(label) = oidc {
                p.or { "or" }
                p { a.button.primary #oidc href=(format!("/app/login/oidc?next={}", urlencode(next))) { (label) } }
            }
        },
    )
}

pub fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One pathway on the overview: its Measure, version and released report.
pub struct PathwaySummary<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub version: &'a str,
    pub report: &'a Value,
}

/// `/app/`: each pathway's admissions per region and pooled.
pub fn pathways(c: &Chrome, start: &str, end: &str, items: &[PathwaySummary]) -> Markup {
    let query = format!("periodStart={}&periodEnd={}", urlencode(start), urlencode(end));
    layout(
        c,
        html! {
            h1 { "Pathways" }
            (period_form("/app/", start, end))
            @for p in items {
                @let admissions = group(p.report, "admissions");
                @let mortality = group(p.report, "mortality");
                section {
                    h2 { a href=(format!("/app/pathways/{}?{query}", p.id)) { (p.title) } " " span.tag { "version " (p.version) } }
                    table {
                        caption { "Emergency admissions the algorithm selects, " (start) " to " (end) }
                        thead { tr { th { "Region" } th.num { "Cohort" } th.num { "Admissions" } th.num { "In-hospital deaths" } } }
                        tbody {
                            @if let Some(a) = admissions {
                                @for s in strata(a, "region") {
                                    @let region = s["value"]["text"].as_str().unwrap_or_default();
                                    @let deaths = mortality.and_then(|m| strata(m, "region").into_iter().find(|x| x["value"]["text"] == region));
                                    tr { td { (region) } td.num { (cell(Some(s), "initial-population")) } td.num { (cell(Some(s), "numerator")) } td.num { (cell(deaths, "numerator")) } }
                                }
                                tr { th { "All regions" } td.num { (cell(Some(a), "initial-population")) } td.num { (cell(Some(a), "numerator")) } td.num { (cell(mortality, "numerator")) } }
                            }
                        }
                    }
                    (regions_table(p.report))
                }
            }
        },
    )
}

/// The benchmark's providers on the funnel, labelled per the hub's setting; the
/// viewer's own provider is always named.
type Withheld = (String, String, String);

/// The released providers as points (each with its row), and the withheld ones.
fn funnel_points<'a>(
    benchmark: &'a Value,
    own: Option<&str>,
    labels: Labels,
) -> (Vec<(FunnelPoint, &'a Value)>, Vec<Withheld>) {
    let providers: Vec<&Value> = benchmark["providers"].as_array().into_iter().flatten().collect();
    let mut others: Vec<&str> = providers
        .iter()
        .filter_map(|p| p["provider"].as_str())
        .filter(|p| Some(*p) != own)
        .collect();
    others.sort_unstable();
    others.dedup();
    let letter = |code: &str| -> String {
        let i = others.iter().position(|o| *o == code).unwrap_or(0);
        let mut s = String::new();
        let mut n = i;
        loop {
            s.insert(0, (b'A' + (n % 26) as u8) as char);
            if n < 26 {
                break;
            }
            n = n / 26 - 1;
        }
        format!("Provider {s}")
    };
    let label = |code: &str| -> String {
        if Some(code) == own || labels == Labels::Named {
            code.to_string()
        } else {
            letter(code)
        }
    };
    let mut points = Vec::new();
    let mut withheld_rows = Vec::new();
    for p in providers {
        let code = p["provider"].as_str().unwrap_or_default();
        let region = p["region"].as_str().unwrap_or_default().to_string();
        if let Some(why) = p["withheld"].as_str() {
            withheld_rows.push((label(code), region, why.to_string()));
            continue;
        }
        let (Some(expected), Some(ratio)) = (p["expected"].as_f64(), p["smr"].as_f64()) else {
            continue;
        };
        let flag = match (p["flag998"].as_str(), p["flag95"].as_str()) {
            (Some(f @ ("high" | "low")), _) | (_, Some(f @ ("high" | "low"))) => f.to_string(),
            _ => "none".to_string(),
        };
        points.push((
            FunnelPoint {
                label: label(code),
                expected,
                ratio,
                flag,
                own: Some(code) == own,
            },
            p,
        ));
    }
    (points, withheld_rows)
}

fn limits(benchmark: &Value) -> Vec<Limits> {
    benchmark["funnel"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| {
            Some(Limits {
                expected: f["expected"].as_f64()?,
                lower95: f["lower95"].as_f64()?,
                upper95: f["upper95"].as_f64()?,
                lower998: f["lower998"].as_f64()?,
                upper998: f["upper998"].as_f64()?,
            })
        })
        .collect()
}

fn flag_tag(flag: &str) -> Markup {
    match flag {
        "high" => html! { span.tag.high { "above limits" } },
        "low" => html! { span.tag.low { "below limits" } },
        _ => html! { span.tag { "within limits" } },
    }
}

/// The months of the admissions group, in order, as released.
fn months(report: &Value) -> Vec<Month> {
    let mut out: Vec<Month> = group(report, "admissions")
        .map(|a| strata(a, "month"))
        .unwrap_or_default()
        .into_iter()
        .map(|s| Month {
            month: s["value"]["text"].as_str().unwrap_or_default().to_string(),
            count: if withheld(s).is_some() {
                None
            } else {
                population(s, "numerator")
            },
        })
        .collect();
    out.sort_by(|a, b| a.month.cmp(&b.month));
    out
}

/// Each region's months of the admissions group, as released (the region × month
/// table), over the months of `pooled`: a month a region has no stratum for had no
/// admissions there.
fn region_months(report: &Value, pooled: &[Month]) -> Vec<(String, Vec<Month>)> {
    let mut by_region: std::collections::BTreeMap<String, Vec<(String, Option<u64>)>> = Default::default();
    let Some(a) = group(report, "admissions") else {
        return Vec::new();
    };
    for st in a["stratifier"].as_array().into_iter().flatten() {
        let codes: Vec<&str> = st["code"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["coding"][0]["code"].as_str())
            .collect();
        if codes != ["region", "month"] {
            continue;
        }
        for x in st["stratum"].as_array().into_iter().flatten() {
            let part = |i: usize| {
                x["component"][i]["value"]["text"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            let count = if withheld(x).is_some() {
                None
            } else {
                population(x, "numerator")
            };
            by_region.entry(part(0)).or_default().push((part(1), count));
        }
    }
    by_region
        .into_iter()
        .map(|(region, cells)| {
            let months = pooled
                .iter()
                .map(|m| Month {
                    month: m.month.clone(),
                    count: match cells.iter().find(|(month, _)| *month == m.month) {
                        Some((_, c)) => *c,
                        None => Some(0),
                    },
                })
                .collect();
            (region, months)
        })
        .collect()
}

fn month_cell(count: Option<u64>) -> Markup {
    html! { @if let Some(n) = count { (n) } @else { span.muted { "withheld" } } }
}

/// What a pathway detail page shows.
pub struct Detail<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub version: &'a str,
    pub start: &'a str,
    pub end: &'a str,
    pub report: &'a Value,
    pub benchmark: &'a Value,
    pub own: Option<&'a str>,
    pub labels: Labels,
}

/// `/app/pathways/{measure}`: the funnel plot, the run chart, the table, CSV.
pub fn pathway_detail(c: &Chrome, d: &Detail) -> Markup {
    let (rows, withheld_rows) = funnel_points(d.benchmark, d.own, d.labels);
    let points: Vec<FunnelPoint> = rows.iter().map(|(p, _)| p.clone()).collect();
    let query = format!("periodStart={}&periodEnd={}", urlencode(d.start), urlencode(d.end));
    let outliers = points.iter().filter(|p| p.flag != "none").count();
    let description = format!(
        "Risk-adjusted in-hospital mortality of {} providers, {} to {}: each point is a provider's ratio of observed to expected deaths against its expected deaths; dashed lines are the 95% limits, dotted lines the 99.8% limits; {} provider(s) lie outside the limits. The table below has the same figures.",
        points.len(),
        d.start,
        d.end,
        outliers
    );
    let months = months(d.report);
    let per_region = region_months(d.report, &months);
    let run_description = format!(
        "Emergency admissions selected by the algorithm per month of discharge, all regions pooled, {} to {}, with the median as a dashed line. The table below the funnel plot has the figures.",
        d.start, d.end
    );
    layout(
        c,
        html! {
            h1 { (d.title) " " span.tag { "version " (d.version) } }
            (period_form(&format!("/app/pathways/{}", d.id), d.start, d.end))
            h2 { "Risk-adjusted mortality by provider" }
            p.muted { "Indirectly standardised by age band and sex against the pooled rates of every region. Status: " (d.benchmark["status"].as_str().unwrap_or("")) "." }
            (charts::funnel("funnel", &format!("Funnel plot: {} mortality ratio by provider", d.title), &description, &points, &limits(d.benchmark)))
            div.legend { span { "● provider" } span { "- - 95% limits" } span { "··· 99.8% limits" } span { "— ratio 1 (as expected)" } }
            table {
                caption { "Providers, as plotted" }
                thead { tr { th { "Provider" } th { "Region" } th.num { "Admissions" } th.num { "Deaths" } th.num { "Expected" } th.num { "Ratio" } th { "95%" } th { "99.8%" } } }
                tbody {
                    @for (point, p) in &rows {
                        tr.own[point.own] data-provider=(point.label) {
                            td { (point.label) }
                            td { (p["region"].as_str().unwrap_or_default()) }
                            td.num { (p["n"]) } td.num { (p["observed"]) }
                            td.num { (format!("{:.1}", p["expected"].as_f64().unwrap_or(0.0))) }
                            td.num { (format!("{:.2}", p["smr"].as_f64().unwrap_or(0.0))) }
                            td { (flag_tag(p["flag95"].as_str().unwrap_or(""))) }
                            td { (flag_tag(p["flag998"].as_str().unwrap_or(""))) }
                        }
                    }
                }
            }
            @if !withheld_rows.is_empty() {
                table {
                    caption { "Providers withheld (not drawn)" }
                    thead { tr { th { "Provider" } th { "Region" } th { "Why" } } }
                    tbody { @for (label, region, why) in &withheld_rows { tr.withheld data-provider=(label) { td { (label) } td { (region) } td { (why) } } } }
                }
            }
            p.no-print {
                a href=(format!("/app/pathways/{}/benchmark.csv?{query}", d.id)) download { "Download the provider table (CSV)" }
            }
            h2 { "Admissions by month" }
            (charts::run_chart("run", &format!("Run chart: {} admissions by month", d.title), &run_description, &months))
            @if !per_region.is_empty() {
                h3 { "Each region" }
                div.small-multiples {
                    @for (region, ms) in &per_region {
                        figure data-region=(region) {
                            (charts::run_chart(
                                &format!("run-{region}"),
                                &format!("Run chart: {} admissions by month in {region}", d.title),
                                &format!("Emergency admissions selected by the algorithm per month of discharge in {region}, {} to {}, with the region's median as a dashed line; withheld months are gaps.", d.start, d.end),
                                ms,
                            ))
                            figcaption { (region) }
                        }
                    }
                }
            }
            table {
                caption { "Admissions by month: each region and all regions" }
                thead { tr { th { "Month" } @for (region, _) in &per_region { th.num { (region) } } th.num { "All regions" } } }
                tbody {
                    @for (i, m) in months.iter().enumerate() {
                        tr {
                            td { (m.month) }
                            @for (_, ms) in &per_region { td.num { (month_cell(ms.get(i).and_then(|x| x.count))) } }
                            td.num { (month_cell(m.count)) }
                        }
                    }
                }
            }
            (regions_table(d.report))
        },
    )
}

/// One pathway's figures for the provider report.
pub struct ProviderItem<'a> {
    pub id: &'a str,
    pub title: &'a str,
    pub report: &'a Value,
    pub benchmark: &'a Value,
}

/// `/app/providers/{ods}`: one provider against the pooled figures, printable.
pub fn provider_report(c: &Chrome, ods: &str, start: &str, end: &str, items: &[ProviderItem]) -> Markup {
    layout(
        c,
        html! {
            h1 { "Provider report: " (ods) }
            p.muted { (start) " to " (end) ". For clinical governance: figures released through disclosure control; ratios are indirectly standardised by age band and sex." }
            (period_form(&format!("/app/providers/{ods}"), start, end))
            @for it in items {
                @let row = it.benchmark["providers"].as_array().into_iter().flatten().find(|p| p["provider"] == ods);
                @let admissions = group(it.report, "admissions");
                @let mine = admissions.and_then(|a| strata(a, "provider").into_iter().find(|s| s["value"]["text"] == ods));
                @let mortality = group(it.report, "mortality");
                section {
                    h2 { a href=(format!("/app/pathways/{}?periodStart={}&periodEnd={}", it.id, urlencode(start), urlencode(end))) { (it.title) } }
                    table {
                        caption { (it.title) ": " (ods) " and all providers" }
                        thead { tr { th { "" } th.num { "Cohort" } th.num { "Admissions" } th.num { "Deaths" } th.num { "Expected deaths" } th.num { "Ratio" } th { "Flag (99.8%)" } } }
                        tbody {
                            tr.own {
                                th { (ods) }
                                td.num { (cell(mine, "initial-population")) }
                                td.num { (cell(mine, "numerator")) }
                                @match row {
                                    Some(r) if r["withheld"].is_null() => {
                                        td.num { (r["observed"]) }
                                        td.num { (format!("{:.1}", r["expected"].as_f64().unwrap_or(0.0))) }
                                        td.num { (format!("{:.2}", r["smr"].as_f64().unwrap_or(0.0))) }
                                        td { (flag_tag(r["flag998"].as_str().unwrap_or(""))) }
                                    }
                                    Some(r) => { td colspan="4" { span.muted { "withheld: " (r["withheld"].as_str().unwrap_or("")) } } }
                                    None => { td colspan="4" { span.muted { "no admissions in this period" } } }
                                }
                            }
                            tr {
                                th { "All providers" }
                                td.num { (cell(admissions, "initial-population")) }
                                td.num { (cell(admissions, "numerator")) }
                                td.num { (cell(mortality, "numerator")) }
                                td.num { "—" } td.num { "1.00" } td { "" }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn figure(v: &Value) -> Markup {
    match v {
        Value::Null => html! { span.muted title="withheld: fewer than the minimum cell size" { "withheld" } },
        Value::Number(n) if n.is_u64() => html! { (n) },
        Value::Number(n) => html! { (format!("{:.0}%", n.as_f64().unwrap_or(0.0) * 100.0)) },
        other => html! { (other.as_str().unwrap_or("—")) },
    }
}

/// `/app/quality`: completeness, conformance, plausibility, timeliness per region.
pub fn quality(c: &Chrome, q: &Value) -> Markup {
    layout(
        c,
        html! {
            h1 { "Data quality" }
            p.muted { "Per region and resource type, as each node measures what it received. Small counts are withheld and counts may be rounded, as for every figure that leaves a region." }
            @for (region, figures) in q["quality"].as_object().into_iter().flatten() {
                h2 { (region) }
                p.muted { "Data as of " (figures["lastUpdated"].as_str().unwrap_or("—")) }
                table {
                    caption { "Region " (region) }
                    thead { tr { th { "Resource type" } th.num { "Received" } th.num { "Accepted" } th.num { "Rejected" } th.num { "Completeness" } th.num { "With errors" } th.num { "Implausible" } th.num { "Delay median (h)" } th.num { "Delay p90 (h)" } } }
                    tbody {
                        @for t in by_type(figures) {
                            tr {
                                td { (t["resourceType"].as_str().unwrap_or("")) }
                                td.num { (figure(&t["received"])) }
                                td.num { (figure(&t["accepted"])) }
                                td.num { (figure(&t["rejected"])) }
                                td.num { (figure(&t["completeness"]["overall"])) }
                                td.num { (figure(&t["conformance"]["shareWithErrors"])) }
                                td.num { (figure(&t["plausibility"]["share"])) }
                                td.num { (hours(&t["timeliness"]["delayHoursMedian"])) }
                                td.num { (hours(&t["timeliness"]["delayHoursP90"])) }
                            }
                        }
                    }
                }
            }
            h2 { "Regions" }
            table {
                thead { tr { th { "Region" } th { "Status" } th.num { "Answered in (ms)" } } }
                tbody { @for r in q["regions"].as_array().into_iter().flatten() { tr { td { (r["region"].as_str().unwrap_or("")) } td { (r["status"].as_str().unwrap_or("")) } td.num { (r["latencyMs"]) } } } }
            }
        },
    )
}

fn by_type(figures: &Value) -> Vec<&Value> {
    match &figures["byResourceType"] {
        Value::Array(a) => a.iter().collect(),
        Value::Object(o) => o.values().collect(),
        _ => vec![],
    }
}

fn hours(v: &Value) -> Markup {
    match v.as_f64() {
        Some(h) => html! { (format!("{h:.1}")) },
        None => html! { span.muted { "—" } },
    }
}

/// One federated question, as the public may see it (no personal names).
pub struct Question {
    pub when: String,
    pub what: String,
    pub asked_by: String,
    pub regions: String,
    pub released: String,
}

/// `/transparency`: the log of federated questions, public.
pub fn transparency(c: &Chrome, questions: &[Question], total: Option<u64>) -> Markup {
    layout(
        c,
        html! {
            h1 { "What was asked of the data" }
            p { "Every question put to the regions through this hub, newest first: when, what was asked, which role and organisation asked (never a person's name), which regions answered, and how much was released or withheld by disclosure control. Patient-level data never leaves a region." }
            @if let Some(t) = total { p.muted { (t) " question(s) in the log; the latest " (questions.len()) " shown." } }
            table {
                caption { "Federated questions" }
                thead { tr { th { "When (UTC)" } th { "Question" } th { "Asked by" } th { "Regions" } th { "Released / withheld" } } }
                tbody {
                    @for q in questions {
                        tr.question { td { (q.when) } td { code { (q.what) } } td { (q.asked_by) } td { (q.regions) } td { (q.released) } }
                    }
                }
            }
        },
    )
}
