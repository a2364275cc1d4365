//! The access table: every route of a node and of the hub, with the rule that
//! guards it. Routes are registered only through this table
//! (`http::access::route`), so a route without an entry cannot exist, and the
//! access-matrix test walks every entry with every kind of token.

use super::clients::Role;
use super::scopes::{Perms, Scope};
use super::tokens::Principal;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No token: metadata, health, readiness, SMART configuration, the token endpoint.
    Public,
    /// The hub's client certificate, checked by the handler (no token).
    HubCertificate,
    /// A FHIR interaction on the path's `{type}` (or, without one, on every type).
    Read,
    Search,
    History,
    Create,
    Update,
    Delete,
    /// Batch/transaction: writes needed here, and each entry is checked by the handler.
    Bundle,
    /// `ViewDefinition/$run`: region-local rows.
    ViewRun,
    /// The hub's `$aggregate`.
    Aggregate,
    /// `Measure/{id}/$evaluate-measure` and `$regress`: a pathway or a model over a region's
    /// data (its analysts, at the node) or pooled through the gate (analysts and partners, at the hub).
    EvaluateMeasure,
    /// A search at the hub: `_summary=count` for partners, `AuditEvent` for administrators.
    HubSearch,
    /// Feeds that are not FHIR (HL7 v2, CSV): the `pennine/feed` operation, in the client's region.
    Feed,
    /// The dead-letter store of a node's feeds: administrators (they hold raw patient data).
    FeedAdmin,
    /// `$validate`: anyone who may write or read the type, in the client's region.
    Validate,
    /// A node's data-quality figures: the region's administrators and analysts (aggregates only;
    /// vendors read nothing on a node, these figures included).
    Quality,
    /// The hub's data-quality figures of every region: administrators, analysts and partners.
    HubQuality,
    /// A page of the hub's web view for a signed-in person (a session cookie, not a
    /// token): the handler resolves the session and asks `decide_page`; without a
    /// session it sends the browser to sign in.
    Page,
}

/// One route: method, actix path pattern, rule.
#[derive(Debug, Clone, Copy)]
pub struct RouteRule {
    pub method: &'static str,
    pub path: &'static str,
    pub rule: Rule,
}

const fn r(method: &'static str, path: &'static str, rule: Rule) -> RouteRule {
    RouteRule { method, path, rule }
}

/// A node's routes, in registration order (which is also match order).
pub const NODE_ROUTES: &[RouteRule] = &[
    r("GET", "/health", Rule::Public),
    r("GET", "/ready", Rule::Public),
    r("GET", "/.well-known/smart-configuration", Rule::Public),
    r("GET", "/fhir/.well-known/smart-configuration", Rule::Public),
    r("POST", "/auth/token", Rule::Public),
    r("POST", "/federation/aggregate", Rule::HubCertificate),
    r("POST", "/federation/measure", Rule::HubCertificate),
    r("GET", "/federation/quality", Rule::HubCertificate),
    r("GET", "/federation/count/{type}", Rule::HubCertificate),
    r("POST", "/federation/regress", Rule::HubCertificate),
    r("POST", "/fhir/ViewDefinition/$run", Rule::ViewRun),
    r("POST", "/fhir/$regress", Rule::EvaluateMeasure),
    r("GET", "/fhir/Measure/{id}/$evaluate-measure", Rule::EvaluateMeasure),
    r("POST", "/fhir/Measure/{id}/$evaluate-measure", Rule::EvaluateMeasure),
    r("POST", "/fhir", Rule::Bundle),
    r("GET", "/fhir", Rule::Search),
    r("POST", "/fhir/", Rule::Bundle),
    r("GET", "/fhir/", Rule::Search),
    r("GET", "/fhir/metadata", Rule::Public),
    r("GET", "/fhir/_history", Rule::History),
    r("GET", "/fhir/{type}", Rule::Search),
    r("POST", "/fhir/{type}", Rule::Create),
    r("PUT", "/fhir/{type}", Rule::Update),
    r("DELETE", "/fhir/{type}", Rule::Delete),
    r("POST", "/fhir/{type}/_search", Rule::Search),
    r("POST", "/fhir/{type}/$validate", Rule::Validate),
    r("POST", "/fhir/{type}/{id}/$validate", Rule::Validate),
    r("GET", "/fhir/{type}/_history", Rule::History),
    r("GET", "/fhir/{type}/{id}", Rule::Read),
    r("PUT", "/fhir/{type}/{id}", Rule::Update),
    r("DELETE", "/fhir/{type}/{id}", Rule::Delete),
    r("PATCH", "/fhir/{type}/{id}", Rule::Update),
    r("GET", "/fhir/{type}/{id}/_history", Rule::History),
    r("GET", "/fhir/{type}/{id}/_history/{vid}", Rule::Read),
    r("POST", "/feeds/hl7v2", Rule::Feed),
    r("POST", "/feeds/csv/{mapping}", Rule::Feed),
    r("GET", "/feeds/dead-letters", Rule::FeedAdmin),
    r("GET", "/feeds/dead-letters/{id}", Rule::FeedAdmin),
    r("POST", "/feeds/dead-letters/{id}/$replay", Rule::FeedAdmin),
    r("GET", "/quality", Rule::Quality),
];

