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

/// The parts of FHIR resources the episodes need, read straight from the stored
/// JSON (borrowing its strings; everything else is skipped, not built as a `Value`).
mod facts {
    use serde::Deserialize;
    use std::borrow::Cow;

    #[derive(Deserialize, Default)]
    pub struct Coding<'a> {
        #[serde(borrow)]
        pub system: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub code: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize, Default)]
    pub struct Concept<'a> {
        #[serde(borrow, default)]
        pub coding: Vec<Coding<'a>>,
    }

    impl Concept<'_> {
        pub fn code_in(&self, system: &str) -> Option<&str> {
            self.coding
                .iter()
                .find(|c| c.system.as_deref() == Some(system))
                .and_then(|c| c.code.as_deref())
        }
    }

    #[derive(Deserialize)]
    pub struct Condition<'a> {
        #[serde(borrow)]
        pub code: Option<Concept<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Patient<'a> {
        #[serde(borrow)]
        pub gender: Option<Cow<'a, str>>,
        #[serde(borrow, rename = "birthDate")]
        pub birth_date: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Identifier<'a> {
        #[serde(borrow)]
        pub system: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub value: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Organization<'a> {
        #[serde(borrow, default)]
        pub identifier: Vec<Identifier<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Reference<'a> {
        #[serde(borrow)]
        pub reference: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub display: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub identifier: Option<Identifier<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Extension<'a> {
        #[serde(borrow)]
        pub url: Cow<'a, str>,
        #[serde(borrow, rename = "valueDate")]
        pub value_date: Option<Cow<'a, str>>,
        #[serde(rename = "valueInteger")]
        pub value_integer: Option<i64>,
        #[serde(rename = "valueBoolean")]
        pub value_boolean: Option<bool>,
        #[serde(borrow, rename = "valueCodeableConcept")]
        pub value_concept: Option<Concept<'a>>,
    }

    #[derive(Deserialize)]
    pub struct Diagnosis<'a> {
        #[serde(borrow)]
        pub condition: Option<Reference<'a>>,
        pub rank: Option<u64>,
    }

    #[derive(Deserialize)]
    pub struct Period<'a> {
        #[serde(borrow)]
        pub start: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub end: Option<Cow<'a, str>>,
    }

    #[derive(Deserialize)]
    pub struct Encounter<'a> {
        #[serde(borrow, default)]
        pub extension: Vec<Extension<'a>>,
        #[serde(borrow)]
        pub status: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        pub diagnosis: Vec<Diagnosis<'a>>,
        #[serde(borrow)]
        pub subject: Option<Reference<'a>>,
        #[serde(borrow)]
        pub period: Option<Period<'a>>,
        #[serde(borrow, rename = "serviceProvider")]
        pub service_provider: Option<Reference<'a>>,
        #[serde(borrow, rename = "serviceType")]
        pub service_type: Option<Concept<'a>>,
    }

    impl<'a> Encounter<'a> {
        pub fn extension(&self, url: &str) -> Option<&Extension<'a>> {
            self.extension.iter().find(|e| e.url == url)
        }

        pub fn pennine(&self, name: &str) -> Option<&Extension<'a>> {
            self.extension
                .iter()
                .find(|e| e.url.strip_prefix(super::PENNINE) == Some(name))
        }
    }
}

/// The ICD-10 code of a Condition, in the 4-character form.
fn condition_code(c: &facts::Condition) -> Option<String> {
    c.code.as_ref()?.code_in(icd10::SYSTEM).and_then(icd10::normalise)
}

/// The ODS code of an Organization.
fn ods_code(o: &facts::Organization) -> Option<String> {
    o.identifier
        .iter()
        .find(|i| i.system.as_deref() == Some(crate::fhir::nhs::ODS_SYSTEM))
        .and_then(|i| i.value.as_deref())
        .map(str::to_string)
}

