//! `pennine demo --once`: the README's "run it" command, through the real binary.

use std::process::Command;

#[test]
fn demo_runs_the_whole_gateway_and_prints_pooled_answers() {
    let out = Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["demo", "--once", "--patients", "120"])
        .env("PENNINE_LOG", "warn")
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\n{stdout}\n{stderr}", out.status);
    for region in ["nenc", "yh", "gm", "nwc"] {
        assert!(stdout.contains(&format!("{region} ok")), "{region} answered: {stdout}");
        assert!(stdout.contains(&format!("  {region}  ")), "{region} listed: {stdout}");
    }
    assert_eq!(stdout.matches("status complete").count(), 4, "{stdout}");
    // Four regions x 120 patients, released rounded to 5.
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("pooled") && l.contains("480"))
        .unwrap_or_else(|| panic!("a pooled row of 480 patients: {stdout}"));
    assert!(line.contains("480"));
    assert!(stdout.contains("https://127.0.0.1:"), "{stdout}");
    assert!(stdout.contains("Body weight"), "{stdout}");
    // The quality table: every region received its 120 patients.
    assert!(stdout.contains("6. Data quality per region"), "{stdout}");
    for region in ["nenc", "yh", "gm", "nwc"] {
        assert!(
            stdout.lines().any(|l| {
                let cells: Vec<&str> = l.split_whitespace().collect();
                cells.len() >= 3 && cells[0] == region && cells[1] == "Patient" && cells[2] == "120"
            }),
            "{region}: 120 patients received: {stdout}"
        );
    }
    // The learning results: the three pathways per region, and a benchmark that flags a provider.
    assert!(stdout.contains("7. Pathway admissions in 2025 by region"), "{stdout}");
    for id in ["chc-copd", "chc-arld", "chc-epilepsy"] {
        assert!(stdout.contains(id), "{id}: {stdout}");
    }
    let flagged = stdout
        .lines()
        .skip_while(|l| !l.contains("8. COPD in-hospital mortality"))
        .filter(|l| l.contains(" high ") || l.contains(" low "))
        .count();
    assert!(flagged >= 1, "a provider flagged: {stdout}");
    // One-time sign-in links to the web view for a demo clinician and a demo analyst.
    for who in ["demo-clinician", "demo-analyst"] {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(who) && l.contains("/app/login/once/"))
            .unwrap_or_else(|| panic!("no sign-in link for {who}: {stdout}"));
        assert!(line.contains("https://127.0.0.1:"), "{line}");
    }
    assert!(!stderr.contains("ERROR"), "{stderr}");
}

/// `pennine demo --data DIR` run twice reuses the folder: the same certificates and
/// clients, no second load, the same pooled answers; the secrets are where it says.
#[test]
fn demo_over_the_same_folder_reuses_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_pennine"))
            .args(["demo", "--once", "--patients", "40", "--episodes", "200", "--data"])
            .arg(dir.path())
            .env("PENNINE_LOG", "warn")
            .output()
            .expect("the binary runs");
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "exit {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run();
    assert!(first.contains("Loading synthetic data"), "{first}");
    let ca = std::fs::read(dir.path().join("certs/ca.pem")).unwrap();
    let secrets = std::fs::read(dir.path().join("demo-secrets.json")).unwrap();
    assert!(first.contains("demo-secrets.json"), "{first}");
    let second = run();
    assert!(
        second.contains("(reused)") && second.contains("Reusing the data"),
        "{second}"
    );
    assert!(!second.contains("Loading synthetic data"), "{second}");
    assert_eq!(
        std::fs::read(dir.path().join("certs/ca.pem")).unwrap(),
        ca,
        "the certificates are kept"
    );
    assert_eq!(std::fs::read(dir.path().join("demo-secrets.json")).unwrap(), secrets);
    // Four regions x 40 patients, once: the pooled count is 160 both times, not 320.
    for out in [&first, &second] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with("pooled") && l.contains("160")),
            "{out}"
        );
        assert!(
            !out.lines()
                .any(|l| l.trim_start().starts_with("pooled") && l.contains("320")),
            "{out}"
        );
    }
}
