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