/// The hub's routes.
pub const HUB_ROUTES: &[RouteRule] = &[
    r("GET", "/health", Rule::Public),
    r("GET", "/ready", Rule::Public),
    r("GET", "/.well-known/smart-configuration", Rule::Public),
    r("GET", "/fhir/.well-known/smart-configuration", Rule::Public),
    r("POST", "/auth/token", Rule::Public),
    r("GET", "/fhir/metadata", Rule::Public),
    r("POST", "/fhir/$aggregate", Rule::Aggregate),
    r("POST", "/fhir/$regress", Rule::EvaluateMeasure),
    r("GET", "/fhir/Measure", Rule::Public),
    r("GET", "/fhir/Measure/{id}", Rule::Public),
    r("GET", "/fhir/Measure/{id}/$evaluate-measure", Rule::EvaluateMeasure),
    r("POST", "/fhir/Measure/{id}/$evaluate-measure", Rule::EvaluateMeasure),
    r("GET", "/fhir/Measure/{id}/$benchmark", Rule::EvaluateMeasure),
    r("POST", "/fhir/Measure/{id}/$benchmark", Rule::EvaluateMeasure),
    r("GET", "/quality", Rule::HubQuality),
    r("GET", "/fhir/{type}", Rule::HubSearch),
    r("GET", "/app", Rule::Public),
    r("GET", "/app/static/pennine.css", Rule::Public),
    r("GET", "/app/static/pennine.svg", Rule::Public),
    r("GET", "/app/login", Rule::Public),
    r("POST", "/app/login", Rule::Public),
    r("GET", "/app/login/once/{token}", Rule::Public),
    r("GET", "/app/login/oidc", Rule::Public),
    r("GET", "/app/login/oidc/callback", Rule::Public),
    r("POST", "/app/logout", Rule::Page),
    r("GET", "/app/", Rule::Page),
    r("GET", "/app/pathways/{measure}", Rule::Page),
    r("GET", "/app/pathways/{measure}/benchmark.csv", Rule::Page),
    r("GET", "/app/providers/{ods}", Rule::Page),
    r("GET", "/app/quality", Rule::Page),
    r("GET", "/transparency", Rule::Public),
];

/// What a page shows, for `decide_page`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind<'a> {
    /// The pathways, their funnel plots and the quality figures: every signed-in person.
    Results,
    /// One provider's report; the provider's region as the benchmark names it.
    Provider { region: &'a str },
}

