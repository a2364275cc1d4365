//! Durability: acknowledged writes survive `kill -9` of the node process.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A node process that is killed (SIGKILL) when dropped, so a failing test
/// never leaves a server running.
pub struct NodeProcess(pub Child);

impl NodeProcess {
    /// `kill -9` and wait for the process to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts the real binary; on a PostgreSQL run `schema` names the node's schema.
pub fn start(data: &std::path::Path, schema: Option<&str>) -> (NodeProcess, String) {
    let clients = crate::helpers::write_clients(data, "yh");
    start_with(data, schema, &clients, &[])
}

/// `start` with a clients file of the caller's and more flags.
pub fn start_with(
    data: &std::path::Path,
    schema: Option<&str>,
    clients: &std::path::Path,
    extra: &[&str],
) -> (NodeProcess, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pennine"));
    cmd.args(["node", "--region", "yh", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .arg("--clients")
        .arg(clients)
        .args(extra);
    if let (Some(url), Some(schema)) = (crate::helpers::test_database(), schema) {
        cmd.args(["--database", &url, "--database-schema", schema]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the pennine binary");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .to_string();
    (NodeProcess(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let schema = crate::helpers::fresh_schema();
    let (mut child, base) = start(dir.path(), Some(&schema));
    let client = crate::helpers::authed(&base).await;
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..25 {
                let r = client
                    .post(format!("{base}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": "Patient", "name": [{"family": format!("K{t}-{i}")}]}).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
                let v: Value = r.json().await.unwrap();
                ids.push(v["id"].as_str().unwrap().to_string());
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.unwrap());
    }
    // SIGKILL: no shutdown hook runs, the WAL is not checkpointed.
    child.kill();
    let (mut child, base) = start(dir.path(), Some(&schema));
    for id in &ids {
        let r = client.get(format!("{base}/Patient/{id}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "Patient/{id} lost");
    }
    let v: Value = client
        .get(format!("{base}/Patient?_summary=count"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total"].as_u64().unwrap() as usize, ids.len());
    child.kill();
    if let Some(url) = crate::helpers::test_database() {
        crate::helpers::drop_schema(url, schema).await;
    }
}

#[test]
fn invalid_settings_stop_the_node_at_start_up_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad_config = dir.path().join("node.toml");
    std::fs::write(
        &bad_config,
        "region = \"nenc\"\nlisten = \"127.0.0.1:0\"\nmax_count = \"many\"\n",
    )
    .unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--region".into(),
                "North East".into(),
                "--data".into(),
                dir.path().display().to_string(),
            ],
            "region",
        ),
        (vec!["--region".into(), "nenc".into()], "data folder"),
        (
            vec![
                "--region".into(),
                "nenc".into(),
                "--data".into(),
                dir.path().display().to_string(),
                "--listen".into(),
                "nowhere".into(),
            ],
            "host:port",
        ),
        (
            vec![
                "--config".into(),
                bad_config.display().to_string(),
                "--data".into(),
                dir.path().display().to_string(),
            ],
            "max_count",
        ),
        (
            vec![
                "--region".into(),
                "nenc".into(),
                "--database".into(),
                "mysql://x".into(),
            ],
            "postgres://",
        ),
    ];
    for (args, expected) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_pennine"))
            .arg("node")
            .args(&args)
            .env_remove("PENNINE_REGION")
            .env_remove("PENNINE_DATA")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_applies_once_and_is_idempotent() {
    let Some(url) = crate::helpers::test_database() else {
        println!("NOTE: `pennine migrate` is for PostgreSQL; set PENNINE_TEST_DATABASE to run this check");
        return;
    };
    let schema = crate::helpers::fresh_schema();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_pennine"))
            .args(["migrate", "--database", &url, "--database-schema", &schema])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied migrations 1, 2, 3"));
    let second = run();
    assert!(second.status.success());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
    crate::helpers::drop_schema(url.clone(), schema.clone()).await;
}
