//! The web view in a real browser: headless Chromium over WebDriver, a real
//! OpenID provider (`oidc-provider`, run with Node), and axe-core for
//! accessibility. Screenshots go to `target/browser/` for review.

use super::federation::as_client;
use super::web::{site_with, Site};
use super::webdriver::{free_port, tools, Browser, Driver, Process, Tools};
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};

const CLIENT_ID: &str = "pennine-hub";
const CLIENT_SECRET: &str = "browser-test-secret-not-for-use";

/// Starts the OpenID provider on `port`, for a hub at `hub_base`.
fn identity_provider(tools: &Tools, port: u16, hub_base: &str) -> Process {
    let mut child = Command::new("node")
        .arg(tools.node_modules.join("../oidc-provider.mjs"))
        .arg(port.to_string())
        .arg(CLIENT_ID)
        .arg(CLIENT_SECRET)
        .arg(format!("{hub_base}/app/login/oidc/callback"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("node starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let process = Process(child);
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("ready ") => break,
            Some(Ok(_)) => {}
            _ => panic!("the OpenID provider did not start"),
        }
    }
    // Keep reading its output so that it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    process
}

/// The page's serious and critical accessibility violations, by axe-core.
async fn accessibility(b: &Browser<'_>, axe: &str) -> Vec<Value> {
    b.run(&format!("{axe}\nreturn true;"), json!([])).await;
    let v = b
        .run_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, {resultTypes: ['violations']})
                .then(r => done(r.violations.map(v => ({id: v.id, impact: v.impact, help: v.help,
                                                       targets: v.nodes.map(n => n.target.join(' '))}))))
                .catch(e => done([{id: 'axe-error', impact: 'critical', help: String(e)}]));",
            json!([]),
        )
        .await;
    v.as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|x| matches!(x["impact"].as_str(), Some("serious" | "critical")))
        .collect()
}

/// Checks the open page: no console errors, no serious accessibility problem; a screenshot.
async fn check_page(b: &Browser<'_>, axe: &str, name: &str) {
    let errors: Vec<(String, String)> = b
        .console()
        .await
        .into_iter()
        .filter(|(level, _)| level == "SEVERE")
        .collect();
    assert!(errors.is_empty(), "{name}: console errors {errors:?}");
    let violations = accessibility(b, axe).await;
    assert!(violations.is_empty(), "{name}: accessibility {violations:#?}");
    b.screenshot(name).await;
}

async fn sign_in_locally(b: &Browser<'_>, base: &str, user: &str, password: &str) {
    b.goto(&format!("{base}/app/login")).await;
    let name = b.find("#username").await;
    b.type_into(&name, user).await;
    let pw = b.find("#password").await;
    b.type_into(&pw, password).await;
    let submit = b.find("form.login button[type=submit]").await;
    b.click(&submit).await;
}

/// Signs in at the OpenID provider's own pages (login, then consent) as `account`.
async fn sign_in_at_provider(b: &Browser<'_>, base: &str, account: &str) {
    b.goto(&format!("{base}/app/login")).await;
    let button = b.find("#oidc").await;
    b.click(&button).await;
    let login = b.wait_for("input[name=login]").await;
    assert!(b.url().await.starts_with("http://127.0.0.1:"), "at the provider");
    b.type_into(&login, account).await;
    let pw = b.find("input[name=password]").await;
    b.type_into(&pw, "any").await;
    let submit = b.find("button[type=submit]").await;
    b.click(&submit).await;
    // The consent page ("Authorize"), then back to the hub. The login page's own button
    // matches the same selector until the browser has left it: wait for that first.
    b.wait_gone("input[name=login]").await;
    let consent = b.wait_for("button[type=submit]").await;
    b.click(&consent).await;
    b.wait_for("header.top").await;
    // The provider's own pages log their own troubles (fonts from the internet); drop them.
    b.console().await;
}

async fn status_with_session(site: &Site, session: &str, path: &str) -> u16 {
    site.page(Some(session), path).await.0
}

