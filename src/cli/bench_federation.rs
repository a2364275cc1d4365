//! `pennine bench-federation`: four nodes (or `--regions N`) and a hub in one process with mutual
//! TLS, N synthetic patients per node, and the latency of a grouped aggregate:
//! end to end at the client, and the slowest node as the hub measured it, so
//! that the hub's own overhead is their difference, measured in the same run.

use crate::config::{parse_node, HubConfig, NodeConfig};
use crate::federation::Disclosure;
use crate::startup::start_hub;
use crate::startup::start_node;
use crate::tls::TlsFiles;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchFederationArgs {
    /// Synthetic patients per node (comma-separated list for several runs, e.g. 25000,250000).
    #[arg(long, default_value = "25000")]
    patients: String,
    /// Timed aggregate queries per measurement.
    #[arg(long, default_value_t = 40)]
    queries: usize,
    /// Patients per transaction bundle while loading.
    #[arg(long, default_value_t = 500)]
    per_bundle: usize,
    /// Hospital episodes (SUS extract rows) per node for the pathway measurements
    /// ($evaluate-measure and $benchmark at the hub); 0 skips them.
    #[arg(long, default_value_t = 0)]
    episodes: usize,
    /// Regional nodes to start (1 to 4; the growth table's largest size runs on one).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(1..=4))]
    regions: u8,
}

const REGIONS: [&str; 4] = ["nenc", "yh", "gm", "nwc"];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub fn run(args: BenchFederationArgs) -> anyhow::Result<()> {
    let sizes: Vec<usize> = args
        .patients
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--patients must be numbers, e.g. 25000,250000")?;
    let rt = super::runtime()?;
    for n in sizes {
        // Peak memory per size: the kernel's high-water mark starts again here.
        reset_peak_rss();
        rt.block_on(one_size(n, &args))?;
        if let Some(kb) = peak_rss_kb() {
            println!(
                "peak RSS of the process (every node and both hubs) at {n} patients per node: {:.0} MB",
                kb as f64 / 1024.0
            );
        }
    }
    Ok(())
}

/// Starts the process's peak-RSS mark again (Linux: `5` to `/proc/self/clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident set since the last reset, in kB (`VmHWM`).
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

