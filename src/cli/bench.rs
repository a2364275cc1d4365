//! `pennine bench`: loads the Synthea corpus into a fresh node over HTTP and
//! measures ingest, read-by-id and indexed search, each beside a baseline
//! measured in the same run (plain JSON parsing of the same bytes).

use crate::config::{NodeConfig, StorageConfig};
use anyhow::{bail, Context};
use clap::Args;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// Folder of FHIR transaction bundles (JSON).
    #[arg(long, default_value = "../shared/corpora/synthea-r4/bundles")]
    corpus: PathBuf,
    /// How many copies of the corpus to load (ids are server-assigned, so copies are new resources).
    #[arg(long, default_value_t = 1)]
    copies: usize,
    /// Bundles in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Read-by-id requests to time.
    #[arg(long, default_value_t = 20_000)]
    reads: usize,
    /// Requests in flight for the read test.
    #[arg(long, default_value_t = 8)]
    read_concurrency: usize,
    /// Turn off validation (R4 base definitions and regional profiles) to measure its cost.
    #[arg(long)]
    no_structural_check: bool,
    /// HL7 v2 messages (.hl7) for the ER7 parsing measurement.
    #[arg(long, default_value = "../shared/corpora/fhir-converter-hl7v2/input")]
    hl7_corpus: PathBuf,
    /// Also run the same measurements on this PostgreSQL database (a fresh schema, dropped after).
    #[arg(long)]
    database: Option<String>,
    /// Compare ingest with a peer measured in the same run, rounds interleaved (only `medplum`).
    #[arg(long, value_parser = ["medplum"])]
    peer: Option<String>,
    /// Interleaved rounds (peer, then Pennine) for `--peer`.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The peers' scripts (`install.sh` installs them under `$PEERS_HOME`).
    #[arg(long, default_value = "../shared/peers")]
    peers_dir: PathBuf,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&args.corpus)
        .with_context(|| format!("cannot read corpus folder {}", args.corpus.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .json bundles in {}", args.corpus.display());
    }
    let mut bodies: Vec<Arc<Vec<u8>>> = Vec::new();
    for f in &files {
        bodies.push(Arc::new(std::fs::read(f)?));
    }
    let bytes: usize = bodies.iter().map(|b| b.len()).sum::<usize>() * args.copies;

    // Baseline: plain JSON parsing of the same bytes, one core.
    let started = Instant::now();
    let mut resources = 0usize;
    for _ in 0..args.copies {
        for b in &bodies {
            let v: Value = serde_json::from_slice(b)?;
            resources += v["entry"].as_array().map_or(0, Vec::len);
        }
    }
    let parse_secs = started.elapsed().as_secs_f64();
    let parse_rate = resources as f64 / parse_secs;
    if args.peer.is_some() {
        return against_peer(&args, &bodies, resources, parse_rate);
    }
    stages(&bodies, resources)?;
    er7_rate(&args.hl7_corpus);

    let rt = super::runtime()?;
    let mut backends = vec![("embedded (SQLite)".to_string(), StorageConfig::Embedded)];
    if let Some(url) = &args.database {
        let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
        backends.push((
            "PostgreSQL".to_string(),
            StorageConfig::Postgres {
                url: url.clone(),
                schema,
                pool: 8,
            },
        ));
    }
    println!(
        "pennine bench: {} bundles x {} copies, {} resources, {:.1} MB; validation (R4 base and regional profiles) {}",
        bodies.len(),
        args.copies,
        resources,
        bytes as f64 / 1e6,
        if args.no_structural_check { "off" } else { "on" }
    );
    let mut ingest_rates = Vec::new();
    for (name, storage) in backends {
        let dir = tempfile::tempdir()?;
        let (config, clients) = bench_node(dir.path(), &args, storage.clone())?;
        let m = rt.block_on(measure(config, &clients, &bodies, &args, resources, false))?;
        if let StorageConfig::Postgres { url, schema, .. } = storage {
            if let Err(e) = crate::store::postgres::drop_schema(&url, &schema) {
                eprintln!("could not drop the benchmark's schema {schema}: {e}");
            }
        }
        println!();
        println!("### {name}");
        println!();
        println!("| measure | value | baseline in the same run | ratio |");
        println!("|---|---|---|---|");
        println!(
            "| ingest over HTTP (transactions, {} in flight, durable, indexed) | {:.0} resources/s ({:.2} s) | plain JSON parse, 1 core: {:.0} resources/s | {:.3} |",
            args.concurrency,
            m.ingest_rate,
            m.ingest_secs,
            parse_rate,
            m.ingest_rate / parse_rate
        );
        println!(
            "| read by id ({} requests, {} in flight) | {:.0} requests/s; p50 {:.2} ms, p99 {:.2} ms | | |",
            m.reads, args.read_concurrency, m.read_rate, m.read_p50_ms, m.read_p99_ms
        );
        for (q, total, ms) in &m.searches {
            println!("| search `{q}` (median of 5) | {ms:.2} ms | total {total} | |");
        }
        ingest_rates.push((name, m.ingest_rate));
    }
    if ingest_rates.len() == 2 {
        println!();
        println!(
            "PostgreSQL ingest / embedded ingest in this run: {:.2}",
            ingest_rates[1].1 / ingest_rates[0].1
        );
    }
    Ok(())
}

