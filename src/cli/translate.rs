//! `pennine translate <file>`: the FHIR transaction Bundle each HL7 v2 message
//! in a file becomes, without a server. Findings go to stderr; the exit status
//! is 1 when any message is refused.

use crate::feeds::hl7v2::{split_messages, translate};
use crate::feeds::ingest::transaction;
use crate::fhir::time::{format_instant, now_millis};
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct TranslateArgs {
    /// A file of one or more ER7 messages (CR, LF or CRLF between segments).
    file: PathBuf,
    /// Print one compact Bundle per line instead of indented JSON.
    #[arg(long)]
    ndjson: bool,
}

pub fn run(args: TranslateArgs) -> anyhow::Result<std::process::ExitCode> {
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = crate::feeds::decode_text(&bytes);
    let messages = split_messages(&text);
    if messages.is_empty() {
        anyhow::bail!("{} holds no HL7 v2 message (none starts with MSH)", args.file.display());
    }
    let now = format_instant(now_millis());
    let mut refused = 0;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, m) in messages.iter().enumerate() {
        match translate(m, &now) {
            Ok(t) => {
                for f in &t.findings {
                    let i = f.to_issue();
                    eprintln!("{} {}: {}", t.header.control_id, i.severity.as_str(), i.diagnostics);
                }
                let bundle = transaction(&t.resources);
                if args.ndjson {
                    writeln!(out, "{}", serde_json::to_string(&bundle)?)?;
                } else {
                    writeln!(out, "{}", serde_json::to_string_pretty(&bundle)?)?;
                }
            }
            Err(r) => {
                refused += 1;
                let id = r
                    .header
                    .as_ref()
                    .map(|h| h.control_id.clone())
                    .unwrap_or_else(|| format!("message {}", i + 1));
                for f in &r.findings {
                    let issue = f.to_issue();
                    eprintln!("{id} refused ({}): {}", r.ack.as_str(), issue.diagnostics);
                }
            }
        }
    }
    Ok(if refused > 0 {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
