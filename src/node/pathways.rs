//! A node's episodes for the pathway algorithms, read from its FHIR data: the
//! Encounters with ranked diagnoses (from SUS extracts or HL7 v2), the ICD-10
//! codes of the Conditions they point at, and the patients' sex and birth date.
//! Encounters from either feed give the same `Episode`, so a pathway answers the
//! same whichever way a region sends its data.

use super::analytics::Budget;
use super::{Error, FhirService};
use crate::fhir::icd10;
use crate::pathways::{Episode, POSITIONS};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

const SCAN_BATCH: usize = 2000;

/// A node's episodes as of a store change marker.
pub type CachedEpisodes = (i64, Arc<Vec<Episode>>);

pub const ADMISSION_METHOD: &str = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod";
pub const DISCHARGE_METHOD: &str = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod";
pub const TREATMENT_FUNCTION: &str = "https://fhir.nhs.uk/CodeSystem/NHSDataModelAndDictionary-TreatmentFunction";
const PENNINE: &str = "https://pennine.nhs.example/fhir/StructureDefinition/";

fn extension<'a>(r: &'a Value, url: &str) -> Option<&'a Value> {
    r["extension"].as_array()?.iter().find(|e| e["url"] == url)
}

fn pennine_extension<'a>(r: &'a Value, name: &str) -> Option<&'a Value> {
    r["extension"]
        .as_array()?
        .iter()
        .find(|e| e["url"].as_str().and_then(|u| u.strip_prefix(PENNINE)) == Some(name))
}

fn coded(ext: Option<&Value>) -> Option<String> {
    ext?["valueCodeableConcept"]["coding"][0]["code"]
        .as_str()
        .map(str::to_string)
}

/// The date part (`YYYY-MM-DD`) of a FHIR date or dateTime.
fn day(v: &Value) -> Option<String> {
    v.as_str().and_then(|s| s.get(..10)).map(str::to_string)
}

/// Whole years between a birth date and a day (`YYYY-MM-DD`).
fn age_at(birth: &str, on: &str) -> Option<u32> {
    let parse = |s: &str| -> Option<(i32, u32, u32)> {
        let mut p = s.get(..10)?.split('-');
        Some((
            p.next()?.parse().ok()?,
            p.next()?.parse().ok()?,
            p.next()?.parse().ok()?,
        ))
    };
    let (by, bm, bd) = parse(birth)?;
    let (y, m, d) = parse(on)?;
    let mut age = y - by;
    if (m, d) < (bm, bd) {
        age -= 1;
    }
    u32::try_from(age).ok()
}

impl FhirService {
    /// Calls `f` with each current resource of `rtype`, parsed.
    fn each_resource(&self, rtype: &str, budget: &Budget, mut f: impl FnMut(&str, i64, Value)) -> Result<(), Error> {
        let mut after = 0;
        let mut seen = 0;
        loop {
            let batch = self.store.scan(rtype, after, SCAN_BATCH)?;
            for s in &batch {
                let Some(json) = &s.json else { continue };
                match serde_json::from_slice::<Value>(json) {
                    Ok(v) => f(&s.id, s.key, v),
                    Err(e) => tracing::error!(rtype, id = %s.id, error = %e, "stored JSON does not parse"),
                }
            }
            seen += batch.len();
            budget.check(seen)?;
            match batch.last() {
                Some(last) if batch.len() == SCAN_BATCH => after = last.key,
                _ => return Ok(()),
            }
        }
    }

    /// Every admitted-care episode of this node that has ranked diagnoses, read once
    /// and kept until the store changes (the change marker is read before the data,
    /// so a write during the read is caught by the next call).
    pub fn episodes(&self, budget: Budget) -> Result<Arc<Vec<Episode>>, Error> {
        let mut cached = self.episodes.lock().unwrap_or_else(|p| p.into_inner());
        let marker = self.store.change_marker()?;
        if let Some((m, e)) = cached.as_ref() {
            if *m == marker {
                return Ok(e.clone());
            }
        }
        let fresh = Arc::new(self.read_episodes(budget)?);
        *cached = Some((marker, fresh.clone()));
        Ok(fresh)
    }