/// Whether a signed-in person may see a page. Clinicians and analysts see every
/// region's pooled figures but only their own region's provider reports; partners
/// and administrators see every provider's.
pub fn decide_page(person: &super::Person, page: PageKind) -> Result<(), String> {
    if person.roles.is_empty() || person.roles.iter().all(|r| *r == Role::Vendor) {
        return Err("this account has no role that may use the web view".into());
    }
    match page {
        PageKind::Results => Ok(()),
        PageKind::Provider { region } => {
            if person.roles.iter().any(|r| matches!(r, Role::Partner | Role::Admin)) {
                return Ok(());
            }
            match &person.region {
                Some(mine) if mine.as_str() == region => Ok(()),
                _ => Err(format!(
                    "provider reports of region {region} are for that region's staff, partners and administrators"
                )),
            }
        }
    }
}

/// Which server is deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Server {
    Node { region: String },
    Hub,
}

/// What the decision needs to know about the request besides its route.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The `{type}` of the path, if any.
    pub rtype: Option<&'a str>,
    /// Whether the query asks `_summary=count`.
    pub summary_count: bool,
}

fn has_op(p: &Principal, op: &str) -> bool {
    p.scopes.iter().any(|s| matches!(s, Scope::Operation(o) if o == op))
}

fn allows(p: &Principal, rtype: Option<&str>, perm: Perms) -> bool {
    match rtype {
        Some(t) => p.scopes.iter().any(|s| s.allows(t, perm)),
        // System-wide interactions need the permission on every type.
        None => p
            .scopes
            .iter()
            .any(|s| matches!(s, Scope::Resource { rtype, perms } if rtype == "*" && perms.contains(perm))),
    }
}

