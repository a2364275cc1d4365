//! `pennine dev-certs <dir>`: a development CA and certificates for the hub and
//! the regions, valid for 127.0.0.1 and localhost. Not for production.

use clap::Args;
use std::path::PathBuf;

pub const REGIONS: [&str; 4] = ["nenc", "yh", "gm", "nwc"];

#[derive(Args)]
pub struct DevCertsArgs {
    /// Folder to write ca.pem, hub.pem, hub-key.pem and <region>.pem, <region>-key.pem into.
    dir: PathBuf,
    /// Regions to make node certificates for (default: nenc, yh, gm, nwc).
    #[arg(long = "region")]
    regions: Vec<String>,
    /// Extra host names the certificates are valid for (e.g. compose service names).
    #[arg(long = "host")]
    hosts: Vec<String>,
}

pub fn run(args: DevCertsArgs) -> anyhow::Result<()> {
    let regions: Vec<String> = if args.regions.is_empty() {
        REGIONS.iter().map(|s| s.to_string()).collect()
    } else {
        args.regions
    };
    for r in &regions {
        crate::config::Region::parse(r)?;
    }
    let names: Vec<&str> = regions.iter().map(String::as_str).collect();
    let written = crate::tls::dev_certs(&args.dir, &names, &args.hosts)?;
    for p in written {
        println!("{}", p.display());
    }
    eprintln!("development certificates only: keep ca-key.pem out of any deployment");
    Ok(())
}