/// The date part (`YYYY-MM-DD`) of a FHIR date or dateTime.
fn day(v: Option<&str>) -> Option<String> {
    v.and_then(|s| s.get(..10)).map(str::to_string)
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
    /// Calls `f` with each current resource of `rtype`: its id, key and stored JSON.
    fn each_stored(&self, rtype: &str, budget: &Budget, mut f: impl FnMut(&str, i64, &[u8])) -> Result<(), Error> {
        let mut after = 0;
        let mut seen = 0;
        loop {
            let batch = self.store.scan(rtype, after, SCAN_BATCH)?;
            for s in &batch {
                if let Some(json) = &s.json {
                    f(&s.id, s.key, json);
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
        self.each_stored("Condition", &budget, |id, _, json| {
            if let Some(code) = read::<facts::Condition>("Condition", id, json)
                .as_ref()
                .and_then(condition_code)
            {
                codes.insert(id.to_string(), code);
            }
        })?;
        let mut patients: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        self.each_stored("Patient", &budget, |id, _, json| {
            if let Some(p) = read::<facts::Patient>("Patient", id, json) {
                patients.insert(
                    id.to_string(),
                    (
                        p.gender.as_deref().map(str::to_string),
                        p.birth_date.as_deref().map(str::to_string),
                    ),
                );
            }
        })?;
        // Providers by their ODS code (HL7 v2 encounters point at an Organization).
        let mut providers: HashMap<String, String> = HashMap::new();
        self.each_stored("Organization", &budget, |id, _, json| {
            if let Some(code) = read::<facts::Organization>("Organization", id, json)
                .as_ref()
                .and_then(ods_code)
            {
                providers.insert(format!("Organization/{id}"), code);
            }
        })?;
        let mut out = Vec::new();
        let keys = &self.record_keys;
        self.each_stored("Encounter", &budget, |id, key, json| {
            let episode = read::<facts::Encounter>("Encounter", id, json)
                .and_then(|e| episode(&e, &codes, &patients, &providers));
            if let Some(mut ep) = episode {
                ep.key = keys.record(key, 0);
                out.push(ep);
            }
        })?;
        Ok(out)
    }
}

/// A stored resource's facts (`T` borrows from `json`); `None`, logged, when the
/// JSON does not read as `T`.
fn read<'j, T: serde::Deserialize<'j>>(rtype: &str, id: &str, json: &'j [u8]) -> Option<T> {
    match serde_json::from_slice(json) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(rtype, id, error = %e, "stored JSON does not read as expected");
            None
        }
    }
}

/// The episodes in a set of resources (a translated extract, without a store):
/// the same reading as a node's, so offline and stored evaluations agree.
pub fn episodes_in<'a>(resources: impl IntoIterator<Item = &'a Value>) -> Vec<Episode> {
    use serde::Deserialize;
    let mut codes = HashMap::new();
    let mut patients = HashMap::new();
    let mut providers = HashMap::new();
    let mut encounters = Vec::new();
    for r in resources {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        match r["resourceType"].as_str() {
            Some("Condition") => {
                if let Some(code) = facts::Condition::deserialize(r).ok().as_ref().and_then(condition_code) {
                    codes.insert(id, code);
                }
            }
            Some("Patient") => {
                if let Ok(p) = facts::Patient::deserialize(r) {
                    patients.insert(
                        id,
                        (
                            p.gender.as_deref().map(str::to_string),
                            p.birth_date.as_deref().map(str::to_string),
                        ),
                    );
                }
            }
            Some("Organization") => {
                if let Some(ods) = facts::Organization::deserialize(r).ok().as_ref().and_then(ods_code) {
                    providers.insert(format!("Organization/{id}"), ods);
                }
            }
            Some("Encounter") => encounters.push(r),
            _ => {}
        }
    }
    encounters
        .into_iter()
        .filter_map(|e| facts::Encounter::deserialize(e).ok())
        .filter_map(|e| episode(&e, &codes, &patients, &providers))
        .collect()
}

fn coded(ext: Option<&facts::Extension>) -> Option<String> {
    ext?.value_concept
        .as_ref()?
        .coding
        .first()?
        .code
        .as_deref()
        .map(str::to_string)
}

/// The episode an Encounter describes, if it has ranked diagnoses.
fn episode(
    e: &facts::Encounter,
    codes: &HashMap<String, String>,
    patients: &HashMap<String, (Option<String>, Option<String>)>,
    providers: &HashMap<String, String>,
) -> Option<Episode> {
    let mut diagnoses: [Option<String>; POSITIONS] = Default::default();
    let mut any = false;
    for d in &e.diagnosis {
        let Some(rank) = d.rank.filter(|r| (1..=POSITIONS as u64).contains(r)) else {
            continue;
        };
        let reference = d
            .condition
            .as_ref()
            .and_then(|c| c.reference.as_deref())
            .unwrap_or_default();
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
    let patient = e
        .subject
        .as_ref()
        .and_then(|s| s.reference.as_deref())
        .and_then(|r| r.strip_prefix("Patient/"))
        .and_then(|id| patients.get(id));
    let start = day(e.period.as_ref().and_then(|p| p.start.as_deref()));
    let finished = e.status.as_deref() == Some("finished");
    let discharge_date = e
        .pennine("spell-discharge-date")
        .and_then(|x| day(x.value_date.as_deref()))
        .or_else(|| {
            if finished {
                day(e.period.as_ref().and_then(|p| p.end.as_deref()))
            } else {
                None
            }
        });
    let age = e
        .pennine("age-on-admission")
        .and_then(|x| x.value_integer)
        .and_then(|a| u32::try_from(a).ok())
        .or_else(|| {
            let birth = patient?.1.as_deref()?;
            age_at(birth, start.as_deref()?)
        });
    let sp = e.service_provider.as_ref();
    let provider = sp
        .and_then(|sp| sp.identifier.as_ref().and_then(|i| i.value.as_deref()))
        .or_else(|| {
            sp.and_then(|sp| sp.reference.as_deref())
                .and_then(|r| providers.get(r))
                .map(String::as_str)
        })
        .or_else(|| sp.and_then(|sp| sp.display.as_deref()))
        .unwrap_or("unknown")
        .to_string();
    let treatment_function = e
        .service_type
        .as_ref()
        .and_then(|t| t.code_in(TREATMENT_FUNCTION))
        .map(str::to_string);
    Some(Episode {
        provider,
        admission_method: coded(e.extension(ADMISSION_METHOD)),
        treatment_function,
        // A whole spell (an HL7 v2 visit) is its own last episode.
        last_episode: e
            .pennine("last-episode-in-spell")
            .and_then(|x| x.value_boolean)
            .unwrap_or(true),
        discharge_date,
        died: coded(e.extension(DISCHARGE_METHOD)).as_deref() == Some("4"),
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