/// A fresh node on `dir` with clients as a region's vendor (writes) and
/// analyst (reads) would have them.
fn bench_node(
    dir: &std::path::Path,
    args: &BenchArgs,
    storage: StorageConfig,
) -> anyhow::Result<(NodeConfig, Vec<crate::demo::DemoClient>)> {
    let mut config = NodeConfig::local("bench", dir);
    let clients_file = dir.join("clients.toml");
    let clients = crate::demo::demo_clients(&clients_file, &["bench"])?;
    config.clients = Some(clients_file);
    config.service.structural_check = !args.no_structural_check;
    config.storage = storage;
    Ok((config, clients))
}

/// `--peer medplum`: rounds of the peer's ingest and Pennine's (embedded
/// store, fresh folder each round), interleaved so that both see the same
/// machine; prints every round, the medians and their ratio.
fn against_peer(args: &BenchArgs, bodies: &[Arc<Vec<u8>>], resources: usize, parse_rate: f64) -> anyhow::Result<()> {
    use super::bench_peer::{median, medplum_ingest, Peers};
    if args.copies != 1 {
        bail!("--peer compares the corpus as it is: leave --copies at 1 (pass a larger --corpus instead)");
    }
    let peers = Peers::locate(&args.peers_dir)?;
    let rt = super::runtime()?;
    println!(
        "pennine bench --peer medplum: {} bundles, {resources} resources, {} interleaved rounds; \
         Pennine over HTTP ({} in flight, durable, indexed, validation {}), \
         the peer in-process (parsed bundles, one at a time, in memory, no validation, no indexes)",
        bodies.len(),
        args.rounds,
        args.concurrency,
        if args.no_structural_check { "off" } else { "on" }
    );
    println!("plain JSON parse of the same bytes, 1 core: {parse_rate:.0} resources/s");
    println!();
    println!("| round | peer, resources/s | Pennine, resources/s | ratio |");
    println!("|---|---|---|---|");
    let (mut theirs, mut ours) = (Vec::new(), Vec::new());
    let mut peer_name = String::new();
    for round in 1..=args.rounds.max(1) {
        let peer = medplum_ingest(&peers, &args.corpus)?;
        if peer.resources as usize != resources || peer.failed_bundles > 0 {
            bail!(
                "the peer ingested {} resources with {} failed bundles (the corpus has {resources})",
                peer.resources,
                peer.failed_bundles
            );
        }
        peer_name = peer.peer;
        let dir = tempfile::tempdir()?;
        let (config, clients) = bench_node(dir.path(), args, StorageConfig::Embedded)?;
        let m = rt.block_on(measure(config, &clients, bodies, args, resources, true))?;
        println!(
            "| {round} | {:.0} | {:.0} | {:.2} |",
            peer.rate,
            m.ingest_rate,
            m.ingest_rate / peer.rate
        );
        theirs.push(peer.rate);
        ours.push(m.ingest_rate);
    }
    let (p, o) = (median(&theirs), median(&ours));
    println!();
    println!("peer: {peer_name}");
    println!(
        "median: peer {p:.0} resources/s, Pennine {o:.0} resources/s; Pennine / peer = {:.2} (goal >= 1.5)",
        o / p
    );
    Ok(())
}