async fn one_size(patients: usize, args: &BenchFederationArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let certs = root.path().join("certs");
    crate::tls::dev_certs(&certs, &REGIONS, &[])?;
    let clients_file = root.path().join("clients.toml");
    let clients = crate::demo::demo_clients(&clients_file, &REGIONS)?;
    let mut nodes = Vec::new();
    for r in REGIONS.iter().take(args.regions as usize) {
        let mut c = NodeConfig::local(r, &root.path().join(r));
        std::fs::create_dir_all(&c.data)?;
        c.tls = Some(TlsFiles::in_dir(&certs, r));
        c.workers = 2;
        c.clients = Some(clients_file.clone());
        nodes.push(start_node(c).await?);
    }
    let mut config = HubConfig::local(
        &root.path().join("hub"),
        nodes
            .iter()
            .zip(REGIONS)
            .map(|(n, r)| parse_node(&format!("{r}={}", n.base_url())))
            .collect::<Result<_, _>>()?,
        Some(TlsFiles::in_dir(&certs, "hub")),
    );
    config.deadline = Duration::from_secs(60);
    config.disclosure = Disclosure::default();
    config.clients = Some(clients_file.clone());
    config.aggregate_rate = 1_000_000;
    // A second hub over the same nodes keeps its answers for a minute, as deployed:
    // the web view's pages are timed on it too, once the answers are cached.
    let mut cached = config.clone();
    cached.data = root.path().join("hub-cached");
    cached.answer_cache = Duration::from_secs(3600);
    // Measure the federation, not the answer cache.
    config.answer_cache = Duration::ZERO;
    let hub = start_hub(config).await?;
    let cached_hub = start_hub(cached).await?;
    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem"))?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .build()?;

    let secret_of = |id: &str| {
        clients
            .iter()
            .find(|c| c.id == id)
            .map(|c| c.secret.clone())
            .unwrap_or_default()
    };
    // A region's vendor signs in at its node.
    let vendor_token = |node: &crate::startup::RunningNode, region: &str| {
        let id = format!("{region}-vendor");
        let (secret, base) = (secret_of(&id), node.base_url());
        let client = &client;
        async move { super::token(client, &base, &id, &secret).await }
    };
    let started = Instant::now();
    let mut resources = 0usize;
    for (node, r) in nodes.iter().zip(REGIONS) {
        let mut token = vendor_token(node, r).await?;
        let mut token_at = Instant::now();
        let bundles = crate::demo::bundles(r, 7, patients, args.per_bundle, false);
        let url = format!("{}/fhir", node.base_url());
        let mut in_flight = futures_util::stream::FuturesUnordered::new();
        for b in bundles {
            // A large load outlives a token: ask for a new one every minute.
            if token_at.elapsed() > Duration::from_secs(60) {
                token = vendor_token(node, r).await?;
                token_at = Instant::now();
            }
            resources += b["entry"].as_array().map_or(0, Vec::len);
            let body = serde_json::to_vec(&b)?;
            let req = client
                .post(&url)
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .body(body)
                .send();
            in_flight.push(req);
            if in_flight.len() >= 4 {
                use futures_util::StreamExt;
                if let Some(res) = in_flight.next().await {
                    let res = res?;
                    if !res.status().is_success() {
                        bail!("load failed: {}", res.status());
                    }
                }
            }
        }
        use futures_util::StreamExt;
        while let Some(res) = in_flight.next().await {
            if !res?.status().is_success() {
                bail!("load failed");
            }
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    println!(
        "{patients} patients per node x {} loaded in {load_secs:.1} s: {resources} resources, {:.0} resources/s \
         (transactions of {} patients, 4 in flight, one node at a time; the bundles are built and serialised by the same process)",
        nodes.len(),
        resources as f64 / load_secs,
        args.per_bundle
    );

    let query = |group: &[&str]| {
        json!({"viewReference": "patient_demographics", "groupBy": group,
            "measures": [{"name": "n", "function": "count"},
                         {"name": "patients", "function": "count_distinct", "column": "patient"},
                         {"name": "deceased", "function": "mean", "column": "deceased"}]})
    };
    let partner = super::token(&client, &hub.base_url(), "demo-partner", &secret_of("demo-partner")).await?;
    let ask = |q: Value| {
        let client = client.clone();
        let partner = partner.clone();
        let url = format!("{}/fhir/$aggregate", hub.base_url());
        async move {
            let t = Instant::now();
            let res = client.post(url).bearer_auth(&partner).json(&q).send().await?;
            let body: Value = res.json().await?;
            let total = t.elapsed().as_secs_f64() * 1000.0;
            if body["status"] != "complete" {
                bail!("partial answer: {body}");
            }
            let slowest = body["regions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["latencyMs"].as_f64())
                .fold(0.0, f64::max);
            anyhow::Ok((total, slowest))
        }
    };
    // Cold: the first question after loading reads and flattens every patient.
    let (cold, cold_slowest) = ask(query(&["gender"])).await?;
    println!("cold (view rows built from storage): {cold:.0} ms end to end, slowest node {cold_slowest:.0} ms");

    let groupings: [&[&str]; 3] = [&["gender", "birth_decade"], &["birth_decade"], &["gender"]];
    let mut totals = Vec::new();
    let mut overheads = Vec::new();
    let mut slowests = Vec::new();
    for i in 0..args.queries {
        let (t, s) = ask(query(groupings[i % groupings.len()])).await?;
        totals.push(t);
        slowests.push(s);
        overheads.push((t - s).max(0.0));
    }
    for v in [&mut totals, &mut overheads, &mut slowests] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "warm ({} queries, rows cached on the nodes): end to end p50 {:.1} ms p95 {:.1} ms; slowest node p50 {:.1} p95 {:.1} ms; hub overhead p50 {:.1} ms p95 {:.1} ms",
        args.queries,
        percentile(&totals, 0.5),
        percentile(&totals, 0.95),
        percentile(&slowests, 0.5),
        percentile(&slowests, 0.95),
        percentile(&overheads, 0.5),
        percentile(&overheads, 0.95)
    );
    // What the rows cached for those questions cost in memory, against the same values
    // as plain columns (issue 18: at most 2x).
    let mut held = 0;
    let mut columns = 0;
    let mut rows = 0;
    for node in &nodes {
        let f = node.service.view_cache_footprint();
        held += f.held_bytes;
        columns += f.column_bytes;
        rows += f.rows;
    }
    println!(
        "view-row cache (all nodes): {rows} rows held in {:.1} MB; as plain columns {:.1} MB; {:.1}x the columns",
        held as f64 / 1e6,
        columns as f64 / 1e6,
        held as f64 / columns.max(1) as f64
    );

    // Changing data: one new patient per node before each question, so every node re-reads.
    let mut vendor_tokens = Vec::new();
    for (node, r) in nodes.iter().zip(REGIONS) {
        vendor_tokens.push(vendor_token(node, r).await?);
    }
    let mut totals = Vec::new();
    let mut overheads = Vec::new();
    let rounds = (args.queries / 4).max(3);
    for i in 0..rounds {
        for (node, token) in nodes.iter().zip(&vendor_tokens) {
            let res = client
                .post(format!("{}/fhir/Patient", node.base_url()))
                .bearer_auth(token)
                .json(&json!({"resourceType": "Patient", "gender": "unknown"}))
                .send()
                .await?;
            if !res.status().is_success() {
                bail!("the write before a question was refused: {}", res.status());
            }
        }
        let (t, s) = ask(query(groupings[i % groupings.len()])).await?;
        totals.push(t);
        overheads.push((t - s).max(0.0));
    }
    totals.sort_by(f64::total_cmp);
    overheads.sort_by(f64::total_cmp);
    println!(
        "after a write ({rounds} queries, every node rebuilds its rows): end to end p50 {:.0} ms p95 {:.0} ms; hub overhead p95 {:.1} ms",
        percentile(&totals, 0.5),
        percentile(&totals, 0.95),
        percentile(&overheads, 0.95)
    );

    // 1% new data (issue 18, goal 3): a hundredth of the patients again, new, on every
    // node, then one question; three rounds, each adding another 1%.
    let fresh = (patients / 100).max(1);
    let mut totals = Vec::new();
    for round in 0..3u64 {
        for (node, r) in nodes.iter().zip(REGIONS) {
            // A fresh token each round: a large node's round can outlast one.
            let token = vendor_token(node, r).await?;
            for b in crate::demo::bundles(r, 1000 + round, fresh, args.per_bundle, false) {
                let res = client
                    .post(format!("{}/fhir", node.base_url()))
                    .bearer_auth(&token)
                    .json(&b)
                    .send()
                    .await?;
                if !res.status().is_success() {
                    bail!("the 1% load before a question was refused: {}", res.status());
                }
            }
        }
        let (t, _) = ask(query(groupings[round as usize % groupings.len()])).await?;
        totals.push(t);
    }
    totals.sort_by(f64::total_cmp);
    println!(
        "after 1% new writes (3 rounds of {fresh} new patients per node, then a question): end to end {} ms",
        totals.iter().map(|t| format!("{t:.0}")).collect::<Vec<_>>().join(", ")
    );
    if args.episodes > 0 {
        let vendors: Vec<(String, String)> = REGIONS
            .iter()
            .map(|r| {
                let id = format!("{r}-vendor");
                let secret = secret_of(&id);
                (id, secret)
            })
            .collect();
        let ca_pem = std::fs::read(certs.join("ca.pem"))?;
        pathways(
            &client,
            [&hub, &cached_hub],
            &nodes,
            &vendors,
            &secret_of("demo-partner"),
            &ca_pem,
            args,
        )
        .await?;
    }
    // A restart: every node stops and starts again on its data and address, warms its
    // caches in the background (`/ready` says when), and the hub asks a new question.
    let mut restarted = Vec::new();
    let t = Instant::now();
    for (node, r) in nodes.into_iter().zip(REGIONS) {
        let addr = node.addr;
        node.stop().await;
        let mut c = NodeConfig::local(r, &root.path().join(r));
        c.listen = addr.to_string();
        c.tls = Some(TlsFiles::in_dir(&certs, r));
        c.workers = 2;
        c.clients = Some(clients_file.clone());
        restarted.push(start_node(c).await?);
    }
    let started_again = t.elapsed().as_secs_f64();
    let mut warm_seconds: f64 = 0.0;
    for node in &restarted {
        loop {
            let ready: Value = client
                .get(format!("{}/ready", node.base_url()))
                .send()
                .await?
                .json()
                .await?;
            match ready["caches"]["state"].as_str() {
                Some("warm") => {
                    warm_seconds = warm_seconds.max(ready["caches"]["seconds"].as_f64().unwrap_or(0.0));
                    break;
                }
                Some("failed") => bail!("a node's warm-up failed: {ready}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    let (first, first_slowest) = ask(query(&["birth_decade", "gender"])).await?;
    println!(
        "after a restart of every node (started in {started_again:.1} s, caches warm in {warm_seconds:.1} s): \
         first question {first:.0} ms end to end, slowest node {first_slowest:.0} ms ({:.2}x the cold first question)",
        first / cold.max(1.0)
    );
    hub.stop().await;
    cached_hub.stop().await;
    for n in restarted {
        n.stop().await;
    }
    Ok(())
}

/// Times `n` pathway pages at `hub` as its demo clinician opens them (sorted, ms);
/// with `warm`, each pathway's page is opened once first and not timed.
async fn page_times(
    hub: &crate::startup::RunningHub,
    ca_pem: &[u8],
    ids: &[&str],
    n: usize,
    warm: bool,
) -> anyhow::Result<Vec<f64>> {
    let mut pages = Vec::new();
    let Some(link) = hub.sign_in_link("demo-clinician") else {
        return Ok(pages);
    };
    let browser = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem)?)
        .tls_built_in_root_certs(false)
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let res = browser.get(&link).send().await?;
    let cookie = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("pennine_session="))
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string();
    let skip = if warm { ids.len() } else { 0 };
    for i in 0..n + skip {
        let t = Instant::now();
        let res = browser
            .get(format!(
                "{}/app/pathways/{}?periodStart=2025&periodEnd=2025",
                hub.base_url(),
                ids[i % ids.len()]
            ))
            .header("cookie", &cookie)
            .send()
            .await?;
        let status = res.status();
        let body = res.text().await?;
        if !status.is_success() || !body.contains("data-provider") {
            bail!("the pathway page: {status}");
        }
        if i >= skip {
            pages.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    pages.sort_by(f64::total_cmp);
    Ok(pages)
}

/// Loads `args.episodes` SUS rows per node (all nodes at once, 5,000 rows per upload),
/// then times the hub's `$evaluate-measure` (cold, then warm over the three pathways)
/// and `$benchmark`.
async fn pathways(
    client: &reqwest::Client,
    // The hub that asks the regions every time, and the one that keeps its answers.
    [hub, cached_hub]: [&crate::startup::RunningHub; 2],
    nodes: &[crate::startup::RunningNode],
    vendors: &[(String, String)],
    partner_secret: &str,
    ca_pem: &[u8],
    args: &BenchFederationArgs,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let loads = nodes.iter().zip(vendors).zip(REGIONS).map(|((node, (id, secret)), r)| {
        let extract = crate::demo::sus_extract(r, 7, args.episodes);
        let url = format!("{}/feeds/csv/sus-apc", node.base_url());
        async move {
            let mut lines = extract.lines();
            let header = lines.next().unwrap_or_default().to_string();
            let rows: Vec<&str> = lines.collect();
            for chunk in rows.chunks(5000) {
                let body = format!("{header}\n{}\n", chunk.join("\n"));
                // A token per upload: loading outlasts a token's life.
                let token = super::token(client, &node.base_url(), id, secret).await?;
                let res = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("content-type", "text/csv")
                    .body(body)
                    .send()
                    .await?;
                let status = res.status();
                let summary: Value = res.json().await?;
                if !status.is_success() {
                    bail!("{r}: upload refused ({status}): {summary}");
                }
                if summary["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
                    bail!("{r}: rows refused: {summary}");
                }
            }
            anyhow::Ok(())
        }
    });
    for r in futures_util::future::join_all(loads).await {
        r?;
    }
    println!(
        "{} episodes per node x {} loaded in {:.1} s",
        args.episodes,
        nodes.len(),
        started.elapsed().as_secs_f64()
    );
    // A fresh token: loading may take longer than a token lives.
    let partner = super::token(client, &hub.base_url(), "demo-partner", partner_secret).await?;
    let time = |path: String| {
        let client = client.clone();
        let partner = partner.clone();
        let url = format!("{}/fhir/{path}", hub.base_url());
        async move {
            let t = Instant::now();
            let res = client.get(url).bearer_auth(&partner).send().await?;
            let status = res.status();
            let body: Value = res.json().await?;
            if !status.is_success() {
                bail!("{status}: {body}");
            }
            anyhow::Ok(t.elapsed().as_secs_f64() * 1000.0)
        }
    };
    let ids = ["chc-copd", "chc-arld", "chc-epilepsy"];
    let evaluate = |id: &str| format!("Measure/{id}/$evaluate-measure?periodStart=2025&periodEnd=2025");
    let cold = time(evaluate(ids[0])).await?;
    println!("$evaluate-measure cold (every node reads its episodes): {cold:.0} ms");
    let mut warm = Vec::new();
    for i in 0..args.queries {
        warm.push(time(evaluate(ids[i % 3])).await?);
    }
    warm.sort_by(f64::total_cmp);
    let mut bench = Vec::new();
    for _ in 0..(args.queries / 2).max(5) {
        bench.push(time("Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025".into()).await?);
    }
    bench.sort_by(f64::total_cmp);
    // The web view's pathway page, as a signed-in clinician opens it (same questions, rendered).
    let pages = page_times(hub, ca_pem, &ids, args.queries.max(10), false).await?;
    // The same pages where the hub keeps its answers: one view of each pathway fills the cache.
    let cached_pages = page_times(cached_hub, ca_pem, &ids, args.queries.max(10), true).await?;
    println!(
        "$evaluate-measure warm ({} questions over the three pathways): p50 {:.1} ms p95 {:.1} ms; $benchmark ({} questions): p50 {:.1} ms p95 {:.1} ms",
        warm.len(),
        percentile(&warm, 0.5),
        percentile(&warm, 0.95),
        bench.len(),
        percentile(&bench, 0.5),
        percentile(&bench, 0.95)
    );
    regressions(client, hub, &partner, args.queries.clamp(3, 10)).await?;
    for (what, pages) in [
        ("every page asks the regions", &pages),
        ("answers cached at the hub", &cached_pages),
    ] {
        if !pages.is_empty() {
            println!(
                "web view pathway page, signed in ({} pages over the three pathways, {what}): p50 {:.1} ms p95 {:.1} ms",
                pages.len(),
                percentile(pages, 0.5),
                percentile(pages, 0.95)
            );
        }
    }
    Ok(())
}

/// Times `$regress` at the hub: a 6-parameter logistic model of death in hospital over
/// every region's episodes (hospital_episodes), `rounds` times, with its iterations and
/// the cost of one round (the first fit includes building the view's rows at each node).
async fn regressions(
    client: &reqwest::Client,
    hub: &crate::startup::RunningHub,
    partner: &str,
    rounds: usize,
) -> anyhow::Result<()> {
    let model = json!({"viewReference": "hospital_episodes", "family": "binomial", "outcome": "died",
        "predictors": ["age", "emergency", {"column": "treatment_function", "categorical": true}]});
    let url = format!("{}/fhir/$regress", hub.base_url());
    let mut times = Vec::new();
    let mut last = Value::Null;
    for i in 0..=rounds {
        // The hub keeps complete answers for its cache window: vary the tolerance (one
        // model, one answer) so that every fit is made afresh.
        let mut q = model.clone();
        q["tolerance"] = json!(1e-8 * (1.0 + i as f64 * 1e-3));
        let t = Instant::now();
        let res = client.post(&url).bearer_auth(partner).json(&q).send().await?;
        let status = res.status();
        let body: Value = res.json().await?;
        if !status.is_success() {
            bail!("$regress: {status}: {body}");
        }
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        if i == 0 {
            println!("$regress first fit (nodes build the view's rows): {ms:.0} ms");
        } else {
            times.push(ms);
        }
        last = body;
    }
    times.sort_by(f64::total_cmp);
    let iterations = last["iterations"].as_u64().unwrap_or(0);
    // Each iteration is one round at every node; the null model adds its own rounds.
    println!(
        "$regress 6-parameter logistic over {} rows ({} fits): p50 {:.0} ms p95 {:.0} ms; {iterations} iterations (+ the null model's), {:.1} ms per round",
        last["n"],
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.95),
        percentile(&times, 0.5) / (iterations as f64 * 2.0).max(1.0)
    );
    Ok(())
}
