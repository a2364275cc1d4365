//! Spawning real nodes on port 0 with temporary data folders.

use pennine::config::{NodeConfig, StorageConfig};
use pennine::http::{start_node, RunningNode};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct TestNode {
    /// The FHIR base, e.g. `http://127.0.0.1:40123/fhir`.
    pub fhir: String,
    pub root: String,
    pub client: reqwest::Client,
    node: Option<RunningNode>,
    schema: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

pub async fn spawn_node() -> TestNode {
    spawn_node_with(|_| {}).await
}

/// The PostgreSQL URL when the suite runs against PostgreSQL
/// (`PENNINE_TEST_DATABASE=postgres://...`), else `None` for the embedded store.
pub fn test_database() -> Option<String> {
    std::env::var("PENNINE_TEST_DATABASE").ok().filter(|s| !s.is_empty())
}

/// A schema of its own for each node, so tests and runs never collide.
pub fn fresh_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

pub async fn spawn_node_with(tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::local("nenc", dir.path());
    let mut schema = None;
    if let Some(url) = test_database() {
        let s = fresh_schema();
        schema = Some((url.clone(), s.clone()));
        config.storage = StorageConfig::Postgres {
            url,
            schema: s,
            pool: 8,
        };
    }
    tweak(&mut config);
    let node = start_node(config).await.expect("node starts");
    let root = node.base_url();
    TestNode {
        fhir: format!("{root}/fhir"),
        root,
        client: reqwest::Client::new(),
        node: Some(node),
        schema,
        _dir: dir,
    }
}

/// Drops a test schema (PostgreSQL runs only).
pub async fn drop_schema(url: String, schema: String) {
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    })
    .await;
}

impl TestNode {
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.fhir, path.trim_start_matches('/'))
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("request")
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert!(status.is_success(), "GET {path}: {status} {v}");
        v
    }

    /// Creates a resource and returns its id.
    pub async fn create(&self, body: &Value) -> String {
        let rtype = body["resourceType"].as_str().expect("resourceType");
        let r = self.post(rtype, body).await;
        let status = r.status();
        let v: Value = r.json().await.expect("json");
        assert_eq!(status, 201, "create {rtype}: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// The ids of a search's matches (first page).
    pub async fn search_ids(&self, query: &str) -> Vec<String> {
        let b = self.get_json(query).await;
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn total(&self, query: &str) -> u64 {
        let sep = if query.contains('?') { '&' } else { '?' };
        let b = self.get_json(&format!("{query}{sep}_summary=count")).await;
        b["total"].as_u64().expect("total")
    }

    pub async fn stop(mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
        if let Some((url, schema)) = self.schema.take() {
            drop_schema(url, schema).await;
        }
    }
}

/// The shared corpora folder, or `None` (with a printed message) when absent.
pub fn corpus(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpora")
        .join(sub);
    if p.exists() {
        Some(p)
    } else {
        println!("SKIPPED: corpus folder {} is missing", p.display());
        None
    }
}

pub fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}
