//! Spawning real nodes on port 0 with temporary data folders.

use pennine::config::{NodeConfig, StorageConfig};
use pennine::startup::{start_node, RunningNode};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub struct TestNode {
    /// The FHIR base, e.g. `http://127.0.0.1:40123/fhir`.
    pub fhir: String,
    pub root: String,
    pub client: reqwest::Client,
    /// The MLLP listener, when the config asked for one.
    pub mllp: Option<std::net::SocketAddr>,
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

/// The secret of the test clients `write_clients` registers.
pub const TEST_SECRET: &str = "pennine-test-secret-0123456789";

/// Registers test clients in `dir/clients.toml`: `tester` (vendor, analyst and
/// admin of `region`), `vendor`, `analyst`, `partner`, `admin`, and `outsider`
/// (vendor and analyst of another region).
pub fn write_clients(dir: &Path, region: &str) -> PathBuf {
    let hash = pennine::auth::clients::sha256_hex(TEST_SECRET);
    let other = if region == "gm" { "nwc" } else { "gm" };
    let text = format!(
        "[[client]]\nid = \"tester\"\nroles = [\"vendor\", \"analyst\", \"admin\"]\nregion = \"{region}\"\nsecret_sha256 = \"{hash}\"\n\
         [[client]]\nid = \"partner\"\nroles = [\"partner\"]\nsecret_sha256 = \"{hash}\"\n\
         [[client]]\nid = \"admin\"\nroles = [\"admin\"]\nsecret_sha256 = \"{hash}\"\n\
         [[client]]\nid = \"outsider\"\nroles = [\"vendor\", \"analyst\"]\nregion = \"{other}\"\nsecret_sha256 = \"{hash}\"\n\
         [[client]]\nid = \"vendor\"\nroles = [\"vendor\"]\nregion = \"{region}\"\nsecret_sha256 = \"{hash}\"\n\
         [[client]]\nid = \"analyst\"\nroles = [\"analyst\"]\nregion = \"{region}\"\nsecret_sha256 = \"{hash}\"\n"
    );
    let path = dir.join("clients.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// An access token for `client` from the server at `root` (no `/fhir`).
pub async fn token_for(http: &reqwest::Client, root: &str, client: &str) -> String {
    let res = http
        .post(format!("{root}/auth/token"))
        .basic_auth(client, Some(TEST_SECRET))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("token request");
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "token for {client}: {body}");
    body["access_token"].as_str().unwrap().to_string()
}

/// A client that sends `client`'s token with every request; `builder` makes
/// clients with the right TLS trust.
pub async fn authed_with(builder: impl Fn() -> reqwest::ClientBuilder, root: &str, client: &str) -> reqwest::Client {
    let token = token_for(&builder().build().unwrap(), root, client).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    builder().default_headers(headers).build().unwrap()
}

/// A plain-HTTP client holding the `tester` token of the node at `fhir` (its `/fhir` base).
pub async fn authed(fhir: &str) -> reqwest::Client {
    let root = fhir.trim_end_matches("/fhir");
    authed_with(reqwest::Client::builder, root, "tester").await
}

pub async fn spawn_node_with(tweak: impl FnOnce(&mut NodeConfig)) -> TestNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = NodeConfig::local("nenc", dir.path());
    config.clients = Some(write_clients(dir.path(), "nenc"));
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
    let config_clients = config.clients.clone();
    let node = start_node(config).await.expect("node starts");
    let root = node.base_url();
    let mllp = node.mllp_addr;
    // Tests that register other clients (or none) get a client without a token.
    let has_tester = config_clients
        .as_deref()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|t| t.contains("id = \"tester\""));
    let client = if has_tester {
        authed(&format!("{root}/fhir")).await
    } else {
        reqwest::Client::new()
    };
    TestNode {
        fhir: format!("{root}/fhir"),
        root,
        client,
        mllp,
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

    /// The node's data folder (its clients file and token key live there).
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
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
/// Under `CI=true` a missing corpus is a failure, never a silent pass.
pub fn corpus(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/corpora")
        .join(sub);
    if p.exists() {
        Some(p)
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("corpus folder {} is missing, and CI=true needs it", p.display());
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
