//! `pennine backup`, `pennine restore` and `pennine audit verify`: what an operator
//! does to a node's data folder.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct BackupArgs {
    /// The data folder of a node or the hub (embedded store); it may be running.
    #[arg(long)]
    data: PathBuf,
    /// A new (or empty) folder to write the copy into.
    #[arg(long)]
    to: PathBuf,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// A folder written by `pennine backup`.
    #[arg(long)]
    from: PathBuf,
    /// The data folder to restore into; it must be missing or empty (stop the node first).
    #[arg(long)]
    data: PathBuf,
    /// Move a non-empty data folder aside (renamed, not deleted) and restore anyway.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the audit trail's hash chain and report the first broken link.
    Verify(VerifyArgs),
}

#[derive(Args)]
struct VerifyArgs {
    /// The data folder of a node or the hub.
    #[arg(long)]
    data: PathBuf,
    /// PostgreSQL URL, when the node keeps its data there (the trail is in `<schema>_audit`).
    #[arg(long, env = "PENNINE_DATABASE")]
    database: Option<String>,
    /// The node's schema on PostgreSQL (as given to the node, e.g. pennine_nenc).
    #[arg(long, env = "PENNINE_DATABASE_SCHEMA")]
    database_schema: Option<String>,
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let manifest = crate::backup::backup(&args.data, &args.to).context("backup failed")?;
    let bytes: u64 = manifest.files.iter().map(|f| f.bytes).sum();
    println!(
        "backed up {} files ({:.1} MB) from {} to {} in {:.1} s; manifest {}",
        manifest.files.len(),
        bytes as f64 / 1e6,
        args.data.display(),
        args.to.display(),
        started.elapsed().as_secs_f64(),
        crate::backup::MANIFEST
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let (manifest, moved) = crate::backup::restore(&args.from, &args.data, args.force).context("restore failed")?;
    if let Some(aside) = moved {
        println!("moved the earlier data folder aside to {}", aside.display());
    }
    println!(
        "restored {} files taken {} into {}",
        manifest.files.len(),
        manifest.taken,
        args.data.display()
    );
    Ok(())
}

pub fn audit(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let AuditCommand::Verify(args) = args.command;
    let storage = match args.database {
        Some(url) => crate::config::StorageConfig::Postgres {
            url,
            schema: args
                .database_schema
                .context("--database needs --database-schema (the node's schema)")?,
            pool: 1,
        },
        None => crate::config::StorageConfig::Embedded,
    };
    let v = crate::startup::verify_audit(&storage, &args.data).context("cannot read the audit trail")?;
    match &v.broken {
        Some(b) => {
            println!(
                "BROKEN at AuditEvent/{} (event {} of the trail): {}",
                b.id, v.events, b.reason
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!(
                "intact: {} events in {} segments{}; head {}",
                v.events - v.unchained,
                v.segments(),
                if v.unchained > 0 {
                    format!(" (and {} older events written before the chain)", v.unchained)
                } else {
                    String::new()
                },
                v.head.as_deref().unwrap_or("(empty)")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
