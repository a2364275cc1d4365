//! `pennine send --mllp <addr> <files...>` (HL7 v2 over MLLP) and
//! `pennine push <node-url> <files or folders>` (HL7 v2, CSV extracts and FHIR
//! bundles over HTTPS): upload with a progress line and a summary of what was
//! accepted and rejected. The exit status is 1 when anything was rejected.

use crate::feeds::hl7v2::split_messages;
use crate::feeds::mllp;
use anyhow::{bail, Context};
use clap::Args;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct SendArgs {
    /// The node's MLLP address, host:port.
    #[arg(long)]
    mllp: String,
    /// Files of ER7 messages.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Seconds to wait for each ACK.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

#[derive(Args)]
pub struct PushArgs {
    /// The node's base URL (https://host:port, with or without /fhir).
    node: String,
    /// Files or folders: *.hl7/*.er7 go to /feeds/hl7v2, *.csv to /feeds/csv/<mapping>, *.json Bundles to /fhir.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Mapping prefix for CSV files: <prefix>-<file stem> (patients.csv -> synthea-patients);
    /// a file named after a shipped mapping (sus-apc.csv) uses that mapping.
    #[arg(long, default_value = "synthea")]
    csv_mapping: String,
    /// An access token (or use --client-id and --client-secret).
    #[arg(long, env = "PENNINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, env = "PENNINE_CLIENT_ID")]
    client_id: Option<String>,
    #[arg(long, env = "PENNINE_CLIENT_SECRET", hide_env_values = true)]
    client_secret: Option<String>,
    /// CA certificate (PEM) to trust for an https node.
    #[arg(long)]
    ca: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    rejected: usize,
    failures: Vec<String>,
}

impl Tally {
    fn progress(&self, done: usize, total: usize, what: &str) {
        let width = 30;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\r[{}{}] {done}/{total} accepted {} rejected {} {what:<40.40}",
            "#".repeat(filled),
            "-".repeat(width - filled),
            self.accepted,
            self.rejected
        );
        let _ = std::io::stderr().flush();
    }

    fn finish(self) -> anyhow::Result<std::process::ExitCode> {
        eprintln!();
        for f in &self.failures {
            eprintln!("rejected: {f}");
        }
        println!("accepted {} rejected {}", self.accepted, self.rejected);
        Ok(if self.rejected > 0 {
            std::process::ExitCode::from(1)
        } else {
            std::process::ExitCode::SUCCESS
        })
    }
}

fn read_ack(stream: &mut std::net::TcpStream) -> anyhow::Result<String> {
    let mut decoder = mllp::Decoder::new(1 << 20);
    let mut buf = [0u8; 8192];
    loop {
        let n = stream.read(&mut buf).context("waiting for the ACK")?;
        if n == 0 {
            bail!("the node closed the connection before acknowledging");
        }
        for f in decoder.push(&buf[..n])? {
            if let mllp::Frame::Message(m) = f {
                return Ok(String::from_utf8_lossy(&m).into_owned());
            }
        }
    }
}

fn ack_code(ack: &str) -> (&str, String) {
    let msa = ack.split(['\r', '\n']).find(|s| s.starts_with("MSA")).unwrap_or("");
    let fields: Vec<&str> = msa.split('|').collect();
    let code = fields.get(1).copied().unwrap_or("");
    let text = fields.get(3).map(|s| s.to_string()).unwrap_or_default();
    (code, text)
}

pub fn send(args: SendArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut messages = Vec::new();
    for f in &args.files {
        let text =
            crate::feeds::decode_text(&std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?);
        for m in split_messages(&text) {
            messages.push((f.display().to_string(), m.replace('\n', "\r").replace("\r\r", "\r")));
        }
    }
    let mut stream =
        std::net::TcpStream::connect(&args.mllp).with_context(|| format!("cannot connect to {}", args.mllp))?;
    stream.set_read_timeout(Some(Duration::from_secs(args.timeout)))?;
    let mut tally = Tally::default();
    let total = messages.len();
    for (i, (file, m)) in messages.iter().enumerate() {
        stream.write_all(&mllp::frame(m.as_bytes()))?;
        let ack = read_ack(&mut stream)?;
        let (code, text) = ack_code(&ack);
        if code == "AA" || code == "CA" {
            tally.accepted += 1;
        } else {
            tally.rejected += 1;
            tally.failures.push(format!("{file} message {}: {code} {text}", i + 1));
        }
        tally.progress(i + 1, total, file);
    }
    tally.finish()
}

