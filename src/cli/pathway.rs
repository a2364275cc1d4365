//! `pennine pathway`: the pathways this build runs, and a pathway run over a SUS
//! extract on this machine (exact, nothing leaves it) or at a node or the hub
//! (`$evaluate-measure`, through the hub's gate).

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;
use std::path::PathBuf;

#[derive(Args)]
pub struct PathwayArgs {
    #[command(subcommand)]
    command: PathwayCommand,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum PathwayCommand {
    /// The pathways: id, version, title and groups.
    List {
        /// Folder of pathways (default: the set built into the binary).
        #[arg(long)]
        pathways: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Run a pathway over a period: over a SUS extract here (--input) or at a server (--server).
    Run(Box<RunArgs>),
}

#[derive(Args)]
struct RunArgs {
    /// The pathway (chc-copd, chc-arld, chc-epilepsy).
    id: String,
    /// The period: YYYY, YYYY-MM or YYYY-MM-DD (the whole of it).
    #[arg(long)]
    period: String,
    /// The end of the period, when it is not the end of --period.
    #[arg(long)]
    period_end: Option<String>,
    /// A SUS admitted patient care extract (the sus-apc header) to evaluate on this machine.
    #[arg(long, conflicts_with = "server")]
    input: Option<PathBuf>,
    /// A node or the hub (https://host:port, with or without /fhir).
    #[arg(long)]
    server: Option<String>,
    #[arg(long, env = "PENNINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "PENNINE_CLIENT_ID")]
    client_id: Option<String>,
    #[arg(long, env = "PENNINE_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// CA certificate (PEM) to trust for an https server.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Folder of pathways for --input (default: the set built into the binary).
    #[arg(long)]
    pathways: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

fn library(dir: Option<&std::path::Path>) -> anyhow::Result<std::sync::Arc<crate::pathways::Library>> {
    Ok(match dir {
        Some(d) => std::sync::Arc::new(crate::pathways::Library::load_dir(d)?),
        None => crate::pathways::Library::built_in(),
    })
}

pub fn run(args: PathwayArgs) -> anyhow::Result<()> {
    match args.command {
        PathwayCommand::List { pathways, format } => {
            let lib = library(pathways.as_deref())?;
            let rows: Vec<Vec<String>> = lib
                .all()
                .iter()
                .map(|p| {
                    vec![
                        p.id.clone(),
                        p.version.clone(),
                        p.measure["title"].as_str().unwrap_or_default().to_string(),
                        p.group_codes().join(" "),
                    ]
                })
                .collect();
            match format {
                Format::Json => {
                    let measures: Vec<&Value> = lib.all().iter().map(|p| &p.measure).collect();
                    println!("{}", serde_json::to_string_pretty(&measures)?);
                }
                _ => print_rows(&["id", "version", "title", "groups"], &rows, format),
            }
            Ok(())
        }
        PathwayCommand::Run(args) => {
            let RunArgs {
                id,
                period,
                period_end,
                input,
                server,
                token,
                client_id,
                client_secret,
                ca,
                pathways,
                format,
            } = *args;
            let end = period_end.unwrap_or_else(|| period.clone());
            let report = match (input, server) {
                (Some(file), _) => {
                    let lib = library(pathways.as_deref())?;
                    let p = lib.get(&id).with_context(|| format!("no pathway {id}"))?;
                    let text =
                        std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
                    let pairs = [("periodStart".to_string(), period), ("periodEnd".to_string(), end)];
                    let range = crate::http::pathways::period_of(&pairs, None).map_err(|e| anyhow::anyhow!("{e}"))?;
                    let resources = map_extract(&text)?;
                    let episodes = crate::node::pathways::episodes_in(&resources);
                    let counts = p.count(&episodes, &range.start, &range.end);
                    let now = crate::fhir::time::format_instant(crate::fhir::time::now_millis());
                    crate::pathways::measure_report(
                        p,
                        &counts,
                        &range.start,
                        &range.end,
                        &file.display().to_string(),
                        &now,
                    )
                }
                (None, Some(server)) => {
                    let root = server.trim_end_matches('/').trim_end_matches("/fhir").to_string();
                    super::runtime()?.block_on(async {
                        let mut builder = reqwest::Client::builder();
                        if let Some(ca) = &ca {
                            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
                            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
                        }
                        let http = builder.build()?;
                        let token = match (token, client_id, client_secret) {
                            (Some(t), _, _) => Some(t),
                            (None, Some(id), Some(secret)) => Some(super::token(&http, &root, &id, &secret).await?),
                            _ => None,
                        };
                        let mut req = http
                            .get(format!("{root}/fhir/Measure/{id}/$evaluate-measure"))
                            .query(&[("periodStart", period.as_str()), ("periodEnd", end.as_str())]);
                        if let Some(t) = &token {
                            req = req.bearer_auth(t);
                        }
                        let res = req.send().await?;
                        let status = res.status();
                        let body: Value = res.json().await?;
                        if !status.is_success() {
                            bail!(
                                "{status}: {}",
                                body["issue"][0]["diagnostics"].as_str().unwrap_or(&body.to_string())
                            );
                        }
                        Ok(body)
                    })?
                }
                (None, None) => bail!("say where to run it: --input <extract.csv> or --server <url>"),
            };
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                _ => print_rows(
                    &["group", "stratifier", "stratum", "population", "numerator", "score"],
                    &report_rows(&report),
                    format,
                ),
            }
            Ok(())
        }
    }
}

/// Maps a SUS extract with the shipped `sus-apc` mapping; a bad row stops the run with its line.
fn map_extract(text: &str) -> anyhow::Result<Vec<Value>> {
    let m = crate::feeds::csv::shipped("sus-apc").context("the sus-apc mapping is shipped")?;
    let table = crate::feeds::csv::read_table(m, text).map_err(|i| anyhow::anyhow!("{}", i.diagnostics))?;
    let header: Vec<&str> = table.header.iter().map(String::as_str).collect();
    let mut out = Vec::new();
    for (line, row) in &table.rows {
        let fields: std::collections::HashMap<&str, &str> =
            header.iter().copied().zip(row.iter().map(String::as_str)).collect();
        match crate::feeds::csv::map_row(m, &fields) {
            Ok(resources) => out.extend(resources),
            Err(issues) => bail!(
                "line {line}: {}",
                issues
                    .iter()
                    .map(|i| i.diagnostics.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        }
    }
    Ok(out)
}

/// One row per group total and per released stratum; withheld strata say why.
fn report_rows(report: &Value) -> Vec<Vec<String>> {
    let count = |pops: &Value, code: &str| {
        pops.as_array()
            .into_iter()
            .flatten()
            .find(|p| p["code"]["coding"][0]["code"] == code)
            .and_then(|p| p["count"].as_u64())
            .map(|n| n.to_string())
            .unwrap_or_default()
    };
    let score = |x: &Value| {
        x["measureScore"]["value"]
            .as_f64()
            .map(|s| format!("{s:.3}"))
            .unwrap_or_default()
    };
    let withheld = |x: &Value| {
        x["extension"][0]["valueString"]
            .as_str()
            .map(|w| format!("withheld: {w}"))
    };
    let mut rows = Vec::new();
    for g in report["group"].as_array().into_iter().flatten() {
        let code = g["code"]["coding"][0]["code"].as_str().unwrap_or_default().to_string();
        rows.push(vec![
            code.clone(),
            "(total)".into(),
            String::new(),
            count(&g["population"], "denominator"),
            count(&g["population"], "numerator"),
            withheld(g).unwrap_or_else(|| score(g)),
        ]);
        for st in g["stratifier"].as_array().into_iter().flatten() {
            // One code, or several for a cross-stratification (region × month).
            let s = st["code"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["coding"][0]["code"].as_str())
                .collect::<Vec<_>>()
                .join(" × ");
            for x in st["stratum"].as_array().into_iter().flatten() {
                let value = match x["value"]["text"].as_str() {
                    Some(v) => v.to_string(),
                    None => x["component"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["value"]["text"].as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                rows.push(vec![
                    code.clone(),
                    s.clone(),
                    value,
                    count(&x["population"], "denominator"),
                    count(&x["population"], "numerator"),
                    withheld(x).unwrap_or_else(|| score(x)),
                ]);
            }
        }
    }
    rows
}

fn print_rows(header: &[&str], rows: &[Vec<String>], format: Format) {
    if format == Format::Csv {
        let mut w = ::csv::Writer::from_writer(std::io::stdout());
        let _ = w.write_record(header);
        for r in rows {
            let _ = w.write_record(r);
        }
        let _ = w.flush();
        return;
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for r in rows {
        println!("{}", line(r.iter().map(String::as_str).collect()));
    }
}
