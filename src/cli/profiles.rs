//! `pennine profiles build|check`: make the regional profile set from its
//! sources and UK Core, or check a folder of profiles the way a node loads it.

use crate::profiles::ProfileSet;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args)]
pub struct ProfilesArgs {
    #[command(subcommand)]
    command: ProfilesCommand,
}

#[derive(Subcommand)]
enum ProfilesCommand {
    /// Convert what the regional profiles need from UK Core (XML) to JSON, generate
    /// snapshots, and write the set as one Bundle.
    Build {
        /// The regional profiles' differentials and the CapabilityStatement.
        #[arg(long, default_value = "profiles/source")]
        sources: PathBuf,
        /// UK Core R4 (the NHSDigital FHIR-R4-UKCORE package, XML).
        #[arg(long, default_value = "../shared/corpora/uk-core-r4")]
        uk_core: PathBuf,
        /// The FHIR R4 definitions (for extension-definitions.json).
        #[arg(long, default_value = "../shared/corpora/fhir-r4-definitions")]
        r4: PathBuf,
        #[arg(long, default_value = "profiles/regional/pennine-regional.json")]
        out: PathBuf,
    },
    /// Load a folder of profiles as a node would, and say what it holds or why it is broken.
    Check {
        /// The folder (every *.json file: a resource or a Bundle of them).
        dir: PathBuf,
    },
}

pub fn run(args: ProfilesArgs) -> anyhow::Result<()> {
    match args.command {
        ProfilesCommand::Build {
            sources,
            uk_core,
            r4,
            out,
        } => {
            let s = crate::profiles::build::build(&sources, &uk_core, &r4, &out)?;
            println!(
                "wrote {}: {} profiles, {} extension definitions, {} value sets, {} code systems",
                out.display(),
                s.profiles,
                s.extensions,
                s.value_sets,
                s.code_systems
            );
            for u in &s.unresolved {
                println!("  not available, so not checked: {u}");
            }
            Ok(())
        }
        ProfilesCommand::Check { dir } => {
            let set = ProfileSet::load_dir(&dir)?;
            describe(&set);
            Ok(())
        }
    }
}

fn describe(set: &ProfileSet) {
    let base = crate::validation::validator();
    println!(
        "R4 base: every invariant evaluated but {} best-practice ones (guidance, not conformance); {} required value sets need a terminology server",
        base.skipped_invariants().len(),
        base.value_sets_not_expanded().len()
    );
    println!("{}: {} StructureDefinitions", set.origin, set.len());
    let mut enforced: Vec<_> = set.enforced_all().collect();
    enforced.sort_by_key(|(t, _)| *t);
    for (t, p) in enforced {
        println!("  {t:<18} {}", p.url);
    }
    for s in &set.skipped {
        println!("  invariant {} on {} not evaluated: {}", s.key, s.on, s.reason);
    }
    for u in set.value_sets_not_expanded() {
        println!("  value set {u} needs a terminology server: bindings to it are not checked");
    }
    for u in &set.value_sets_missing {
        println!("  value set {u} is not loaded: bindings to it are not checked");
    }
    for u in &set.unresolved {
        println!("  extension {u} is not loaded: its content is not checked");
    }
}
