//! `pennine node`: run one regional node until Ctrl-C or SIGTERM.

use crate::config::{NodeConfig, NodeOverrides, TlsOverrides};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct NodeArgs {
    /// Region slug (nenc, yh, gm, nwc, ...).
    #[arg(long, env = "PENNINE_REGION")]
    region: Option<String>,
    /// Address to listen on, host:port (port 0 picks a free port).
    #[arg(long, env = "PENNINE_LISTEN")]
    listen: Option<String>,
    /// Data folder for the embedded store.
    #[arg(long, env = "PENNINE_DATA")]
    data: Option<PathBuf>,
    /// TOML config file; environment variables and flags override it.
    #[arg(long, env = "PENNINE_CONFIG")]
    config: Option<PathBuf>,
    /// Public base URL when behind a proxy (links and Location headers use it).
    #[arg(long, env = "PENNINE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "PENNINE_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// HTTP worker threads.
    #[arg(long, env = "PENNINE_WORKERS")]
    workers: Option<usize>,
    /// PostgreSQL URL (postgres://...); without it the node uses the embedded store in --data.
    #[arg(long, env = "PENNINE_DATABASE")]
    database: Option<String>,
    /// PostgreSQL schema for this node's tables (default pennine_<region>).
    #[arg(long, env = "PENNINE_DATABASE_SCHEMA")]
    database_schema: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Smallest count this node lets the hub release (federation queries asking less are refused).
    #[arg(long, env = "PENNINE_MIN_CELL")]
    min_cell: Option<u64>,
    /// Rounding base for released counts that this node requires at least.
    #[arg(long, env = "PENNINE_ROUNDING")]
    rounding: Option<u64>,
    /// Least count perturbation this node requires of the hub (default 2; 0 allows exact counts).
    #[arg(long, env = "PENNINE_NOISE")]
    noise: Option<u64>,
    /// Registered clients (TOML); without it every protected route is closed.
    #[arg(long, env = "PENNINE_CLIENTS")]
    clients: Option<PathBuf>,
    /// Also accept HL7 v2 over MLLP on this address (host:port); each message is acknowledged after it is stored.
    #[arg(long, env = "PENNINE_MLLP")]
    mllp: Option<String>,
    /// Folder of regional profiles (StructureDefinitions, ValueSets, CodeSystems, a CapabilityStatement);
    /// default: the set built into the binary. A broken profile stops the node at start-up.
    #[arg(long, env = "PENNINE_PROFILES")]
    profiles: Option<PathBuf>,
    /// What errors against the regional profiles do: flag (accept and report; the default) or reject.
    #[arg(long, env = "PENNINE_PROFILE_POLICY")]
    profile_policy: Option<String>,
    /// Reject writes with errors against this profile (url, name or resource type); repeatable.
    #[arg(long = "reject-profile")]
    reject_profile: Vec<String>,
}

/// TLS flags, shared by `node` and `hub`.
#[derive(Args, Default)]
pub struct TlsArgs {
    /// Folder written by `pennine dev-certs`: serve HTTPS with <name>.pem, <name>-key.pem and ca.pem.
    #[arg(long, env = "PENNINE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Certificate chain (PEM) to serve HTTPS with.
    #[arg(long, env = "PENNINE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "PENNINE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA certificate (PEM) that signs the hub's certificate (on a node) or the nodes' (on the hub).
    #[arg(long, env = "PENNINE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

impl TlsArgs {
    pub fn overrides(self) -> TlsOverrides {
        TlsOverrides {
            dir: self.tls_dir,
            cert: self.tls_cert,
            key: self.tls_key,
            ca: self.tls_ca,
        }
    }
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(
        args.config.as_deref(),
        NodeOverrides {
            region: args.region,
            listen: args.listen,
            data: args.data,
            public_url: args.public_url,
            max_body_bytes: args.max_body_bytes,
            workers: args.workers,
            database: args.database,
            database_schema: args.database_schema,
            tls: args.tls.overrides(),
            min_cell: args.min_cell,
            rounding: args.rounding,
            noise: args.noise,
            clients: args.clients,
            mllp: args.mllp,
            profiles: args.profiles,
            profile_policy: args.profile_policy,
            reject_profiles: args.reject_profile,
        },
    )?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let region = config.region.clone();
        let node = crate::http::start_node(config).await.context("cannot start the node")?;
        // One line on stdout that scripts (and the tests) read to find the port.
        println!("pennine node {region} listening on {}/fhir", node.base_url());
        if let Some(m) = node.mllp_addr {
            println!("pennine node {region} MLLP on {m}");
        }
        let _ = std::io::stdout().flush();
        shutdown_signal().await;
        tracing::info!("shutting down");
        node.stop().await;
        Ok(())
    })
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
