//! `pennine demo`: the whole gateway in one process. Four regional nodes and a
//! hub on loopback, HTTPS with development certificates (mutual TLS between
//! hub and nodes), embedded storage in a temporary folder, synthetic data in
//! every region, and a few learning questions answered across the regions.

use crate::config::{parse_node, HubConfig, NodeConfig};
use crate::federation::Disclosure;
use crate::startup::{start_hub, RunningHub};
use crate::startup::{start_node, RunningNode};
use crate::tls::TlsFiles;
use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct DemoArgs {
    /// Print the results and exit instead of serving until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Synthetic patients per region.
    #[arg(long, default_value_t = 600)]
    patients: usize,
    /// Synthetic hospital episodes (SUS extract rows) per region.
    #[arg(long, default_value_t = 1500)]
    episodes: usize,
    /// Keep the data and certificates in this folder instead of a temporary one.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Seed of the synthetic data (the same seed gives the same data).
    #[arg(long, default_value_t = 2026)]
    seed: u64,
}

const REGIONS: [(&str, &str); 4] = [
    ("nenc", "North East and North Cumbria"),
    ("yh", "Yorkshire and Humber"),
    ("gm", "Greater Manchester"),
    ("nwc", "North West Coast"),
];

/// The demo clients' secrets (development only), kept beside `clients.toml` so that a run
/// over the same `--data` folder can use them again.
const SECRETS: &str = "demo-secrets.json";
/// Written once the synthetic data is loaded: a later run over the folder reuses it.
const LOADED: &str = "demo-loaded.txt";

fn read_secrets(path: &Path) -> Option<Vec<crate::demo::DemoClient>> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v.as_array()?
        .iter()
        .map(|c| {
            let roles = ["vendor", "analyst", "partner", "admin"]
                .into_iter()
                .find(|r| c["roles"] == *r)?;
            Some(crate::demo::DemoClient {
                id: c["id"].as_str()?.to_string(),
                roles,
                region: c["region"].as_str().map(str::to_string),
                secret: c["secret"].as_str()?.to_string(),
            })
        })
        .collect()
}

