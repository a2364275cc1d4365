//! The CapabilityStatement, generated from what the node actually supports:
//! the resource types it stores and the search parameters it indexes.

use crate::fhir::{self, definitions, time};
use crate::search::{ParamKind, Registry};
use serde_json::{json, Value};

/// Builds the node's CapabilityStatement. `base` is the FHIR base URL.
pub fn capability_statement(registry: &Registry, base: &str, software_name: &str) -> Value {
    // What `_revinclude` can follow to each type: `Source:param` for every reference
    // parameter that may point at it.
    let mut reverse: std::collections::HashMap<&str, Vec<String>> = std::collections::HashMap::new();
    for source in &definitions::get().resource_type_list {
        for p in registry.for_type(source).filter(|p| p.kind == ParamKind::Reference) {
            for t in &p.targets {
                reverse
                    .entry(t.as_str())
                    .or_default()
                    .push(format!("{source}:{}", p.code));
            }
        }
    }
    let resources: Vec<Value> = definitions::get()
        .resource_type_list
        .iter()
        .map(|rtype| {
            let mut params: Vec<Value> = registry
                .for_type(rtype)
                .map(|p| {
                    json!({
                        "name": p.code,
                        "definition": format!("http://hl7.org/fhir/SearchParameter/{}", if p.code.starts_with('_') { format!("Resource-{}", &p.code[1..]) } else { format!("{rtype}-{}", p.code) }),
                        "type": p.kind.as_str(),
                    })
                })
                .collect();
            if !params.iter().any(|p| p["name"] == "_id") {
                params.insert(0, json!({"name": "_id", "type": "token"}));
            }
            if !params.iter().any(|p| p["name"] == "_lastUpdated") {
                params.insert(1, json!({"name": "_lastUpdated", "type": "date"}));
            }
            let includes: Vec<Value> = registry
                .for_type(rtype)
                .filter(|p| p.kind == ParamKind::Reference)
                .map(|p| json!(format!("{rtype}:{}", p.code)))
                .collect();
            let interactions: Vec<Value> = ["read", "vread", "update", "delete", "history-instance", "history-type", "create", "search-type"]
                .iter()
                .map(|c| json!({"code": c}))
                .collect();
            let revincludes = reverse.get(rtype.as_str()).cloned().unwrap_or_default();
            let mut r = json!({
                "type": rtype,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{rtype}"),
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": params,
            });
            // R4 forbids empty arrays: a list is written only when it has members.
            if !includes.is_empty() {
                r["searchInclude"] = json!(includes);
            }
            if !revincludes.is_empty() {
                r["searchRevInclude"] = json!(revincludes);
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": time::format_instant(time::now_millis()),
        "kind": "instance",
        "software": { "name": software_name, "version": env!("CARGO_PKG_VERSION") },
        "implementation": { "description": "Pennine regional node", "url": base },
        "fhirVersion": fhir::FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": smart_security(base.strip_suffix("/fhir").unwrap_or(base)),
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
            "searchParam": [
                {"name": "_count", "type": "number"},
                {"name": "_sort", "type": "string"},
                {"name": "_summary", "type": "token"},
                {"name": "_total", "type": "token"},
                {"name": "_elements", "type": "string"},
                {"name": "_include", "type": "string"},
                {"name": "_revinclude", "type": "string"}
            ],
        }],
    })
}

/// `rest.security` for SMART Backend Services: the service coding and the token endpoint in
/// the `oauth-uris` extension, where FHIR clients (fhirclient, fhir-kit-client) look for it.
pub fn smart_security(root: &str) -> Value {
    json!({
        "cors": false,
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"
            }],
            "text": "OAuth2 client credentials as SMART Backend Services (private_key_jwt or client_secret_basic)"
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [{"url": "token", "valueUri": format!("{root}/auth/token")}]
        }],
        "description": "Every request but metadata, health and the SMART configuration needs a bearer token from the token endpoint; the discovery document is at [base]/.well-known/smart-configuration."
    })
}
