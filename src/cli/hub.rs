//! `pennine hub`: federate aggregate questions across the regional nodes.

use crate::config::{HubConfig, HubSettings};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct HubArgs {
    /// TOML config file (keys as the flags, in snake_case); environment variables and flags override it.
    #[arg(long, env = "PENNINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: HubSettings,
}

pub fn run(args: HubArgs) -> anyhow::Result<()> {
    let config = HubConfig::load(args.config.as_deref(), args.settings)?;
    let rt = super::runtime()?;
    rt.block_on(async move {
        let hub = crate::startup::start_hub(config)
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