/// ER7 parsing with the field reads a translation makes, on one core.
fn er7_rate(dir: &std::path::Path) {
    let texts: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .collect();
    if texts.is_empty() {
        println!("ER7 parsing: no .hl7 files in {} (skipped)", dir.display());
        return;
    }
    let rounds = 50;
    let started = Instant::now();
    let mut parsed = 0usize;
    for _ in 0..rounds {
        for t in &texts {
            if let Ok(m) = crate::feeds::hl7v2::er7::parse(t) {
                std::hint::black_box((m.get("MSH-9.1"), m.get("MSH-10"), m.get("PID-3.1"), m.get("PID-5.1")));
                parsed += 1;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes: usize = texts.iter().map(String::len).sum::<usize>() * rounds;
    println!(
        "ER7 parsing on one core: {:.0} messages/s ({:.0} MB/s) over {} corpus messages x {rounds}",
        parsed as f64 / secs,
        bytes as f64 / secs / 1e6,
        texts.len()
    );
}

/// Single-core cost of each step of the ingest path, over every entry of the corpus.
fn stages(bodies: &[Arc<Vec<u8>>], resources: usize) -> anyhow::Result<()> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        resource: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Bundle<'a> {
        #[serde(borrow)]
        entry: Vec<Entry<'a>>,
    }
    let texts: Vec<&str> = bodies
        .iter()
        .map(|b| std::str::from_utf8(b))
        .collect::<Result<_, _>>()?;
    let registry = crate::search::Registry::r4();
    let (mut split, mut parse, mut structure, mut index, mut serialize) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut validate, mut regional) = (0.0, 0.0);
    let validator = crate::validation::validator();
    let profiles = crate::node::built_in_profiles();
    // Bundle by bundle, as the node does, so memory is reused as it is there.
    for t in &texts {
        let started = Instant::now();
        let b: Bundle = serde_json::from_str(t)?;
        let raws: Vec<&str> = b.entry.iter().filter_map(|e| e.resource.map(RawValue::get)).collect();
        split += started.elapsed().as_secs_f64();
        let started = Instant::now();
        let values: Vec<Value> = raws.iter().map(|r| serde_json::from_str(r)).collect::<Result<_, _>>()?;
        parse += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for r in &raws {
            let _ = std::hint::black_box(crate::fhir::model::check_structure(r));
        }
        structure += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for v in &values {
            std::hint::black_box(validator.validate(v));
        }
        validate += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for v in &values {
            let rtype = v["resourceType"].as_str().unwrap_or_default();
            if let Some(p) = profiles.enforced(rtype) {
                std::hint::black_box(profiles.check(p, v));
            }
        }
        regional += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for v in &values {
            let rtype = v["resourceType"].as_str().unwrap_or_default();
            std::hint::black_box(crate::search::extract(&registry, rtype, v));
        }
        index += started.elapsed().as_secs_f64();
        let started = Instant::now();
        for v in &values {
            std::hint::black_box(serde_json::to_vec(v)?);
        }
        serialize += started.elapsed().as_secs_f64();
    }
    println!("ingest stages on one core, {resources} resources (resources/s; lower share is better):");
    let total = split + parse + structure + validate + regional + index + serialize;
    for (name, secs) in [
        ("split the Bundle (RawValue)", split),
        ("parse each resource to a JSON value", parse),
        ("fhirbolt strict parse (not on the write path)", structure),
        ("R4 validation (src/validation)", validate),
        ("regional profiles (src/profiles)", regional),
        ("search index extraction (FHIRPath)", index),
        ("serialise for storage", serialize),
    ] {
        println!(
            "  {name:<44} {:>9.0}/s  {:>4.0}%",
            resources as f64 / secs,
            100.0 * secs / total
        );
    }
    println!(
        "validation on one core (R4 base and regional profiles): {:.0} resources/s; {:.2}x the time of parsing the same resources to JSON values",
        resources as f64 / (validate + regional),
        (validate + regional) / parse
    );
    Ok(())
}

struct Measured {
    ingest_rate: f64,
    ingest_secs: f64,
    reads: usize,
    read_rate: f64,
    read_p50_ms: f64,
    read_p99_ms: f64,
    searches: Vec<(String, Value, f64)>,
}

