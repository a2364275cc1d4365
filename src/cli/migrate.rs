//! `pennine migrate`: apply the PostgreSQL schema migrations and exit
//! (nodes also apply them at start-up; this is for operators who migrate first).

use anyhow::Context;
use clap::Args;

#[derive(Args)]
pub struct MigrateArgs {
    /// PostgreSQL URL (postgres://user@host:5432/db).
    #[arg(long, env = "PENNINE_DATABASE")]
    database: String,
    /// Schema holding the node's tables.
    #[arg(long, env = "PENNINE_DATABASE_SCHEMA")]
    database_schema: String,
}

pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let applied = crate::store::postgres::migrate(&args.database, &args.database_schema).context("migration failed")?;
    if applied.is_empty() {
        println!("schema {} is up to date", args.database_schema);
    } else {
        let list: Vec<String> = applied.iter().map(|v| v.to_string()).collect();
        println!(
            "schema {}: applied migrations {}",
            args.database_schema,
            list.join(", ")
        );
    }
    Ok(())
}
