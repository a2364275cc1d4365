//! A small W3C WebDriver client for the browser tests: Debian's `chromium` driven
//! by `chromedriver`, started for the test on a loopback port and stopped with it.
//! Only what the tests use: navigation, elements, scripts, cookies, the browser's
//! console log and screenshots.

use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What the browser tests need on this machine, or `None` (printed) when a tool is
/// missing; under `CI=true` a missing tool fails the test instead.
pub struct Tools {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
    /// `tests/browser/node_modules` (oidc-provider, axe-core), from `npm ci`.
    pub node_modules: PathBuf,
}

pub fn tools() -> Option<Tools> {
    let find = |names: &[&str]| names.iter().map(PathBuf::from).find(|p| p.exists());
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/node_modules");
    let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
    let driver = find(&["/usr/bin/chromedriver"]);
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (chromium.is_none(), "chromium (apt-get install chromium)"),
        (driver.is_none(), "chromedriver (apt-get install chromium-driver)"),
        (!node, "node"),
        (
            !modules.join("oidc-provider").exists() || !modules.join("axe-core").exists(),
            "tests/browser/node_modules (cd tests/browser && npm ci)",
        ),
    ]
    .into_iter()
    .filter(|(m, _)| *m)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("the browser tests need {} (CI=true)", missing.join(", "));
        }
        println!("SKIPPED: the browser tests need {}", missing.join(", "));
        return None;
    }
    Some(Tools {
        chromium: chromium?,
        chromedriver: driver?,
        node_modules: modules,
    })
}

/// A free loopback port (bound, read and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed when dropped.
pub struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Driver {
    _process: Process,
    base: String,
    http: reqwest::Client,
}

pub struct Browser<'a> {
    driver: &'a Driver,
    session: String,
}

#[derive(Clone, Debug)]
pub struct Element(String);

impl Driver {
    pub async fn start(tools: &Tools) -> Driver {
        let port = free_port();
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let driver = Driver {
            _process: Process(child),
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = driver.http.get(format!("{}/status", driver.base)).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        driver
    }

    /// A new headless browser with its own profile (no cookies shared with another).
    pub async fn browser<'a>(&'a self, tools: &Tools) -> Browser<'a> {
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1280,1024", "--no-first-run", "--disable-extensions"]
            }
        }}});
        let v = self.call("POST", "/session", Some(caps)).await;
        let session = v["sessionId"].as_str().expect("a session id").to_string();
        Browser { driver: self, session }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body.unwrap_or_else(|| json!({}))),
        };
        let res = req.send().await.expect("chromedriver answers");
        let status = res.status();
        let v: Value = res.json().await.expect("chromedriver answers JSON");
        assert!(status.is_success(), "WebDriver {method} {path}: {status} {v}");
        v["value"].clone()
    }
}

impl Browser<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    pub async fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    pub async fn url(&self) -> String {
        self.call("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn title(&self) -> String {
        self.call("GET", "/title", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self
            .call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_string())))
            .collect()
    }

    pub async fn find(&self, css: &str) -> Element {
        let mut all = self.find_all(css).await;
        assert!(
            !all.is_empty(),
            "no element {css} on {}: {}",
            self.url().await,
            self.call(
                "POST",
                "/elements",
                Some(json!({"using": "css selector", "value": css}))
            )
            .await
        );
        all.swap_remove(0)
    }

    pub async fn click(&self, e: &Element) {
        self.call("POST", &format!("/element/{}/click", e.0), None).await;
    }

    pub async fn type_into(&self, e: &Element, text: &str) {
        self.call("POST", &format!("/element/{}/clear", e.0), None).await;
        self.call(
            "POST",
            &format!("/element/{}/value", e.0),
            Some(json!({ "text": text })),
        )
        .await;
    }

    pub async fn text(&self, e: &Element) -> String {
        self.call("GET", &format!("/element/{}/text", e.0), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The page's text.
    pub async fn body_text(&self) -> String {
        let body = self.find("body").await;
        self.text(&body).await
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": args})))
            .await
    }

    /// Runs `script` with a callback as its last argument; the value passed to it.
    pub async fn run_async(&self, script: &str, args: Value) -> Value {
        self.call("POST", "/execute/async", Some(json!({"script": script, "args": args})))
            .await
    }

    pub async fn cookie(&self, name: &str) -> Option<String> {
        let all = self.call("GET", "/cookie", None).await;
        all.as_array()?
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["value"].as_str())
            .map(str::to_string)
    }

    /// The browser console's entries since the last call, as (level, message).
    pub async fn console(&self) -> Vec<(String, String)> {
        let v = self.call("POST", "/se/log", Some(json!({"type": "browser"}))).await;
        v.as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                (
                    e["level"].as_str().unwrap_or("").to_string(),
                    e["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Writes a PNG of the viewport under `target/browser/`.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let v = self.call("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_default())
            .expect("a base64 screenshot");
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Waits until `css` matches on the page (after a navigation the page loads
    /// before WebDriver answers; redirects through other sites may take longer).
    pub async fn wait_for(&self, css: &str) -> Element {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(e) = self.find_all(css).await.into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "{css} did not appear on {} ({})",
                self.url().await,
                self.body_text().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `css` no longer matches (the page it was on has been left).
    pub async fn wait_gone(&self, css: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.find_all(css).await.is_empty() {
            assert!(Instant::now() < deadline, "{css} is still on {}", self.url().await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn quit(self) {
        self.driver
            .call("DELETE", &format!("/session/{}", self.session), None)
            .await;
    }
}
