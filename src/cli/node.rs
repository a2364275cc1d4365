//! `pennine node`: run one regional node until Ctrl-C or SIGTERM.

use crate::config::{NodeConfig, NodeSettings};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct NodeArgs {
    /// TOML config file (keys as the flags, in snake_case); environment variables and flags override it.
    #[arg(long, env = "PENNINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: NodeSettings,
}

pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    let config = NodeConfig::load(args.config.as_deref(), args.settings)?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let region = config.region.clone();
        let node = crate::startup::start_node(config)
            .await
            .context("cannot start the node")?;
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
