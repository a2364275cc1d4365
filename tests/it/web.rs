//! The hub's web view through HTTP: sign-in, sessions, CSRF, what each person may
//! open, and that the charts carry exactly what `$benchmark` released.

use super::federation::{as_client, node, tls, OPEN, REGIONS};
use pennine::federation::Disclosure;
use reqwest::redirect::Policy;
use serde_json::Value;

/// The gate for these tests: exact counts, but small cells withheld.
const GATE: Disclosure = Disclosure {
    min_cell: 5,
    rounding: 1,
    noise: 0,
    min_regions: 1,
};

pub struct Site {
    pub hub: pennine::startup::RunningHub,
    pub base: String,
    pub http: reqwest::Client,
    pub certs: tempfile::TempDir,
    _nodes: Vec<super::federation::Node>,
    _dir: tempfile::TempDir,
}

/// Four regions of SUS episodes (one region small enough to be withheld) and a hub
/// with two local accounts: a clinician at nwc's RBL and an analyst in nenc.
async fn site() -> Site {
    site_with(|_| {}).await
}

/// `site()` with more hub settings.
pub async fn site_with(configure: impl FnOnce(&mut pennine::config::HubConfig)) -> Site {
    let certs = tempfile::tempdir().unwrap();
    pennine::tls::dev_certs(certs.path(), &REGIONS, &[]).unwrap();
    let mut nodes = Vec::new();
    for r in REGIONS {
        nodes.push(node(r, certs.path(), OPEN).await);
    }
    let sizes = [1500, 1000, 30, 1200];
    for (i, n) in nodes.iter().enumerate() {
        let root = n.node.base_url();
        let client = as_client(certs.path(), &root, "tester").await;
        let res = client
            .post(format!("{root}/feeds/csv/sus-apc"))
            .header("content-type", "text/csv")
            .body(super::pathways::region_extract(i, sizes[i]))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    let dir = tempfile::tempdir().unwrap();
    let clients = super::helpers::write_clients(dir.path(), "nenc");
    let hash = pennine::auth::users::hash_password("correct horse battery").unwrap();
    let mut text = std::fs::read_to_string(&clients).unwrap();
    text.push_str(&format!(
        "[[user]]\nname = \"dr.nwc\"\npassword_hash = \"{hash}\"\nroles = [\"clinician\"]\nregion = \"nwc\"\nprovider = \"RBL\"\n\
         [[user]]\nname = \"ana\"\npassword_hash = \"{hash}\"\nroles = [\"analyst\"]\nregion = \"nenc\"\n"
    ));
    std::fs::write(&clients, text).unwrap();
    let mut config = pennine::config::HubConfig::local(
        dir.path(),
        nodes
            .iter()
            .zip(REGIONS)
            .map(|(n, r)| pennine::config::parse_node(&format!("{r}={}", n.node.base_url())).unwrap())
            .collect(),
        Some(pennine::tls::TlsFiles::in_dir(certs.path(), "hub")),
    );
    config.disclosure = GATE;
    config.clients = Some(clients);
    config.aggregate_rate = 10_000;
    configure(&mut config);
    let hub = pennine::startup::start_hub(config).await.expect("hub starts");
    let base = hub.base_url();
    let http = tls(certs.path())().redirect(Policy::none()).build().unwrap();
    Site {
        hub,
        base,
        http,
        certs,
        _nodes: nodes,
        _dir: dir,
    }
}

/// The value of cookie `name` set by a response.
fn set_cookie(res: &reqwest::Response, name: &str) -> Option<(String, String)> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| {
            let value = c[name.len() + 1..].split(';').next().unwrap_or("").to_string();
            (value, c.to_string())
        })
}

fn hidden(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_string()
}

impl Site {
    /// Signs in through the form; the session cookie's value.
    async fn sign_in(&self, user: &str, password: &str) -> Result<String, (u16, String)> {
        let form = self.http.get(format!("{}/app/login", self.base)).send().await.unwrap();
        let (login_cookie, attrs) = set_cookie(&form, "pennine_login").unwrap();
        assert!(attrs.contains("HttpOnly") && attrs.contains("Secure"), "{attrs}");
        let html = form.text().await.unwrap();
        let csrf = hidden(&html, "csrf");
        let res = self
            .http
            .post(format!("{}/app/login", self.base))
            .header("cookie", format!("pennine_login={login_cookie}"))
            .form(&[
                ("username", user),
                ("password", password),
                ("csrf", csrf.as_str()),
                ("next", "/app/"),
            ])
            .send()
            .await
            .unwrap();
        match set_cookie(&res, "pennine_session") {
            Some((id, attrs)) if res.status() == 303 => {
                for a in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
                    assert!(attrs.contains(a), "{attrs}");
                }
                Ok(id)
            }
            _ => Err((res.status().as_u16(), res.text().await.unwrap())),
        }
    }

    pub async fn page(&self, session: Option<&str>, path: &str) -> (u16, String, reqwest::header::HeaderMap) {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(s) = session {
            req = req.header("cookie", format!("pennine_session={s}"));
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        (status, res.text().await.unwrap(), headers)
    }
}

