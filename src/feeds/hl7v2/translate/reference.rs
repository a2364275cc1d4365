//! Reference data a message names: organisations (MSH-4, PV1-3's facility, XON
//! fields), clinicians (XCN) and locations (PL), each a resource of its own with a
//! deterministic id.

use super::*;

impl<'m, 'a> Ctx<'m, 'a> {
    pub(super) fn facility_org(&self, out: &mut Out, si: usize, n: usize) -> Option<String> {
        let raw = self.raw(si, n);
        let ns = comp(self.m, raw, 1);
        let universal = comp(self.m, raw, 2);
        let ids = dt::organization_identifiers(&ns, &universal, &comp(self.m, raw, 3));
        if ids.is_empty() {
            return None;
        }
        let id = hash_id(&["Organization", &ns, &universal]);
        let mut org = jv!({"resourceType": "Organization", "id": id.as_str(), "identifier": ids});
        if !ns.is_empty() {
            org["name"] = jv!(ns);
        }
        out.push(org);
        Some(format!("Organization/{id}"))
    }

    /// XON (organisation name^^id^^^assigning authority) → Organization.
    pub(super) fn xon_org(&self, out: &mut Out, raw: &str) -> Option<String> {
        let name = comp(self.m, raw, 1);
        let code = {
            let c = comp(self.m, raw, 10);
            if c.is_empty() {
                comp(self.m, raw, 3)
            } else {
                c
            }
        };
        if name.is_empty() && code.is_empty() {
            return None;
        }
        let id = hash_id(&["Organization", &code, &name]);
        let mut org = jv!({"resourceType": "Organization", "id": id.as_str()});
        if !code.is_empty() {
            org["identifier"] = jv!([{ "system": crate::fhir::nhs::ODS_SYSTEM, "value": code }]);
        }
        if !name.is_empty() {
            org["name"] = jv!(name);
        }
        out.push(org);
        Some(format!("Organization/{id}"))
    }

    /// XCN → Practitioner; its reference.
    pub(super) fn practitioner(&self, out: &mut Out, raw: &str) -> Option<String> {
        let m = self.m;
        let idv = comp(m, raw, 1);
        let authority = dt::sub(m, raw, 9, 1);
        let system = dt::authority_system(&authority, &dt::sub(m, raw, 9, 2), &dt::sub(m, raw, 9, 3));
        let name = dt::xpn_at(m, raw, 2);
        if idv.is_empty() && name.is_none() {
            return None;
        }
        let id = if idv.is_empty() {
            hash_id(&["Practitioner", "name", &m.unescape(raw)])
        } else {
            hash_id(&["Practitioner", system.as_deref().unwrap_or(""), &idv])
        };
        let mut p = jv!({"resourceType": "Practitioner", "id": id.as_str()});
        if !idv.is_empty() {
            let mut ident = Map::new();
            if let Some(s) = system {
                ident.insert("system".into(), jv!(s));
            }
            ident.insert("value".into(), jv!(idv));
            p["identifier"] = jv!([ident]);
        }
        if let Some(n) = name {
            p["name"] = jv!([n]);
        }
        out.push(p);
        Some(format!("Practitioner/{id}"))
    }

    /// PL → Location; its reference.
    pub(super) fn location_ref(&self, out: &mut Out, raw: &str) -> Option<String> {
        let m = self.m;
        let parts: Vec<String> = [1, 2, 3, 7, 8].iter().map(|n| dt::sub(m, raw, *n, 1)).collect();
        let facility = dt::sub(m, raw, 4, 1);
        let description = comp(m, raw, 9);
        let labels = ["ward", "room", "bed", "building", "floor"];
        let named: Vec<String> = parts
            .iter()
            .zip(labels)
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, l)| format!("{l} {p}"))
            .collect();
        if named.is_empty() && facility.is_empty() && description.is_empty() {
            return None;
        }
        let id = hash_id(&["Location", &facility, &parts.join("^")]);
        let mut loc = jv!({"resourceType": "Location", "id": id.as_str(), "mode": "instance"});
        let name = if named.is_empty() {
            if description.is_empty() {
                facility.clone()
            } else {
                description.clone()
            }
        } else {
            named.join(", ")
        };
        loc["name"] = jv!(name);
        if !description.is_empty() {
            loc["description"] = jv!(description);
        }
        let (code, display) = if !parts[2].is_empty() {
            ("bd", "Bed")
        } else if !parts[1].is_empty() {
            ("ro", "Room")
        } else if !parts[0].is_empty() {
            ("wa", "Ward")
        } else {
            ("si", "Site")
        };
        loc["physicalType"] = dt::coded(
            "http://terminology.hl7.org/CodeSystem/location-physical-type",
            code,
            Some(display),
        );
        if !facility.is_empty() {
            let org_id = hash_id(&["Organization", &facility, ""]);
            out.push(jv!({
                "resourceType": "Organization", "id": org_id.as_str(), "name": facility.as_str(),
                "identifier": [{"system": crate::fhir::nhs::ODS_SYSTEM, "value": facility.as_str()}]
            }));
            loc["managingOrganization"] = jv!({ "reference": format!("Organization/{org_id}") });
        }
        out.push(loc);
        Some(format!("Location/{id}"))
    }
}