async fn measure(
    config: NodeConfig,
    clients: &[crate::demo::DemoClient],
    bodies: &[Arc<Vec<u8>>],
    args: &BenchArgs,
    resources: usize,
    ingest_only: bool,
) -> anyhow::Result<Measured> {
    {
        let node = crate::startup::start_node(config).await?;
        let base = format!("{}/fhir", node.base_url());
        let with_token = |token: String| -> anyhow::Result<reqwest::Client> {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse()?);
            Ok(reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .default_headers(headers)
                .build()?)
        };
        let plain = reqwest::Client::new();
        let secret = |id: &str| {
            clients
                .iter()
                .find(|c| c.id == id)
                .map(|c| c.secret.clone())
                .unwrap_or_default()
        };
        let root = node.base_url();
        let client = with_token(super::token(&plain, &root, "bench-vendor", &secret("bench-vendor")).await?)?;
        let reader = with_token(super::token(&plain, &root, "bench-analyst", &secret("bench-analyst")).await?)?;

        // Ingest: every bundle as a transaction, `concurrency` at a time.
        let started = Instant::now();
        let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        let mut tasks = Vec::new();
        for _ in 0..args.copies {
            for b in bodies {
                let permit = sem.clone().acquire_owned().await?;
                let (client, base, body) = (client.clone(), base.clone(), b.clone());
                tasks.push(tokio::spawn(async move {
                    let r = client
                        .post(&base)
                        .header("content-type", "application/fhir+json")
                        .body(body.to_vec())
                        .send()
                        .await?;
                    let status = r.status();
                    let text = r.text().await?;
                    drop(permit);
                    anyhow::ensure!(status.is_success(), "bundle rejected: {status} {text:.300}");
                    let v: Value = serde_json::from_str(&text)?;
                    let locations: Vec<String> = v["entry"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|e| e["response"]["location"].as_str())
                        .map(|l| l.split("/_history").next().unwrap_or(l).to_string())
                        .collect();
                    Ok::<_, anyhow::Error>(locations)
                }));
            }
        }
        let mut locations = Vec::new();
        for t in tasks {
            locations.extend(t.await??);
        }
        let ingest_secs = started.elapsed().as_secs_f64();
        let ingest_rate = locations.len() as f64 / ingest_secs;
        if locations.len() != resources {
            bail!("stored {} of {} resources", locations.len(), resources);
        }
        if ingest_only {
            node.stop().await;
            return Ok(Measured {
                ingest_rate,
                ingest_secs,
                reads: 0,
                read_rate: 0.0,
                read_p50_ms: 0.0,
                read_p99_ms: 0.0,
                searches: Vec::new(),
            });
        }

        // Read by id: a spread of ids, `read_concurrency` in flight.
        let patients: Vec<String> = locations
            .iter()
            .filter(|l| l.starts_with("Patient/"))
            .cloned()
            .collect();
        let step = (locations.len() / 997).max(1);
        let sample: Arc<Vec<String>> = Arc::new(locations.iter().step_by(step).cloned().collect());
        let started = Instant::now();
        let per_task = args.reads / args.read_concurrency;
        let mut tasks = Vec::new();
        for t in 0..args.read_concurrency {
            let (client, base, sample) = (reader.clone(), base.clone(), sample.clone());
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(per_task);
                for i in 0..per_task {
                    let id = &sample[(t * per_task + i) % sample.len()];
                    let s = Instant::now();
                    let r = client.get(format!("{base}/{id}")).send().await?;
                    anyhow::ensure!(r.status().is_success(), "read {id}: {}", r.status());
                    let _ = r.bytes().await?;
                    lat.push(s.elapsed());
                }
                Ok::<_, anyhow::Error>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let read_secs = started.elapsed().as_secs_f64();
        lat.sort();
        let read_rate = lat.len() as f64 / read_secs;

        // Indexed searches: median of 5 runs each.
        let some_patient = patients.first().cloned().unwrap_or_default();
        let searches = [
            "Observation?code=http://loinc.org|8302-2&_count=50".to_string(),
            "Observation?code=http://loinc.org|8302-2&_summary=count".to_string(),
            format!("Observation?subject={some_patient}&_count=100"),
            "Observation?date=ge2015-01-01&date=lt2015-02-01&_count=50".to_string(),
            "Patient?name=Ma&_count=50".to_string(),
            "Observation?value-quantity=gt100|http://unitsofmeasure.org|mg/dL&_summary=count".to_string(),
            "Condition?code=http://snomed.info/sct|44054006&_include=Condition:subject".to_string(),
            "Encounter?subject:Patient.gender=female&_summary=count".to_string(),
        ];
        let mut search_rows = Vec::new();
        for q in &searches {
            let mut times = Vec::new();
            let mut total = Value::Null;
            for _ in 0..5 {
                let s = Instant::now();
                let r = reader.get(format!("{base}/{q}")).send().await?;
                anyhow::ensure!(r.status().is_success(), "search {q}: {}", r.status());
                let v: Value = r.json().await?;
                times.push(s.elapsed());
                total = v["total"].clone();
            }
            times.sort();
            search_rows.push((q.clone(), total, times[2]));
        }
        node.stop().await;
        Ok(Measured {
            ingest_rate,
            ingest_secs,
            reads: lat.len(),
            read_rate,
            read_p50_ms: percentile(&lat, 0.5).as_secs_f64() * 1e3,
            read_p99_ms: percentile(&lat, 0.99).as_secs_f64() * 1e3,
            searches: search_rows
                .into_iter()
                .map(|(q, total, t)| (q, total, t.as_secs_f64() * 1e3))
                .collect(),
        })
    }
}