/// Every `<circle ... data-provider=...>` of the funnel: (provider, expected, ratio).
pub fn funnel_points(html: &str) -> Vec<(String, f64, f64)> {
    let svg = &html[html.find("<svg class=\"chart\" id=\"funnel\"").expect("a funnel plot")..];
    let svg = &svg[..svg.find("</svg>").unwrap()];
    svg.split("<circle")
        .skip(1)
        .map(|c| {
            let attr = |k: &str| {
                let at = c.find(&format!("{k}=\"")).unwrap() + k.len() + 2;
                c[at..at + c[at..].find('"').unwrap()].to_string()
            };
            (
                attr("data-provider"),
                attr("data-expected").parse().unwrap(),
                attr("data-ratio").parse().unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn people_sign_in_see_released_figures_only_and_forms_resist_forgery() {
    let site = site().await;

    // Without a session every page sends the browser to sign in, and says where it was going.
    let (status, _, headers) = site.page(None, "/app/pathways/chc-copd?periodStart=2025").await;
    assert_eq!(status, 303);
    assert_eq!(
        headers["location"],
        "/app/login?next=%2Fapp%2Fpathways%2Fchc-copd%3FperiodStart%3D2025"
    );

    // A forged sign-in (no form token) is refused, whatever the password.
    let res = site
        .http
        .post(format!("{}/app/login", site.base))
        .form(&[
            ("username", "dr.nwc"),
            ("password", "correct horse battery"),
            ("csrf", "x"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(set_cookie(&res, "pennine_session").is_none());

    // A wrong password is refused with a page, not a session.
    let (status, html) = site.sign_in("dr.nwc", "wrong").await.unwrap_err();
    assert_eq!(status, 401);
    assert!(html.contains("do not match"), "{html}");

    let clinician = site.sign_in("dr.nwc", "correct horse battery").await.unwrap();
    let (status, html, headers) = site
        .page(Some(&clinician), "/app/?periodStart=2025&periodEnd=2025")
        .await;
    assert_eq!(status, 200, "{html}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    for p in ["chc-copd", "chc-arld", "chc-epilepsy"] {
        assert!(html.contains(&format!("/app/pathways/{p}?")), "{p}");
    }

    // The funnel plot draws exactly the providers $benchmark released, where it places them.
    let partner = as_client(site.certs.path(), &site.base, "partner").await;
    let benchmark: Value = partner
        .get(format!(
            "{}/fhir/Measure/chc-copd/$benchmark?periodStart=2025&periodEnd=2025",
            site.base
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, html, _) = site
        .page(
            Some(&clinician),
            "/app/pathways/chc-copd?periodStart=2025&periodEnd=2025",
        )
        .await;
    assert_eq!(status, 200, "{html}");
    let mut drawn = funnel_points(&html);
    drawn.sort_by(|a, b| a.0.cmp(&b.0));
    let mut released: Vec<(String, f64, f64)> = benchmark["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["withheld"].is_null())
        .map(|p| {
            (
                p["provider"].as_str().unwrap().to_string(),
                p["expected"].as_f64().unwrap(),
                p["smr"].as_f64().unwrap(),
            )
        })
        .collect();
    released.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(!released.is_empty());
    assert_eq!(drawn, released);
    // Withheld providers are listed with the reason, never drawn: gm's cohorts are too small.
    let withheld: Vec<&str> = benchmark["providers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["withheld"].is_null())
        .map(|p| p["provider"].as_str().unwrap())
        .collect();
    assert!(!withheld.is_empty(), "{benchmark}");
    for w in &withheld {
        assert!(!drawn.iter().any(|d| d.0 == *w), "{w} drawn");
        assert!(
            html.contains(&format!("<tr class=\"withheld\" data-provider=\"{w}\"")),
            "{w} not listed"
        );
    }
    // The clinician's own provider is highlighted.
    assert!(html.contains("data-provider=\"RBL\"") && html.contains("own"), "RBL");
    assert!(html.contains("<title id=\"funnel-title\">") && html.contains("<desc id=\"funnel-desc\">"));
    // The CSV download is the released provider table.
    let (status, csv, headers) = site
        .page(
            Some(&clinician),
            "/app/pathways/chc-copd/benchmark.csv?periodStart=2025&periodEnd=2025",
        )
        .await;
    assert_eq!(status, 200);
    assert!(headers["content-disposition"].to_str().unwrap().contains("attachment"));
    assert!(csv.starts_with("provider,region"), "{csv}");

    // Own region's provider report: yes; another region's: 403 (not a redirect, not the figures).
    let (status, html, _) = site.page(Some(&clinician), "/app/providers/RBL?periodStart=2025").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Provider report: RBL"));
    let (status, html, _) = site.page(Some(&clinician), "/app/providers/RTD?periodStart=2025").await;
    assert_eq!(status, 403, "{html}");
    assert!(!html.contains("Provider report"));
    // The analyst of nenc may open RTD (nenc) but not RBL (nwc).
    let analyst = site.sign_in("ana", "correct horse battery").await.unwrap();
    assert_eq!(
        site.page(Some(&analyst), "/app/providers/RTD?periodStart=2025").await.0,
        200
    );
    assert_eq!(
        site.page(Some(&analyst), "/app/providers/RBL?periodStart=2025").await.0,
        403
    );
    // Quality figures.
    let (status, html, _) = site.page(Some(&clinician), "/app/quality").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("Encounter"), "{html}");

    // Transparency is public and lists the question just asked, with role and organisation
    // but never the person's name.
    let (status, html, _) = site.page(None, "/transparency").await;
    assert_eq!(status, 200);
    assert!(html.contains("clinician at RBL (web view)"), "{html}");
    assert!(
        html.contains("demo-partner") || html.contains("partner (partner)"),
        "{html}"
    );
    assert!(!html.contains("dr.nwc"), "a person's name on the public page");
    assert!(
        html.contains("benchmark: Measure/chc-copd/$benchmark?periodStart=2025"),
        "{html}"
    );

    // Sign-out needs the session's form token; a forged post leaves the session alive.
    let (_, html, _) = site.page(Some(&clinician), "/app/quality").await;
    let csrf = hidden(&html, "csrf");
    let res = site
        .http
        .post(format!("{}/app/logout", site.base))
        .header("cookie", format!("pennine_session={clinician}"))
        .form(&[("csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    assert_eq!(site.page(Some(&clinician), "/app/quality").await.0, 200);
    let res = site
        .http
        .post(format!("{}/app/logout", site.base))
        .header("cookie", format!("pennine_session={clinician}"))
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    // The signed-out session's cookie is refused from then on.
    assert_eq!(site.page(Some(&clinician), "/app/quality").await.0, 303);

    // A one-time link signs in once.
    let link = site.hub.sign_in_link("ana").unwrap();
    let res = site.http.get(&link).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert!(set_cookie(&res, "pennine_session").is_some());
    let again = site.http.get(&link).send().await.unwrap();
    assert_eq!(again.status(), 401);

    // Every sign-in, failure and page view is in the hub's audit trail.
    let admin = as_client(site.certs.path(), &site.base, "admin").await;
    let events: Value = admin
        .get(format!("{}/fhir/AuditEvent?_count=500", site.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = events.to_string();
    for needle in [
        "\"code\":\"sign-in\"",
        "refused: wrong name or password",
        "\"code\":\"page\"",
        "\"code\":\"sign-out\"",
        "person:dr.nwc",
    ] {
        assert!(text.contains(needle), "{needle} not audited");
    }
    site.hub.stop().await;
}

#[tokio::test]
async fn repeated_failures_lock_an_account() {
    let site = site().await;
    for _ in 0..pennine::auth::users::MAX_FAILURES {
        assert!(site.sign_in("ana", "guess").await.is_err());
    }
    let (status, html) = site.sign_in("ana", "correct horse battery").await.unwrap_err();
    assert_eq!(status, 401);
    assert!(html.contains("locked"), "{html}");
    site.hub.stop().await;
}

/// The released region × month table of a hub MeasureReport's admissions group:
/// (region, month) → count or None (withheld), and the margins: region and month
/// rows → count or None.
type Table = std::collections::BTreeMap<(String, String), Option<u64>>;
type Margin = std::collections::BTreeMap<String, Option<u64>>;

fn region_month_table(report: &Value) -> (Table, Margin, Margin) {
    let admissions = report["group"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["code"]["coding"][0]["code"] == "admissions")
        .unwrap();
    let count = |x: &Value| -> Option<u64> {
        x["population"]
            .as_array()?
            .iter()
            .find(|p| p["code"]["coding"][0]["code"] == "numerator")?["count"]
            .as_u64()
    };
    let (mut table, mut regions, mut months) = (Table::new(), Margin::new(), Margin::new());
    for st in admissions["stratifier"].as_array().unwrap() {
        let codes: Vec<&str> = st["code"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["coding"][0]["code"].as_str().unwrap())
            .collect();
        for x in st["stratum"].as_array().unwrap() {
            match codes.as_slice() {
                ["region", "month"] => {
                    let part = |i: usize| x["component"][i]["value"]["text"].as_str().unwrap().to_string();
                    table.insert((part(0), part(1)), count(x));
                }
                ["region"] => {
                    regions.insert(x["value"]["text"].as_str().unwrap().to_string(), count(x));
                }
                ["month"] => {
                    months.insert(x["value"]["text"].as_str().unwrap().to_string(), count(x));
                }
                _ => {}
            }
        }
    }
    (table, regions, months)
}

#[tokio::test]
async fn monthly_admissions_per_region_cannot_be_differenced_from_their_totals() {
    let site = site().await;
    let partner = as_client(site.certs.path(), &site.base, "partner").await;
    let mut withheld_somewhere = 0;
    for pathway in ["chc-copd", "chc-arld", "chc-epilepsy"] {
        let report: Value = partner
            .get(format!(
                "{}/fhir/Measure/{pathway}/$evaluate-measure?periodStart=2025&periodEnd=2025",
                site.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (table, regions, months) = region_month_table(&report);
        assert!(!table.is_empty(), "{pathway}: no region × month table");
        withheld_somewhere += table.values().filter(|v| v.is_none()).count();
        // A released margin never has exactly one withheld cell beside it: that cell
        // would be the margin less the others. (The gate here is exact, so sums are exact.)
        for (region, total) in &regions {
            let line: Vec<Option<u64>> = table
                .iter()
                .filter(|((r, _), _)| r == region)
                .map(|(_, v)| *v)
                .collect();
            let withheld = line.iter().filter(|v| v.is_none()).count();
            if let Some(total) = total {
                assert_ne!(withheld, 1, "{pathway}: region {region} {line:?}");
                if withheld == 0 {
                    assert_eq!(line.iter().flatten().sum::<u64>(), *total, "{pathway}: {region}");
                }
            }
        }
        for (month, total) in &months {
            let line: Vec<Option<u64>> = table.iter().filter(|((_, m), _)| m == month).map(|(_, v)| *v).collect();
            let withheld = line.iter().filter(|v| v.is_none()).count();
            if let Some(total) = total {
                assert_ne!(withheld, 1, "{pathway}: month {month} {line:?}");
                if withheld == 0 {
                    assert_eq!(line.iter().flatten().sum::<u64>(), *total, "{pathway}: {month}");
                }
            }
        }
        // The page draws each region's released months, and withheld months as gaps.
        let clinician = site.sign_in("dr.nwc", "correct horse battery").await.unwrap();
        let (status, html, _) = site
            .page(
                Some(&clinician),
                &format!("/app/pathways/{pathway}?periodStart=2025&periodEnd=2025"),
            )
            .await;
        assert_eq!(status, 200);
        for ((region, month), count) in &table {
            let svg = &html[html
                .find(&format!("<svg class=\"chart\" id=\"run-{region}\""))
                .unwrap_or_else(|| panic!("no run chart for {region}"))..];
            let svg = &svg[..svg.find("</svg>").unwrap()];
            match count {
                Some(n) => assert!(
                    svg.contains(&format!("data-month=\"{month}\" data-count=\"{n}\"")),
                    "{pathway} {region} {month}"
                ),
                None => assert!(
                    svg.contains(&format!("data-month=\"{month}\" data-withheld=\"true\"")),
                    "{pathway} {region} {month}"
                ),
            }
        }
    }
    // gm's 30 episodes spread over twelve months: small cells, withheld.
    assert!(withheld_somewhere > 0);
    site.hub.stop().await;
}
