//! What operators do to a node's data folder, through the real binary:
//! `pennine backup` while writes go on, `pennine restore`, and
//! `pennine audit verify` finding a tampered audit trail.

use crate::helpers::{spawn_node_with, test_database};
use pennine::config::StorageConfig;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Output};

fn pennine(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pennine"))
        .args(args)
        .output()
        .expect("run the pennine binary")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// A node on the embedded store in `data`, a folder that outlives it (backups are of
/// the embedded store; PostgreSQL has pg_dump).
async fn embedded_at(data: &Path) -> crate::helpers::TestNode {
    let data = data.to_path_buf();
    spawn_node_with(move |c| {
        c.storage = StorageConfig::Embedded;
        c.data = data;
    })
    .await
}

/// Copies a stopped node's data folder (the tests tamper with copies).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_writing_then_restore_keeps_every_acknowledged_write_before_it() {
    // Backups are of the embedded store (PostgreSQL has pg_dump), so this node is embedded;
    // its data folder outlives it.
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let node = embedded_at(&data).await;
    let backup_dir = scratch.path().join("backup");

    // Writers keep going while the backup runs.
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, std::time::Instant)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, acknowledged, stop) = (
            node.client.clone(),
            node.fhir.clone(),
            acknowledged.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) || i < 20 {
                let body = json!({"resourceType": "Patient", "name": [{"family": format!("W{w}-{i}")}]});
                let r = client
                    .post(format!("{base}/Patient"))
                    .header("content-type", "application/fhir+json")
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "write {w}-{i}");
                let id = r.json::<serde_json::Value>().await.unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string();
                acknowledged.lock().unwrap().push((id, std::time::Instant::now()));
                i += 1;
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let (d, b) = (data.clone(), backup_dir.clone());
    let out = tokio::task::spawn_blocking(move || pennine(&["backup", "--data", path(&d), "--to", path(&b)]))
        .await
        .unwrap();
    assert!(out.status.success(), "backup: {}", text(&out));
    assert!(text(&out).contains("backed up"), "{}", text(&out));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    let before: Vec<&String> = acknowledged
        .iter()
        .filter(|(_, t)| *t < started)
        .map(|(id, _)| id)
        .collect();
    assert!(before.len() >= 4, "writes were acknowledged before the backup began");
    assert!(acknowledged.len() > before.len(), "writes went on during the backup");
    node.stop().await;

    // A second backup into the same folder is refused (a backup goes into a new folder).
    let again = pennine(&["backup", "--data", path(&data), "--to", path(&backup_dir)]);
    assert!(
        !again.status.success() && text(&again).contains("not empty"),
        "{}",
        text(&again)
    );

    // Restore into a fresh folder and serve it.
    let restored = scratch.path().join("restored");
    let out = pennine(&["restore", "--from", path(&backup_dir), "--data", path(&restored)]);
    assert!(out.status.success(), "restore: {}", text(&out));
    let verify = pennine(&["audit", "verify", "--data", path(&restored)]);
    assert!(
        verify.status.success() && text(&verify).contains("intact"),
        "{}",
        text(&verify)
    );
    let copy = embedded_at(&restored).await;
    for id in &before {
        let r = copy.get(&format!("Patient/{id}")).await;
        assert_eq!(
            r.status(),
            200,
            "Patient/{id}, acknowledged before the backup began, was restored"
        );
    }
    // Everything restored was acknowledged (no half-written write survives).
    let total = copy.total("Patient").await as usize;
    assert!(
        total >= before.len() && total <= acknowledged.len(),
        "restored {total} patients"
    );
    copy.stop().await;

    // A damaged backup is refused before anything is touched, and an occupied folder needs --force.
    let db = backup_dir.join("pennine.db");
    let mut bytes = std::fs::read(&db).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let target = scratch.path().join("other");
    let out = pennine(&["restore", "--from", path(&backup_dir), "--data", path(&target)]);
    assert!(
        !out.status.success() && text(&out).contains("does not match the manifest"),
        "{}",
        text(&out)
    );
    assert!(!target.exists(), "a refused restore leaves nothing behind");
    let out = pennine(&["restore", "--from", path(&restored), "--data", path(&restored)]);
    assert!(!out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_is_hash_chained_and_verify_names_the_first_broken_link() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let node = embedded_at(&data).await;
    for i in 0..5 {
        node.create(&json!({"resourceType": "Patient", "name": [{"family": format!("A{i}")}]}))
            .await;
        let _ = node.get("Patient?family=A").await;
    }
    node.stop().await;
    // A second process continues the chain in a segment of its own.
    let folder = scratch.path().join("node");
    copy_dir(&data, &folder);
    let again = embedded_at(&folder).await;
    let _ = again.get("Patient").await;
    again.stop().await;

    let out = pennine(&["audit", "verify", "--data", path(&folder)]);
    assert!(out.status.success(), "{}", text(&out));
    let report = text(&out);
    assert!(report.contains("intact") && report.contains("2 segments"), "{report}");

    let db = |dir: &Path| rusqlite::Connection::open(dir.join("audit").join("pennine.db")).unwrap();
    let events = |dir: &Path| -> Vec<(i64, String)> {
        let c = db(dir);
        let mut st = c
            .prepare("SELECT r.rid, r.id FROM resources r WHERE r.type = 'AuditEvent' ORDER BY r.rid")
            .unwrap();
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.map(Result::unwrap).collect()
    };
    let all = events(&folder);
    assert!(all.len() > 10, "the requests were audited ({} events)", all.len());
    let (victim_rid, victim_id) = all[all.len() / 2].clone();

    // Altered: one event's outcome rewritten in the store.
    let altered = scratch.path().join("altered");
    copy_dir(&folder, &altered);
    {
        let c = db(&altered);
        let json: Vec<u8> = c
            .query_row("SELECT json FROM versions WHERE rid = ?1", [victim_rid], |r| r.get(0))
            .unwrap();
        let mut event: serde_json::Value = serde_json::from_slice(&json).unwrap();
        event["outcome"] = json!(if event["outcome"] == "0" { "4" } else { "0" });
        c.execute(
            "UPDATE versions SET json = ?1 WHERE rid = ?2",
            rusqlite::params![serde_json::to_vec(&event).unwrap(), victim_rid],
        )
        .unwrap();
    }
    let out = pennine(&["audit", "verify", "--data", path(&altered)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("AuditEvent/{victim_id}")) && text(&out).contains("altered"),
        "{}",
        text(&out)
    );

    // Removed: one event deleted; the next one is named.
    let removed = scratch.path().join("removed");
    copy_dir(&folder, &removed);
    {
        let c = db(&removed);
        c.execute("DELETE FROM versions WHERE rid = ?1", [victim_rid]).unwrap();
        c.execute("DELETE FROM resources WHERE rid = ?1", [victim_rid]).unwrap();
    }
    let next_id = &all[all.len() / 2 + 1].1;
    let out = pennine(&["audit", "verify", "--data", path(&removed)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("AuditEvent/{next_id}")), "{}", text(&out));
    assert!(text(&out).contains("missing"), "{}", text(&out));

    // On PostgreSQL the same check reads the node's audit schema.
    if let Some(url) = test_database() {
        let mut schema = String::new();
        let node = spawn_node_with(|c| {
            if let StorageConfig::Postgres { schema: s, .. } = &c.storage {
                schema = s.clone();
            }
        })
        .await;
        let pg_data = node.data_dir();
        let _ = node.get("Patient").await;
        let _ = node.get("Patient?family=x").await;
        let out = pennine(&[
            "audit",
            "verify",
            "--data",
            path(&pg_data),
            "--database",
            &url,
            "--database-schema",
            &schema,
        ]);
        node.stop().await;
        for suffix in ["_audit", "_deadletters"] {
            crate::helpers::drop_schema(url.clone(), format!("{schema}{suffix}")).await;
        }
        assert!(out.status.success() && text(&out).contains("intact"), "{}", text(&out));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_start_the_caches_warm_in_the_background_and_ready_says_so() {
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let node = embedded_at(&data).await;
    for i in 0..20 {
        node.create(
            &json!({"resourceType": "Patient", "gender": if i % 2 == 0 { "male" } else { "female" },
                            "birthDate": "1950-01-01"}),
        )
        .await;
    }
    node.stop().await;
    let again = embedded_at(&data).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let caches = loop {
        let r: serde_json::Value = again
            .client
            .get(format!("{}/ready", again.root))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["status"], "ready", "{r}");
        let state = r["caches"]["state"].as_str().unwrap_or_default().to_string();
        assert!(["warming", "warm"].contains(&state.as_str()), "{r}");
        if state == "warm" {
            break r["caches"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "never warm: {r}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let approved = pennine::views::library::names().count();
    assert_eq!(
        caches["views"], approved,
        "every approved view's rows were built: {caches}"
    );
    assert!(caches["seconds"].as_f64().is_some(), "{caches}");
    // An open probe releases no figure about the data: the episodes are read, not counted.
    assert_eq!(caches["episodes"], true, "{caches}");
    again.stop().await;
}