fn write_secrets(path: &Path, clients: &[crate::demo::DemoClient]) -> std::io::Result<()> {
    let v: Vec<Value> = clients
        .iter()
        .map(|c| serde_json::json!({"id": c.id, "roles": c.roles, "region": c.region, "secret": c.secret}))
        .collect();
    std::fs::write(path, Value::Array(v).to_string())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let root = match &args.data {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            d.clone()
        }
        None => {
            temp = tempfile::Builder::new().prefix("pennine-demo-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let rt = super::runtime()?;
    rt.block_on(demo(args, &root))
}

async fn demo(args: DemoArgs, root: &Path) -> anyhow::Result<()> {
    let certs = root.join("certs");
    let names: Vec<&str> = REGIONS.iter().map(|(r, _)| *r).collect();
    // A folder from an earlier run (--data) keeps its certificates, clients and data.
    let have_certs = ["ca", "hub"]
        .iter()
        .chain(&names)
        .all(|n| certs.join(format!("{n}.pem")).exists());
    if !have_certs {
        crate::tls::dev_certs(&certs, &names, &[])?;
    }
    println!("Pennine demo: four regional nodes and a federation hub on loopback");
    println!(
        "  data and development certificates in {}{}",
        root.display(),
        if have_certs { " (reused)" } else { "" }
    );

    let clients_file = root.join("clients.toml");
    let secrets_file = root.join(SECRETS);
    let clients = match read_secrets(&secrets_file).filter(|_| clients_file.exists()) {
        Some(c) => c,
        None => {
            let c = crate::demo::demo_clients(&clients_file, &names)?;
            write_secrets(&secrets_file, &c)?;
            c
        }
    };
    let loaded_file = root.join(LOADED);
    let loaded = std::fs::read_to_string(&loaded_file).ok();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (region, _) in REGIONS {
        let mut config = NodeConfig::local(region, &root.join(region));
        std::fs::create_dir_all(&config.data)?;
        config.tls = Some(TlsFiles::in_dir(&certs, region));
        config.workers = 1;
        config.clients = Some(clients_file.clone());
        nodes.push(
            start_node(config)
                .await
                .with_context(|| format!("cannot start the {region} node"))?,
        );
    }
    let mut hub_config = HubConfig::local(
        &root.join("hub"),
        nodes
            .iter()
            .zip(REGIONS)
            .map(|(n, (r, _))| parse_node(&format!("{r}={}", n.base_url())))
            .collect::<Result<_, _>>()?,
        Some(TlsFiles::in_dir(&certs, "hub")),
    );
    hub_config.deadline = Duration::from_secs(5);
    hub_config.disclosure = Disclosure::default();
    hub_config.clients = Some(clients_file.clone());
    std::fs::create_dir_all(&hub_config.data)?;
    let hub = start_hub(hub_config).await.context("cannot start the hub")?;

    let ca = reqwest::Certificate::from_pem(&std::fs::read(certs.join("ca.pem"))?)?;
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .tls_built_in_root_certs(false)
        .build()?;

    if let Some(when) = &loaded {
        println!(
            "\nReusing the data loaded into {} ({}); a new folder loads afresh.",
            root.display(),
            when.trim()
        );
    } else {
        println!("\nLoading synthetic data as each region's EHR vendor would (FHIR transaction bundles over HTTPS):");
    }
    for (node, (region, name)) in nodes.iter().zip(REGIONS).filter(|_| loaded.is_none()) {
        let started = Instant::now();
        let mut resources = 0;
        let vendor = clients
            .iter()
            .find(|c| c.id == format!("{region}-vendor"))
            .context("demo vendor")?;
        let token = super::token(&client, &node.base_url(), &vendor.id, &vendor.secret).await?;
        for bundle in crate::demo::bundles(region, args.seed, args.patients, 100, true) {
            resources += bundle["entry"].as_array().map_or(0, Vec::len);
            let res = client
                .post(format!("{}/fhir", node.base_url()))
                .bearer_auth(&token)
                .header("content-type", "application/fhir+json")
                .json(&bundle)
                .send()
                .await?;
            if !res.status().is_success() {
                bail!(
                    "loading {region} failed: {} {}",
                    res.status(),
                    res.text().await.unwrap_or_default()
                );
            }
        }
        println!(
            "  {region:<5} {name:<30} {:>6} patients, {resources:>6} resources in {:.1} s",
            args.patients,
            started.elapsed().as_secs_f64()
        );
    }

    println!("\nLearning questions, asked once at the hub and answered by every region (disclosure control: counts under 10 withheld, counts rounded to 5):");
    let partner = clients
        .iter()
        .find(|c| c.id == "demo-partner")
        .context("demo partner")?;
    let partner_token = super::token(&client, &hub.base_url(), &partner.id, &partner.secret).await?;
    run_queries(&client, &hub, &partner_token).await?;
    if loaded.is_none() {
        println!(
            "\nLoading each region's hospital episodes (SUS admitted patient care extracts, POST /feeds/csv/sus-apc):"
        );
    }
    for (node, (region, _)) in nodes.iter().zip(REGIONS).filter(|_| loaded.is_none()) {
        let started = Instant::now();
        let vendor = clients
            .iter()
            .find(|c| c.id == format!("{region}-vendor"))
            .context("demo vendor")?;
        let token = super::token(&client, &node.base_url(), &vendor.id, &vendor.secret).await?;
        let res = client
            .post(format!("{}/feeds/csv/sus-apc", node.base_url()))
            .bearer_auth(&token)
            .header("content-type", "text/csv")
            .body(crate::demo::sus_extract(region, args.seed, args.episodes))
            .send()
            .await?;
        let summary: Value = res.json().await?;
        if summary["rejected"].as_array().is_some_and(|r| !r.is_empty()) {
            bail!("the {region} extract was not stored whole: {summary}");
        }
        println!(
            "  {region:<5} {:>6} episodes in {:.1} s",
            summary["stored"],
            started.elapsed().as_secs_f64()
        );
    }

    if loaded.is_none() {
        std::fs::write(
            &loaded_file,
            format!(
                "{} patients and {} episodes per region, seed {}, loaded {}\n",
                args.patients,
                args.episodes,
                args.seed,
                crate::fhir::time::format_instant(crate::fhir::time::now_millis())
            ),
        )?;
    }
    run_pathways(&client, &hub, &partner_token).await?;

    let hub_url = hub.base_url();
    println!("\nDemo clients (development only; tokens last 5 minutes, get fresh ones with curl -u <id>:<secret> --data grant_type=client_credentials <server>/auth/token):");
    let node_of = |region: &str| {
        nodes
            .iter()
            .zip(REGIONS)
            .find(|(_, (r, _))| *r == region)
            .map(|(n, _)| n.base_url())
    };
    for c in &clients {
        let server = match &c.region {
            Some(r) => node_of(r).unwrap_or_default(),
            None => hub_url.clone(),
        };
        let show = c.region.as_deref().is_none_or(|r| r == "nenc");
        if show {
            let token = super::token(&client, &server, &c.id, &c.secret).await?;
            println!(
                "  {:<14} {:<8} secret {}  at {server}\n    token {token}",
                c.id, c.roles, c.secret
            );
        }
    }
    println!(
        "  (and yh-, gm-, nwc-vendor/analyst: their secrets are in {}; {} holds only their hashes)",
        secrets_file.display(),
        clients_file.display()
    );
    println!("\nWeb view for people (one-time sign-in links, valid for 15 minutes):");
    for name in ["demo-clinician", "demo-analyst"] {
        if let Some(link) = hub.sign_in_link(name) {
            println!("  {name:<15} {link}");
        }
    }
    println!("  transparency (public): {hub_url}/transparency");
    println!("\nServing:");
    println!("  hub   {hub_url}/fhir   (POST /fhir/$aggregate, GET /fhir/<type>?_summary=count)");
    for (n, (region, _)) in nodes.iter().zip(REGIONS) {
        println!("  {region:<5} {}/fhir", n.base_url());
    }
    println!("\nTry:");
    println!(
        "  TOKEN=$(curl -s --cacert {ca} -u demo-partner:{secret} --data grant_type=client_credentials {hub_url}/auth/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/')",
        ca = certs.join("ca.pem").display(),
        secret = partner.secret
    );
    println!(
        "  curl --cacert {} -H \"Authorization: Bearer $TOKEN\" -H 'content-type: application/json' {hub_url}/fhir/\\$aggregate \\\n    -d '{{\"viewReference\":\"observation_values\",\"groupBy\":[\"display\"],\"measures\":[{{\"name\":\"n\",\"function\":\"count\"}},{{\"name\":\"mean\",\"function\":\"mean\",\"column\":\"value\"}}]}}'",
        certs.join("ca.pem").display()
    );
    println!(
        "  curl --cacert {} -H \"Authorization: Bearer $TOKEN\" '{hub_url}/fhir/Condition?code=44054006&_summary=count'",
        certs.join("ca.pem").display()
    );
    let _ = std::io::stdout().flush();
    if !args.once {
        println!("\nPress Ctrl-C to stop.");
        let _ = std::io::stdout().flush();
        super::node::shutdown_signal().await;
    }
    hub.stop().await;
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

async fn hub_get(client: &reqwest::Client, hub: &RunningHub, token: &str, path: &str) -> anyhow::Result<Value> {
    let res = client
        .get(format!("{}/fhir/{path}", hub.base_url()))
        .bearer_auth(token)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        bail!("the hub refused {path}: {status} {body}");
    }
    Ok(body)
}

/// The released count of a MeasureReport group's region stratum, or why it is withheld.
fn region_cell(group: &Value, region: &str) -> String {
    let Some(stratum) = group["stratifier"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["code"][0]["coding"][0]["code"] == "region")
        .and_then(|s| s["stratum"].as_array())
        .and_then(|st| st.iter().find(|x| x["value"]["text"] == region))
    else {
        return "0".into();
    };
    match stratum["population"][2]["count"].as_u64() {
        Some(n) => n.to_string(),
        None => "withheld".into(),
    }
}

/// The three pathways' admissions per region, and the COPD mortality benchmark.
async fn run_pathways(client: &reqwest::Client, hub: &RunningHub, token: &str) -> anyhow::Result<()> {
    println!("\n7. Pathway admissions in 2025 by region (CHC North West Coast algorithms 1.0, $evaluate-measure):");
    println!(
        "  {:<13} {:<11} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "pathway", "group", "nenc", "yh", "gm", "nwc", "all"
    );
    for (id, groups) in [
        ("chc-copd", &["admissions", "mortality"][..]),
        ("chc-arld", &["admissions", "primary", "uplift", "comorbid"][..]),
        ("chc-epilepsy", &["admissions"][..]),
    ] {
        let report = hub_get(
            client,
            hub,
            token,
            &format!("Measure/{id}/$evaluate-measure?periodStart=2025&periodEnd=2025"),
        )
        .await?;
        for code in groups {
            let Some(g) = report["group"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|g| g["code"]["coding"][0]["code"] == *code)
            else {
                continue;
            };
            let all = g["population"][2]["count"]
                .as_u64()
                .map_or("withheld".into(), |n| n.to_string());
            let cells: Vec<String> = REGIONS.iter().map(|(r, _)| region_cell(g, r)).collect();
            println!(
                "  {id:<13} {code:<11} {:>8} {:>8} {:>8} {:>8} {all:>8}",
                cells[0], cells[1], cells[2], cells[3]
            );
        }
    }
    let bench = hub_get(
        client,
        hub,
        token,
        "Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025&group=mortality",
    )
    .await?;
    println!("\n8. COPD in-hospital mortality by provider, risk-adjusted for age band and sex ($benchmark; flags from exact Poisson limits):");
    println!(
        "  {:<8} {:<6} {:>6} {:>9} {:>9} {:>6}  {:<7} {:<7}",
        "provider", "region", "n", "observed", "expected", "SMR", "95%", "99.8%"
    );
    for p in bench["providers"].as_array().into_iter().flatten() {
        match p["withheld"].as_str() {
            Some(why) => println!(
                "  {:<8} {:<6} withheld: {why}",
                p["provider"].as_str().unwrap_or(""),
                p["region"].as_str().unwrap_or("")
            ),
            None => println!(
                "  {:<8} {:<6} {:>6} {:>9} {:>9.1} {:>6.2}  {:<7} {:<7}",
                p["provider"].as_str().unwrap_or(""),
                p["region"].as_str().unwrap_or(""),
                p["n"].as_u64().unwrap_or(0),
                p["observed"].as_u64().unwrap_or(0),
                p["expected"].as_f64().unwrap_or(0.0),
                p["smr"].as_f64().unwrap_or(0.0),
                p["flag95"].as_str().unwrap_or(""),
                p["flag998"].as_str().unwrap_or(""),
            ),
        }
    }
    Ok(())
}

async fn aggregate(client: &reqwest::Client, hub: &RunningHub, token: &str, q: Value) -> anyhow::Result<Value> {
    let res = client
        .post(format!("{}/fhir/$aggregate", hub.base_url()))
        .bearer_auth(token)
        .json(&q)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await?;
    if !status.is_success() {
        bail!("the hub refused a demo query: {status} {body}");
    }
    Ok(body)
}

async fn run_queries(client: &reqwest::Client, hub: &RunningHub, token: &str) -> anyhow::Result<()> {
    let questions = [
        (
            "1. Patients per region (patient_demographics)",
            json!({"viewReference": "patient_demographics", "groupBy": [],
                "measures": [{"name": "patients", "function": "count_distinct", "column": "patient"},
                             {"name": "deceased", "function": "sum", "column": "deceased"}]}),
            false,
        ),
        (
            "2. Vital signs and HbA1c by region (observation_values)",
            json!({"viewReference": "observation_values", "groupBy": ["display", "unit"],
                "measures": [{"name": "n", "function": "count"},
                             {"name": "patients", "function": "count_distinct", "column": "patient"},
                             {"name": "mean", "function": "mean", "column": "value"},
                             {"name": "sd", "function": "stddev", "column": "value"}]}),
            false,
        ),
        (
            "3. Long-term conditions: patients affected (condition_codes)",
            json!({"viewReference": "condition_codes", "groupBy": ["display"],
                "measures": [{"name": "patients", "function": "count_distinct", "column": "patient"}]}),
            false,
        ),
        (
            "4. Patients by birth decade, pooled across regions (patient_demographics)",
            json!({"viewReference": "patient_demographics", "groupBy": ["birth_decade"],
                "measures": [{"name": "patients", "function": "count", "column": "patient"}]}),
            true,
        ),
    ];
    for (title, q, pooled_only) in questions {
        let reply = aggregate(client, hub, token, q.clone()).await?;
        println!("\n{title}");
        print_reply(&q, &reply, pooled_only);
    }
    let res = client
        .get(format!("{}/fhir/Patient?gender=female&_summary=count", hub.base_url()))
        .bearer_auth(token)
        .send()
        .await?;
    let bundle: Value = res.json().await?;
    println!(
        "\n5. Federated count: GET /fhir/Patient?gender=female&_summary=count -> total {}",
        bundle["total"]
            .as_u64()
            .map_or("withheld".to_string(), |t| t.to_string())
    );
    let quality: Value = client
        .get(format!("{}/quality", hub.base_url()))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    println!("\n6. Data quality per region (GET /quality at the hub; counted as the data arrived):");
    let columns: Vec<String> = [
        "region",
        "type",
        "received",
        "must-support complete",
        "with warnings",
        "implausible",
        "median delay (h)",
    ]
    .iter()
    .map(|c| c.to_string())
    .collect();
    let mut rows = Vec::new();
    for (region, q) in quality["quality"].as_object().into_iter().flatten() {
        for t in q["byResourceType"].as_array().into_iter().flatten() {
            rows.push(vec![
                region.clone(),
                cell(&t["resourceType"], false),
                cell(&t["received"], false),
                cell(&t["completeness"]["overall"], false),
                cell(&t["conformance"]["withWarnings"], false),
                cell(&t["plausibility"]["implausible"], false),
                cell(&t["timeliness"]["delayHoursMedian"], false),
            ]);
        }
    }
    print_table(&columns, &rows);
    Ok(())
}

fn cell(v: &Value, withheld: bool) -> String {
    if withheld {
        return "withheld".into();
    }
    match v {
        Value::Null => "-".into(),
        Value::Number(n) if n.is_u64() || n.is_i64() => n.to_string(),
        Value::Number(n) => format!("{:.2}", n.as_f64().unwrap_or_default()),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn print_reply(q: &Value, reply: &Value, pooled_only: bool) {
    let group_by: Vec<String> = q["groupBy"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    let measures: Vec<String> = q["measures"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["name"].as_str())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut columns = vec!["region".to_string()];
    columns.extend(group_by.iter().cloned());
    columns.extend(measures.iter().cloned());
    let mut rows = Vec::new();
    for row in reply["rows"].as_array().into_iter().flatten() {
        if pooled_only && row["region"] != "pooled" {
            continue;
        }
        let suppressed: Vec<&str> = row["suppressed"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut line = vec![cell(&row["region"], false)];
        line.extend(group_by.iter().map(|g| cell(&row[g], false)));
        line.extend(measures.iter().map(|m| cell(&row[m], suppressed.contains(&m.as_str()))));
        rows.push(line);
    }
    print_table(&columns, &rows);
    let regions: Vec<String> = reply["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{} {} ({} ms)",
                cell(&r["region"], false),
                cell(&r["status"], false),
                r["latencyMs"]
            )
        })
        .collect();
    println!("   status {}: {}", cell(&reply["status"], false), regions.join(", "));
}

/// A plain text table: numbers right-aligned, text left-aligned.
pub fn print_table(columns: &[String], rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain(std::iter::once(columns[i].len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let numeric = |s: &str| s.parse::<f64>().is_ok() || s == "withheld" || s == "-";
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| {
                if numeric(c) {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        format!("   {}", parts.join("  "))
    };
    println!("{}", line(columns));
    println!(
        "   {}",
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ")
    );
    for r in rows {
        println!("{}", line(r));
    }
}