/// Allows, or says why not (a 403). `Public` and `HubCertificate` never reach here.
pub fn decide(server: &Server, rule: Rule, p: &Principal, f: &Facts) -> Result<(), String> {
    let node_region = match server {
        Server::Node { region } => Some(region.as_str()),
        Server::Hub => None,
    };
    // Vendors and analysts act only in their own region, and never at the hub.
    let regional = p.roles.iter().any(|r| r.regional());
    let region_ok = || -> Result<(), String> {
        match (node_region, p.region.as_deref()) {
            (Some(node), Some(mine)) if node != mine => {
                Err(format!("client '{}' belongs to region {mine}, not {node}", p.client_id))
            }
            _ => Ok(()),
        }
    };
    let need = |ok: bool, what: &str| -> Result<(), String> {
        if ok {
            Ok(())
        } else {
            Err(format!("client '{}' ({}) may not {what}", p.client_id, p.roles_text()))
        }
    };
    let audit = f.rtype == Some("AuditEvent");
    match (server, rule) {
        (_, Rule::Public | Rule::HubCertificate) => Ok(()),
        (Server::Node { .. }, Rule::Read | Rule::Search | Rule::History) => {
            let perm = if rule == Rule::Read { Perms::R } else { Perms::S };
            need(
                allows(p, f.rtype, perm),
                &format!("read or search {}", f.rtype.unwrap_or("every type")),
            )?;
            // `system/*.rs` is not enough for the audit trail: it is for administrators.
            need(!audit || p.roles.contains(&Role::Admin), "read the audit trail")?;
            if !audit || regional {
                region_ok()?;
            }
            Ok(())
        }
        (Server::Node { .. }, Rule::Create | Rule::Update | Rule::Delete) => {
            let perm = match rule {
                Rule::Create => Perms::C,
                Rule::Update => Perms::U,
                _ => Perms::D,
            };
            need(!audit, "change audit records: they are append-only")?;
            need(
                allows(p, f.rtype, perm),
                &format!("write {}", f.rtype.unwrap_or("resources")),
            )?;
            region_ok()
        }
        (Server::Node { .. }, Rule::Bundle) => {
            let writes = p.scopes.iter().any(
                |s| matches!(s, Scope::Resource { perms, .. } if perms.contains(Perms::C) || perms.contains(Perms::U)),
            );
            let reads = p
                .scopes
                .iter()
                .any(|s| matches!(s, Scope::Resource { perms, .. } if perms.contains(Perms::R)));
            need(writes || reads, "send batches or transactions")?;
            region_ok()
        }
        (Server::Node { .. }, Rule::ViewRun) => {
            need(has_op(p, "run"), "run views over this region's rows")?;
            region_ok()
        }
        (Server::Node { .. }, Rule::EvaluateMeasure) => {
            need(has_op(p, "run"), "evaluate measures over this region's data")?;
            region_ok()
        }
        (Server::Node { .. }, Rule::Feed) => {
            need(has_op(p, "feed"), "send HL7 v2 or CSV feeds")?;
            region_ok()
        }
        (Server::Node { .. }, Rule::Validate) => {
            need(
                [Perms::C, Perms::U, Perms::R]
                    .into_iter()
                    .any(|perm| allows(p, f.rtype, perm)),
                &format!("validate {}", f.rtype.unwrap_or("resources")),
            )?;
            region_ok()
        }
        (Server::Node { .. }, Rule::FeedAdmin) => {
            need(p.roles.contains(&Role::Admin), "read or replay dead letters")?;
            if regional {
                region_ok()?;
            }
            Ok(())
        }
        (Server::Node { .. }, Rule::Quality) => {
            need(
                p.roles.iter().any(|r| matches!(r, Role::Admin | Role::Analyst)),
                "read this region's data-quality figures",
            )?;
            region_ok()
        }
        (Server::Hub, Rule::HubQuality) => need(
            p.roles
                .iter()
                .any(|r| matches!(r, Role::Admin | Role::Analyst | Role::Partner)),
            "read the regions' data-quality figures",
        ),
        (Server::Hub, Rule::Aggregate) => need(has_op(p, "aggregate"), "ask aggregate questions"),
        (Server::Hub, Rule::EvaluateMeasure) => need(
            has_op(p, "aggregate") || p.roles.contains(&Role::Analyst),
            "evaluate measures across the regions",
        ),
        (Server::Hub, Rule::HubSearch) if f.summary_count => need(has_op(p, "aggregate"), "ask federated counts"),
        (Server::Hub, Rule::HubSearch) if audit => need(
            p.roles.contains(&Role::Admin) && allows(p, Some("AuditEvent"), Perms::S),
            "read the audit trail",
        ),
        _ => Err(format!(
            "this route is not open to client '{}' ({})",
            p.client_id,
            p.roles_text()
        )),
    }
}

/// The permission a bundle entry's method needs.
pub fn entry_permission(method: &str) -> Option<Perms> {
    Some(match method {
        "GET" | "HEAD" => Perms::R,
        "POST" => Perms::C,
        "PUT" | "PATCH" => Perms::U,
        "DELETE" => Perms::D,
        _ => return None,
    })
}

/// Checks one entry of a batch or transaction (its method and request URL)
/// against the principal's scopes.
pub fn decide_entry(p: &Principal, method: &str, url: &str) -> Result<(), String> {
    let path = url.split('?').next().unwrap_or(url);
    let mut parts = path.trim_start_matches('/').split('/');
    let rtype = parts.next().unwrap_or_default();
    let has_id = parts.next().is_some_and(|id| !id.is_empty());
    if rtype == "AuditEvent" && method != "GET" {
        return Err("audit records are append-only".into());
    }
    if rtype == "AuditEvent" && !p.roles.contains(&Role::Admin) {
        return Err("the audit trail is for administrators".into());
    }
    let perm = match (entry_permission(method), has_id) {
        (Some(Perms::R), false) => Perms::S,
        (Some(perm), _) => perm,
        (None, _) => return Err(format!("unknown method {method}")),
    };
    if p.scopes.iter().any(|s| s.allows(rtype, perm)) {
        Ok(())
    } else {
        Err(format!("client '{}' may not {method} {url}", p.client_id))
    }
}
