//! `pennine bench --peer medplum`: Pennine's ingest and a peer's, interleaved
//! in one run on the same corpus, so that the ratio is measured on the same
//! machine at the same moment (these machines are noisy; a figure measured
//! alone says little).
//!
//! The peer is Medplum's in-process FHIR router on its in-memory repository,
//! run by `../shared/peers/medplum/bench.js` (installed by
//! `bash ../shared/peers/install.sh`): every bundle is handed to the router as a
//! parsed transaction, one at a time, with no HTTP, no durability, no
//! validation and no indexes. Pennine gets the same bundles over HTTP, durable,
//! validated and indexed.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the peers' scripts and their installed packages are.
pub struct Peers {
    /// `../shared/peers` (the scripts).
    pub scripts: PathBuf,
    /// `$PEERS_HOME` or `~/.cache/pennine-peers` (what `install.sh` installed).
    pub home: PathBuf,
}

impl Peers {
    pub fn locate(scripts: &Path) -> anyhow::Result<Peers> {
        let home = std::env::var_os("PEERS_HOME").map(PathBuf::from).unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/pennine-peers")
        });
        let peers = Peers {
            scripts: scripts.to_path_buf(),
            home,
        };
        if !peers.scripts.join("medplum/bench.js").is_file() {
            bail!(
                "no peer scripts at {} (expected medplum/bench.js; pass --peers-dir)",
                peers.scripts.display()
            );
        }
        if !peers.home.join("node/node_modules/@medplum/fhir-router").is_dir() {
            bail!(
                "Medplum is not installed under {}: run `bash {}/install.sh` (or set PEERS_HOME)",
                peers.home.display(),
                peers.scripts.display()
            );
        }
        Ok(peers)
    }
}

/// One Medplum ingest of the corpus: resources per second and the peer's name.
pub struct PeerRun {
    pub peer: String,
    pub resources: u64,
    pub rate: f64,
    pub failed_bundles: u64,
}

pub fn medplum_ingest(peers: &Peers, corpus: &Path) -> anyhow::Result<PeerRun> {
    let script = peers.scripts.join("medplum/bench.js");
    // One run, and the fewest searches the script allows: only ingest is compared.
    let out = Command::new("node")
        .arg("--experimental-websocket")
        .arg("--max-old-space-size=8000")
        .arg(&script)
        .arg(corpus)
        .args(["--runs", "1", "--search-reps", "1", "--max-subject-queries", "1"])
        .env("PEERS_HOME", &peers.home)
        .output()
        .context("cannot run node (Node 20 is needed for the Medplum peer)")?;
    if !out.status.success() {
        bail!(
            "the Medplum run failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .chars()
                .take(2000)
                .collect::<String>()
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(line.trim()).with_context(|| format!("the Medplum run printed no JSON: {:.300}", line))?;
    let ingest = &v["ingest"];
    let (Some(secs), Some(resources)) = (ingest["median_s"].as_f64(), v["resources"].as_u64()) else {
        bail!("the Medplum run's JSON has no ingest figures: {:.300}", line);
    };
    Ok(PeerRun {
        peer: v["peer"].as_str().unwrap_or("@medplum/fhir-router").to_string(),
        resources,
        rate: resources as f64 / secs,
        failed_bundles: ingest["failed_bundles"].as_u64().unwrap_or(0),
    })
}

pub fn median(xs: &[f64]) -> f64 {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => 0.0,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::{median, Peers};

    #[test]
    fn missing_scripts_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Peers::locate(dir.path()).err().expect("no scripts there").to_string();
        assert!(err.contains("medplum/bench.js"), "{err}");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
