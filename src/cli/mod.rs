//! The command line: one file per subcommand.

mod bench;
mod bench_federation;
mod bench_feeds;
mod bench_peer;
mod data;
mod demo;
mod dev_certs;
mod hub;
mod migrate;
mod node;
mod pathway;
mod profiles;
mod send;
mod translate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pennine",
    version,
    about = "FHIR R4 interoperability gateway for a federated learning health system"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a regional node: FHIR R4 store and REST API.
    Node(Box<node::NodeArgs>),
    /// Measure federated aggregate latency: four nodes and a hub, N synthetic patients per node.
    BenchFederation(bench_federation::BenchFederationArgs),
    /// Run the whole gateway on loopback: four nodes, a hub, synthetic data and learning queries.
    Demo(demo::DemoArgs),
    /// Run the federation hub: pooled aggregates across the regional nodes.
    Hub(Box<hub::HubArgs>),
    /// Write a development CA and TLS certificates for the hub and the regions.
    DevCerts(dev_certs::DevCertsArgs),
    /// Apply PostgreSQL schema migrations for a node and exit.
    Migrate(migrate::MigrateArgs),
    /// Load the Synthea corpus into a fresh node and measure ingest, read and search.
    Bench(bench::BenchArgs),
    /// Print the FHIR Bundle each HL7 v2 message in a file becomes (no server needed).
    Translate(translate::TranslateArgs),
    /// Measure HL7 v2 translation (one core) and end-to-end MLLP ingest.
    BenchFeeds(bench_feeds::BenchFeedsArgs),
    /// Send HL7 v2 message files to a node over MLLP, one ACK per message.
    Send(send::SendArgs),
    /// Upload HL7 v2 files, CSV extracts and FHIR bundles to a node over HTTP(S).
    Push(send::PushArgs),
    /// Build the regional profile set from UK Core, or check a folder of profiles.
    Profiles(profiles::ProfilesArgs),
    /// List the pathways, or run one over a SUS extract here or at a node or the hub.
    Pathway(pathway::PathwayArgs),
    /// Copy a data folder (embedded store) consistently while the node runs.
    Backup(data::BackupArgs),
    /// Restore a data folder from `pennine backup` (stop the node first).
    Restore(data::RestoreArgs),
    /// The audit trail: `pennine audit verify --data DIR` checks its hash chain.
    Audit(data::AuditArgs),
}

fn init_tracing(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PENNINE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own story; servers log their start-up and requests.
    init_tracing(if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    });
    let result = match cli.command {
        Command::Node(args) => node::run(*args),
        Command::Bench(args) => bench::run(args),
        Command::Hub(args) => hub::run(*args),
        Command::Demo(args) => demo::run(args),
        Command::BenchFederation(args) => bench_federation::run(args),
        Command::DevCerts(args) => dev_certs::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::BenchFeeds(args) => bench_feeds::run(args),
        Command::Profiles(args) => profiles::run(args),
        Command::Pathway(args) => pathway::run(args),
        Command::Backup(args) => data::backup(args),
        Command::Restore(args) => data::restore(args),
        Command::Audit(args) => match data::audit(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Send(args) => match send::send(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Push(args) => match send::push(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Translate(args) => match translate::run(args) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A multi-threaded Tokio runtime for a subcommand.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Idle blocking threads (request work) end after 2 s rather than 10, and with them
        // the allocator's per-thread memory: a burst of large bodies does not keep its RSS.
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()?)
}

/// Gets an access token with `client_secret_basic`.
pub async fn token(http: &reqwest::Client, base: &str, id: &str, secret: &str) -> anyhow::Result<String> {
    let res = http
        .post(format!("{base}/auth/token"))
        .basic_auth(id, Some(secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    let status = res.status();
    let body: serde_json::Value = res.json().await?;
    match body["access_token"].as_str() {
        Some(t) if status.is_success() => Ok(t.to_string()),
        _ => anyhow::bail!("token request for {id} failed: {status} {body}"),
    }
}
