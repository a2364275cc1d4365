//! `pennine bench-feeds`: HL7 v2 translation throughput on one core (against
//! ER7 parsing alone, the baseline), and end-to-end MLLP throughput with
//! durable commits into a fresh embedded node.

use crate::feeds::hl7v2::{er7, split_messages, translate};
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct BenchFeedsArgs {
    /// Folder of .hl7 files to translate (default: the shared FHIR-Converter samples).
    #[arg(long, default_value = "../shared/corpora/fhir-converter-hl7v2/input")]
    corpus: PathBuf,
    /// Translation rounds over the corpus.
    #[arg(long, default_value_t = 200)]
    rounds: usize,
    /// End-to-end messages over MLLP.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Concurrent MLLP senders.
    #[arg(long, default_value_t = 16)]
    senders: usize,
}

pub fn run(args: BenchFeedsArgs) -> anyhow::Result<()> {
    let mut texts = Vec::new();
    for e in std::fs::read_dir(&args.corpus).with_context(|| format!("cannot read {}", args.corpus.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "hl7") {
            let t = crate::feeds::decode_text(&std::fs::read(&p)?);
            for m in split_messages(&t) {
                if translate(m, "2026-01-01T00:00:00Z").is_ok() {
                    texts.push(m.to_string());
                }
            }
        }
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    println!("{} translatable messages, {} bytes per round", texts.len(), bytes);
    let t = Instant::now();
    let mut n = 0usize;
    for _ in 0..args.rounds {
        for m in &texts {
            let parsed = er7::parse(m).expect("parses");
            n += parsed.segments.len();
        }
    }
    let parse_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut resources = 0usize;
    for _ in 0..args.rounds {
        for m in &texts {
            let tr = translate(m, "2026-01-01T00:00:00Z").expect("translates");
            resources += tr.resources.len();
        }
    }
    let translate_s = t.elapsed().as_secs_f64();
    let msgs = (texts.len() * args.rounds) as f64;
    println!(
        "ER7 parse only (baseline): {:.0} messages/s ({n} segments)\ntranslation to FHIR:       {:.0} messages/s ({:.1} resources per message), {:.2}x the parse time",
        msgs / parse_s,
        msgs / translate_s,
        resources as f64 / msgs,
        translate_s / parse_s
    );

    // The same on a typical regional ADT^A01 (PID, PD1, PV1; about 400 bytes), the shape
    // most of a trust's feed has, for scale against the corpus's field-complete samples.
    let typical: Vec<String> = (0..2000).map(typical_message).collect();
    let typical_rounds = args.rounds.div_ceil(20);
    let t = Instant::now();
    for _ in 0..typical_rounds {
        for m in &typical {
            std::hint::black_box(translate(m, "2026-01-01T00:00:00Z").expect("translates"));
        }
    }
    let typical_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..typical_rounds {
        for m in &typical {
            std::hint::black_box(er7::parse(m).expect("parses"));
        }
    }
    let typical_parse_s = t.elapsed().as_secs_f64();
    println!(
        "typical ADT^A01 ({} bytes): parse only {:.0} messages/s, translation {:.0} messages/s",
        typical[0].len(),
        (2000 * typical_rounds) as f64 / typical_parse_s,
        (2000 * typical_rounds) as f64 / typical_s
    );

    // End to end: a fresh embedded node with MLLP, distinct patients, durable commits.
    let rt = super::runtime()?;
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir()?;
        let mut config = crate::config::NodeConfig::local("nenc", dir.path());
        config.mllp = Some("127.0.0.1:0".into());
        let node = crate::startup::start_node(config).await?;
        let addr = node.mllp_addr.expect("MLLP");
        let per = args.messages / args.senders.max(1);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for s in 0..args.senders {
            tasks.push(tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                let mut buf = vec![0u8; 8192];
                let mut lat = Vec::with_capacity(per);
                for k in 0..per {
                    let msg = typical_message(s * per + k);
                    let t = Instant::now();
                    stream.write_all(&crate::feeds::mllp::frame(msg.as_bytes())).await?;
                    let mut got = Vec::new();
                    loop {
                        let n = stream.read(&mut buf).await?;
                        anyhow::ensure!(n > 0, "closed");
                        got.extend_from_slice(&buf[..n]);
                        if got.ends_with(&[0x1c, 0x0d]) {
                            break;
                        }
                    }
                    anyhow::ensure!(String::from_utf8_lossy(&got).contains("MSA|AA"), "not accepted");
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok::<Vec<f64>, anyhow::Error>(lat)
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await??);
        }
        let secs = started.elapsed().as_secs_f64();
        lat.sort_by(|a, b| a.total_cmp(b));
        let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize];
        println!(
            "MLLP end to end ({} senders, durable commit): {:.0} messages/s, ACK latency p50 {:.1} ms p95 {:.1} ms ({} messages in {:.1} s)",
            args.senders,
            lat.len() as f64 / secs,
            p(0.5),
            p(0.95),
            lat.len(),
            secs
        );
        node.stop().await;
        Ok(())
    })
}

/// A typical admission from a trust's PAS: NHS number and MRN, name, address,
/// GP practice, ward, consultant, visit number.
fn typical_message(i: usize) -> String {
    // NHS numbers with a valid check digit: 900000000 + i, then its Modulus 11 digit.
    let base = format!("{:09}", 900_000_000 + i % 99_999_999);
    let sum: u32 = base
        .bytes()
        .zip((2..=10).rev())
        .map(|(b, w)| (b - b'0') as u32 * w)
        .sum();
    let nhs = match 11 - sum % 11 {
        11 => format!("{base}0"),
        10 => String::new(),
        c => format!("{base}{c}"),
    };
    let nhs = if nhs.is_empty() {
        String::new()
    } else {
        format!("{nhs}^^^NHS^NH~")
    };
    format!(
        "MSH|^~\\&|PAS|RTD|PENNINE|NENC|20240115093000||ADT^A01^ADT_A01|B{i}|P|2.4\r\
         EVN|A01|20240115093000\r\
         PID|1||{nhs}MRN{i}^^^RTD^MR||Patient{i}^Test^A^^Mr||19800101|M|||1 High St^^Leeds^^LS1 1AA^GBR^H||0113 496 0000^PRN^PH\r\
         PD1|||Leeds GP^^B86001\r\
         PV1|1|I|WARD7^BAY2^BED3^RTD||||C1234^Jones^Peter^^^Dr|||MED||||||||||V{i}^^^RTD^VN|||||||||||||||||||||||||20240115090000\r"
    )
}
