//! The Docker files cannot be run here (no engine), so check what can be:
//! the paths they copy exist and the command they run is one the binary accepts.

use std::path::Path;
use std::process::Command;

#[test]
fn dockerfile_copies_real_paths_and_runs_real_flags() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dockerfile = std::fs::read_to_string(root.join("docker/Dockerfile")).unwrap();
    for line in dockerfile
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let parts: Vec<&str> = line.split_whitespace().collect();
        for src in &parts[1..parts.len() - 1] {
            assert!(root.join(src).exists(), "Dockerfile copies {src}, which does not exist");
        }
    }
    let cmd = dockerfile.lines().find(|l| l.starts_with("CMD ")).expect("a CMD");
    let args: Vec<String> = serde_json::from_str(cmd.trim_start_matches("CMD ")).unwrap();
    assert_eq!(args[0], "node");
    let help = Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(["node", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(help.contains(flag.as_str()), "pennine node does not accept {flag}");
    }
    let compose = std::fs::read_to_string(root.join("docker/compose.yaml")).unwrap();
    for region in ["nenc", "yh", "gm", "nwc"] {
        assert!(
            compose.contains(&format!("PENNINE_REGION: {region}")),
            "compose lacks {region}"
        );
        assert!(
            compose.contains(&format!("\"{region}=https://{region}:8443\"")),
            "the hub lacks {region}"
        );
    }
    // Every `command:` runs a real subcommand with flags it accepts.
    let help_of = |sub: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_pennine"))
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pennine {sub} is not a subcommand");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut all_help = String::new();
    let mut commands = 0;
    let mut text = compose.as_str();
    while let Some(at) = text.find("command: [") {
        let rest = &text[at + "command: ".len()..];
        let end = rest.find(']').unwrap();
        let args: Vec<String> = serde_json::from_str(&rest[..=end].replace('\n', " ")).unwrap();
        let help = help_of(&args[0]);
        for flag in args.iter().filter(|a| a.starts_with("--")) {
            assert!(
                help.contains(flag.as_str()),
                "pennine {} does not accept {flag}",
                args[0]
            );
        }
        all_help.push_str(&help);
        commands += 1;
        text = &rest[end..];
    }
    assert!(commands >= 3, "node, hub and certs commands");
    // Files bind-mounted from the repository exist, and the clients file parses.
    for word in compose.split('"').filter(|w| w.starts_with("./")) {
        let source = word.split(':').next().unwrap();
        assert!(
            root.join("docker").join(source).exists(),
            "compose mounts {source}, which does not exist"
        );
    }
    pennine::auth::Clients::load(&root.join("docker/clients.toml")).expect("docker/clients.toml parses");
    for var in compose.split_whitespace().filter(|w| w.starts_with("PENNINE_")) {
        let name = var.trim_end_matches(':').trim_matches(|c| c == '{' || c == ',');
        assert!(all_help.contains(name), "no subcommand reads {name}");
    }
}