#[tokio::test]
async fn the_web_view_works_in_a_real_browser_with_local_and_openid_sign_in() {
    let Some(tools) = tools() else { return };
    let idp_port = free_port();
    let issuer = format!("http://127.0.0.1:{idp_port}");
    let site = site_with(|c| {
        c.oidc = Some(pennine::config::OidcConfig {
            issuer: issuer.clone(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: "openid profile".into(),
            roles_claim: "roles".into(),
            region_claim: "region".into(),
            provider_claim: "provider".into(),
            label: "Sign in with the test NHS directory".into(),
            ca: None,
        })
    })
    .await;
    let base = site.base.clone();
    let _idp = identity_provider(&tools, idp_port, &base);
    let axe = std::fs::read_to_string(tools.node_modules.join("axe-core/axe.min.js")).unwrap();
    let driver = Driver::start(&tools).await;
    let period = "periodStart=2025&periodEnd=2025";

    // What the gate released to a partner, to compare the chart with.
    let partner = as_client(site.certs.path(), &base, "partner").await;
    let benchmark: Value = partner
        .get(format!("{base}/fhir/Measure/chc-copd/$benchmark?{period}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    // --- A clinician with a local account.
    let b = driver.browser(&tools).await;
    b.goto(&format!("{base}/app/login")).await;
    check_page(&b, &axe, "login").await;
    sign_in_locally(&b, &base, "dr.nwc", "correct horse battery").await;
    // The sign-in page has a heading too: first leave it.
    b.wait_gone("form.login").await;
    b.wait_for("main h1").await;
    assert!(b.url().await.ends_with("/app/"), "{}", b.url().await);
    assert!(b.body_text().await.contains("clinician at RBL"));
    let session = b.cookie("pennine_session").await.expect("a session cookie");

    for (path, name) in [
        (format!("/app/?{period}"), "pathways"),
        (format!("/app/pathways/chc-copd?{period}"), "pathway-copd"),
        (format!("/app/pathways/chc-arld?{period}"), "pathway-arld"),
        (format!("/app/pathways/chc-epilepsy?{period}"), "pathway-epilepsy"),
        (format!("/app/providers/RBL?{period}"), "provider-RBL"),
        ("/app/quality".to_string(), "quality"),
        ("/transparency".to_string(), "transparency"),
    ] {
        b.goto(&format!("{base}{path}")).await;
        let h1 = b.wait_for("main h1").await;
        let heading = b.text(&h1).await;
        assert!(
            !heading.contains("Not allowed") && !heading.contains("could not"),
            "{path}: {heading}"
        );
        assert!(b.title().await.ends_with("· Pennine"), "{path}: {}", b.title().await);
        check_page(&b, &axe, name).await;
    }

    // The funnel plot, as the browser lays it out: one point per released provider,
    // at the expected deaths and ratio $benchmark gives, placed in that order.
    b.goto(&format!("{base}/app/pathways/chc-copd?{period}")).await;
    let points = b
        .run(
            "return Array.from(document.querySelectorAll('#funnel [data-provider]')).map(e => {
                 const r = e.getBoundingClientRect();
                 return {provider: e.dataset.provider, expected: Number(e.dataset.expected),
                         ratio: Number(e.dataset.ratio), x: r.x + r.width / 2, y: r.y + r.height / 2,
                         visible: r.width > 0 && r.height > 0};
             });",
            json!([]),
        )
        .await;
    let points = points.as_array().unwrap();
    let providers = benchmark["providers"].as_array().unwrap();
    let released: Vec<&Value> = providers.iter().filter(|p| p["withheld"].is_null()).collect();
    let withheld: Vec<&str> = providers
        .iter()
        .filter(|p| !p["withheld"].is_null())
        .map(|p| p["provider"].as_str().unwrap())
        .collect();
    assert!(!released.is_empty() && !withheld.is_empty(), "{benchmark}");
    assert_eq!(points.len(), released.len(), "{points:?}");
    for r in &released {
        let p = points
            .iter()
            .find(|p| p["provider"] == r["provider"])
            .unwrap_or_else(|| panic!("{} not drawn", r["provider"]));
        assert_eq!(p["expected"].as_f64(), r["expected"].as_f64(), "{p}");
        assert_eq!(p["ratio"].as_f64(), r["smr"].as_f64(), "{p}");
        assert_eq!(p["visible"], true, "{p}");
    }
    for w in &withheld {
        assert!(!points.iter().any(|p| p["provider"] == *w), "{w} drawn");
    }
    // Further right means more expected deaths; higher up means a higher ratio.
    for a in points {
        for c in points {
            let (ea, ec) = (a["expected"].as_f64().unwrap(), c["expected"].as_f64().unwrap());
            let (ra, rc) = (a["ratio"].as_f64().unwrap(), c["ratio"].as_f64().unwrap());
            if ea + 1e-9 < ec {
                assert!(a["x"].as_f64() < c["x"].as_f64(), "x order {a} {c}");
            }
            if ra + 1e-9 < rc {
                assert!(a["y"].as_f64() > c["y"].as_f64(), "y order {a} {c}");
            }
        }
    }
    // Withheld providers are listed with the reason.
    for w in &withheld {
        let rows = b.find_all(&format!("tr.withheld[data-provider='{w}']")).await;
        assert_eq!(rows.len(), 1, "{w} not listed");
    }

    // Another region's provider report: the page says no, and the answer is a 403.
    b.goto(&format!("{base}/app/providers/RTD?{period}")).await;
    let h1 = b.wait_for("main h1").await;
    assert_eq!(b.text(&h1).await, "Not allowed");
    assert!(!b.body_text().await.contains("Provider report"));
    assert_eq!(
        status_with_session(&site, &session, &format!("/app/providers/RTD?{period}")).await,
        403
    );

    // The transparency page lists the question just asked, by role and organisation.
    b.goto(&format!("{base}/transparency")).await;
    // (The header names whoever is signed in; the log itself must not.)
    let main = b.find("main").await;
    let text = b.text(&main).await;
    assert!(text.contains("clinician at RBL (web view)"), "{text}");
    assert!(
        text.contains(&format!("Measure/chc-copd/$benchmark?{period}")),
        "{text}"
    );
    assert!(!text.contains("dr.nwc"));

    // Signing out ends the session: its cookie is refused afterwards.
    let out = b.find("form[action='/app/logout'] button").await;
    b.click(&out).await;
    b.wait_for("#username").await;
    assert_eq!(status_with_session(&site, &session, "/app/quality").await, 303);
    b.quit().await;

    // --- A clinician signed in by the organisation's identity provider.
    let b = driver.browser(&tools).await;
    sign_in_at_provider(&b, &base, "dr.yh").await;
    assert!(b.url().await.starts_with(&base), "{}", b.url().await);
    b.goto(&b.url().await).await;
    b.wait_for("main h1").await;
    let text = b.body_text().await;
    assert!(
        text.contains("Dr Grace Marsh") && text.contains("clinician at RAE"),
        "{text}"
    );
    check_page(&b, &axe, "oidc-signed-in").await;
    b.goto(&format!("{base}/app/providers/RAE?{period}")).await;
    let h1 = b.wait_for("main h1").await;
    assert!(b.text(&h1).await.contains("RAE"));
    b.goto(&format!("{base}/app/providers/RBL?{period}")).await;
    let h1 = b.wait_for("main h1").await;
    assert_eq!(b.text(&h1).await, "Not allowed");
    b.quit().await;

    // --- Someone the provider knows but who has no Pennine role is not let in.
    let b = driver.browser(&tools).await;
    sign_in_at_provider(&b, &base, "porter").await;
    let alert = b.wait_for("p.notice.error").await;
    assert!(
        b.text(&alert).await.contains("no Pennine role"),
        "{}",
        b.body_text().await
    );
    assert!(b.cookie("pennine_session").await.is_none());
    check_page(&b, &axe, "oidc-no-role").await;
    b.quit().await;

    // Each sign-in through the provider is in the audit trail, with its issuer.
    let admin = as_client(site.certs.path(), &base, "admin").await;
    let events = admin
        .get(format!("{base}/fhir/AuditEvent?_count=500"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains(&format!("person:Dr Grace Marsh (clinician at RAE, {issuer})")));
    assert!(events.contains("no Pennine role") || events.contains("do not give a Pennine role"));
    site.hub.stop().await;
}

#[tokio::test]
async fn forged_openid_answers_are_refused() {
    // No provider runs: the hub's checks of the answer come before any call to it.
    let site = site_with(|c| {
        c.oidc = Some(pennine::config::OidcConfig {
            issuer: format!("http://127.0.0.1:{}", free_port()),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
            scopes: "openid".into(),
            roles_claim: "roles".into(),
            region_claim: "region".into(),
            provider_claim: "provider".into(),
            label: "Sign in with the test NHS directory".into(),
            ca: None,
        })
    })
    .await;
    let cb = format!("{}/app/login/oidc/callback", site.base);
    // An answer with a state this browser never started (login CSRF), with or without a cookie.
    for (cookie, query) in [
        (None, "?code=stolen&state=abc"),
        (Some("pennine_oidc=abc"), "?code=stolen&state=abc"),
        (Some("pennine_oidc=abc"), "?code=stolen&state=abd"),
        (None, "?code=stolen"),
    ] {
        let mut req = site.http.get(format!("{cb}{query}"));
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 400, "{cookie:?} {query}");
        assert!(res
            .headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().starts_with("pennine_session=")));
    }
    // The provider cannot be reached: a clear page, not an error from deep inside.
    let res = site
        .http
        .get(format!("{}/app/login/oidc", site.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.text().await.unwrap().contains("cannot be reached"));
    site.hub.stop().await;
}