fn collect(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).with_context(|| format!("cannot read {}", p.display()))? {
                stack.push(e?.path());
            }
        } else if p.is_file() {
            out.push(p);
        } else {
            bail!("{} does not exist", p.display());
        }
    }
    out.sort();
    Ok(out)
}

fn kind(p: &Path) -> Option<&'static str> {
    match p.extension()?.to_str()?.to_ascii_lowercase().as_str() {
        "hl7" | "er7" => Some("hl7v2"),
        "csv" => Some("csv"),
        "json" => Some("json"),
        _ => None,
    }
}

pub fn push(args: PushArgs) -> anyhow::Result<std::process::ExitCode> {
    let files: Vec<PathBuf> = collect(&args.paths)?
        .into_iter()
        .filter(|p| kind(p).is_some())
        .collect();
    if files.is_empty() {
        bail!("no .hl7, .er7, .csv or .json files in the given paths");
    }
    let root = args.node.trim_end_matches('/').trim_end_matches("/fhir").to_string();
    let rt = super::runtime()?;
    rt.block_on(async move {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(300));
        if let Some(ca) = &args.ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
        }
        let http = builder.build()?;
        let token = match (&args.token, &args.client_id, &args.client_secret) {
            (Some(t), _, _) => Some(t.clone()),
            (None, Some(id), Some(secret)) => Some(super::token(&http, &root, id, secret).await?),
            _ => None,
        };
        let mut tally = Tally::default();
        let total = files.len();
        for (i, f) in files.iter().enumerate() {
            let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            let (url, content_type) = match kind(f) {
                Some("hl7v2") => (format!("{root}/feeds/hl7v2"), "x-application/hl7-v2+er7"),
                Some("csv") => {
                    let stem = f.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                    // A file named after a shipped mapping (sus-apc.csv) uses it; else <prefix>-<stem>.
                    let mapping = if crate::feeds::csv::shipped(stem).is_some() {
                        stem.to_string()
                    } else {
                        format!("{}-{stem}", args.csv_mapping)
                    };
                    (format!("{root}/feeds/csv/{mapping}"), "text/csv")
                }
                _ => (format!("{root}/fhir"), "application/fhir+json"),
            };
            let mut req = http.post(&url).header("content-type", content_type).body(bytes);
            if let Some(t) = &token {
                req = req.bearer_auth(t);
            }
            let res = req.send().await.with_context(|| format!("sending {}", f.display()))?;
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap_or_default();
            if !status.is_success() {
                tally.rejected += 1;
                let why = body["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string();
                tally.failures.push(format!("{}: HTTP {status} {why}", f.display()));
            } else if let Some(entries) = body["entry"].as_array() {
                for (k, e) in entries.iter().enumerate() {
                    let s = e["response"]["status"].as_str().unwrap_or("");
                    if s.starts_with('2') {
                        tally.accepted += 1;
                    } else {
                        tally.rejected += 1;
                        let why = e["response"]["outcome"]["issue"][0]["diagnostics"]
                            .as_str()
                            .unwrap_or("");
                        tally
                            .failures
                            .push(format!("{} entry {}: {s} {why}", f.display(), k + 1));
                    }
                }
            } else if let Some(rows) = body["rows"].as_u64() {
                let rejected = body["rejected"].as_array().map_or(0, |r| r.len());
                tally.accepted += rows as usize - rejected;
                tally.rejected += rejected;
                for r in body["rejected"].as_array().into_iter().flatten() {
                    let why = r["outcome"]["issue"][0]["diagnostics"].as_str().unwrap_or("");
                    tally
                        .failures
                        .push(format!("{} line {}: {why}", f.display(), r["line"]));
                }
            } else {
                tally.accepted += 1;
            }
            tally.progress(i + 1, total, &f.display().to_string());
        }
        tally.finish()
    })
}