    fn read_episodes(&self, budget: Budget) -> Result<Vec<Episode>, Error> {
        let mut codes: HashMap<String, String> = HashMap::new();
        self.each_resource("Condition", &budget, |id, _, c| {
            let icd = c["code"]["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["system"] == icd10::SYSTEM)
                .and_then(|x| x["code"].as_str())
                .and_then(icd10::normalise);
            if let Some(code) = icd {
                codes.insert(id.to_string(), code);
            }
        })?;
        let mut patients: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        self.each_resource("Patient", &budget, |id, _, p| {
            patients.insert(
                id.to_string(),
                (
                    p["gender"].as_str().map(str::to_string),
                    p["birthDate"].as_str().map(str::to_string),
                ),
            );
        })?;
        // Providers by their ODS code (HL7 v2 encounters point at an Organization).
        let mut providers: HashMap<String, String> = HashMap::new();
        self.each_resource("Organization", &budget, |id, _, o| {
            let ods = o["identifier"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|i| i["system"] == crate::fhir::nhs::ODS_SYSTEM)
                .and_then(|i| i["value"].as_str());
            if let Some(code) = ods {
                providers.insert(format!("Organization/{id}"), code.to_string());
            }
        })?;
        let mut out = Vec::new();
        let keys = &self.record_keys;
        self.each_resource("Encounter", &budget, |_, key, e| {
            if let Some(mut ep) = episode(&e, &codes, &patients, &providers) {
                ep.key = keys.record(key, 0);
                out.push(ep);
            }
        })?;
        Ok(out)
    }
}

/// The episodes in a set of resources (a translated extract, without a store):
/// the same reading as a node's, so offline and stored evaluations agree.
pub fn episodes_in<'a>(resources: impl IntoIterator<Item = &'a Value>) -> Vec<Episode> {
    let mut codes = HashMap::new();
    let mut patients = HashMap::new();
    let mut providers = HashMap::new();
    let mut encounters = Vec::new();
    for r in resources {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        match r["resourceType"].as_str() {
            Some("Condition") => {
                let icd = r["code"]["coding"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|x| x["system"] == icd10::SYSTEM)
                    .and_then(|x| x["code"].as_str())
                    .and_then(icd10::normalise);
                if let Some(code) = icd {
                    codes.insert(id, code);
                }
            }
            Some("Patient") => {
                patients.insert(
                    id,
                    (
                        r["gender"].as_str().map(str::to_string),
                        r["birthDate"].as_str().map(str::to_string),
                    ),
                );
            }
            Some("Organization") => {
                if let Some(ods) = r["identifier"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| i["system"] == crate::fhir::nhs::ODS_SYSTEM)
                    .and_then(|i| i["value"].as_str())
                {
                    providers.insert(format!("Organization/{id}"), ods.to_string());
                }
            }
            Some("Encounter") => encounters.push(r),
            _ => {}
        }
    }
    encounters
        .into_iter()
        .filter_map(|e| episode(e, &codes, &patients, &providers))
        .collect()
}

/// The episode an Encounter describes, if it has ranked diagnoses.
fn episode(
    e: &Value,
    codes: &HashMap<String, String>,
    patients: &HashMap<String, (Option<String>, Option<String>)>,
    providers: &HashMap<String, String>,
) -> Option<Episode> {
    let mut diagnoses: [Option<String>; POSITIONS] = Default::default();
    let mut any = false;
    for d in e["diagnosis"].as_array()? {
        let Some(rank) = d["rank"].as_u64().filter(|r| (1..=POSITIONS as u64).contains(r)) else {
            continue;
        };
        let reference = d["condition"]["reference"].as_str().unwrap_or_default();
        let Some(id) = reference.strip_prefix("Condition/") else {
            continue;
        };
        if let Some(code) = codes.get(id) {
            diagnoses[rank as usize - 1] = Some(code.clone());
            any = true;
        }
    }
    if !any {
        return None;
    }
    let patient = e["subject"]["reference"]
        .as_str()
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| patients.get(id));
    let start = day(&e["period"]["start"]);
    let finished = e["status"] == "finished";
    let discharge_date = pennine_extension(e, "spell-discharge-date")
        .and_then(|x| day(&x["valueDate"]))
        .or_else(|| if finished { day(&e["period"]["end"]) } else { None });
    let age = pennine_extension(e, "age-on-admission")
        .and_then(|x| x["valueInteger"].as_u64())
        .and_then(|a| u32::try_from(a).ok())
        .or_else(|| {
            let birth = patient?.1.as_deref()?;
            age_at(birth, start.as_deref()?)
        });
    let sp = &e["serviceProvider"];
    let provider = sp["identifier"]["value"]
        .as_str()
        .or_else(|| {
            sp["reference"]
                .as_str()
                .and_then(|r| providers.get(r))
                .map(String::as_str)
        })
        .or_else(|| sp["display"].as_str())
        .unwrap_or("unknown")
        .to_string();
    let treatment_function = e["serviceType"]["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["system"] == TREATMENT_FUNCTION)
        .and_then(|c| c["code"].as_str())
        .map(str::to_string);
    Some(Episode {
        provider,
        admission_method: coded(extension(e, ADMISSION_METHOD)),
        treatment_function,
        // A whole spell (an HL7 v2 visit) is its own last episode.
        last_episode: pennine_extension(e, "last-episode-in-spell")
            .and_then(|x| x["valueBoolean"].as_bool())
            .unwrap_or(true),
        discharge_date,
        died: coded(extension(e, DISCHARGE_METHOD)).as_deref() == Some("4"),
        age,
        sex: patient.and_then(|p| p.0.clone()),
        diagnoses,
        key: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_whole_years() {
        assert_eq!(age_at("1950-06-15", "2025-06-14"), Some(74));
        assert_eq!(age_at("1950-06-15", "2025-06-15"), Some(75));
        assert_eq!(age_at("2026-01-01", "2025-01-01"), None);
    }
}
