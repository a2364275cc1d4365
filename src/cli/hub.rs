//! `pennine hub`: federate aggregate questions across the regional nodes.

use super::node::TlsArgs;
use crate::config::{HubConfig, HubOverrides};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct HubArgs {
    /// Address to listen on, host:port.
    #[arg(long, env = "PENNINE_LISTEN")]
    listen: Option<String>,
    /// A regional node: region=url (repeat for each region), e.g. --node nenc=https://127.0.0.1:8443.
    #[arg(long = "node", value_name = "REGION=URL")]
    nodes: Vec<String>,
    /// Data folder for the hub's audit trail.
    #[arg(long, env = "PENNINE_DATA")]
    data: Option<PathBuf>,
    /// TOML config file; environment variables and flags override it.
    #[arg(long, env = "PENNINE_CONFIG")]
    config: Option<PathBuf>,
    /// Public base URL when behind a proxy.
    #[arg(long, env = "PENNINE_PUBLIC_URL")]
    public_url: Option<String>,
    /// HTTP worker threads.
    #[arg(long, env = "PENNINE_WORKERS")]
    workers: Option<usize>,
    /// Deadline for each node call, in milliseconds (default 5000).
    #[arg(long, env = "PENNINE_DEADLINE_MS")]
    deadline_ms: Option<u64>,
    /// Counts from 1 to min-cell - 1 are withheld (default 10).
    #[arg(long, env = "PENNINE_MIN_CELL")]
    min_cell: Option<u64>,
    /// Released counts are rounded to the nearest multiple (default 5).
    #[arg(long, env = "PENNINE_ROUNDING")]
    rounding: Option<u64>,
    /// Largest perturbation of released counts, from each cell's own records (default 2; 0 switches noise off).
    #[arg(long, env = "PENNINE_NOISE")]
    noise: Option<u64>,
    /// Pooled rows need at least this many answering regions (default 3).
    #[arg(long, env = "PENNINE_MIN_REGIONS")]
    min_regions: Option<usize>,
    #[command(flatten)]
    tls: TlsArgs,
    /// Registered clients (TOML); without it every protected route is closed.
    #[arg(long, env = "PENNINE_CLIENTS")]
    clients: Option<PathBuf>,
    /// Aggregate questions per client per minute (default 30).
    #[arg(long, env = "PENNINE_AGGREGATE_RATE")]
    aggregate_rate: Option<u32>,
}

pub fn run(args: HubArgs) -> anyhow::Result<()> {
    let config = HubConfig::load(
        args.config.as_deref(),
        HubOverrides {
            listen: args.listen,
            data: args.data,
            public_url: args.public_url,
            nodes: args.nodes,
            workers: args.workers,
            deadline_ms: args.deadline_ms,
            min_cell: args.min_cell,
            rounding: args.rounding,
            noise: args.noise,
            min_regions: args.min_regions,
            tls: args.tls.overrides(),
            clients: args.clients,
            aggregate_rate: args.aggregate_rate,
        },
    )?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let hub = crate::http::hub::start_hub(config)
            .await
            .context("cannot start the hub")?;
        println!("pennine hub listening on {}/fhir", hub.base_url());
        let _ = std::io::stdout().flush();
        super::node::shutdown_signal().await;
        tracing::info!("shutting down");
        hub.stop().await;
        Ok(())
    })
}
