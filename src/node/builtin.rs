//! Resources a node serves without storing them: the Measures of the pathways
//! it runs. They answer reads and searches like stored resources (same search
//! meaning, through `search::matcher`), come first in a search's results, and
//! can't be written: they change with the pathway files (`--pathways`), which
//! `$evaluate-measure` runs, so a stored copy could only disagree with them.
//! They have no history and don't count in the quality figures.

use super::{Error, FhirService};
use crate::search::matcher::{matches_all, Candidate};
use crate::search::{IndexRows, Registry, SearchRequest};
use crate::store::{Method, Stored};
use std::sync::Arc;

pub struct Builtin {
    rtype: String,
    id: String,
    json: Arc<[u8]>,
    rows: IndexRows,
    last_updated: i64,
}

#[derive(Default)]
pub struct Builtins {
    items: Vec<Builtin>,
}

impl Builtins {
    /// The Measures of `pathways`, as of now.
    pub fn of_pathways(pathways: &crate::pathways::Library, registry: &Registry) -> Builtins {
        let now = crate::fhir::time::now_millis();
        let items = pathways
            .all()
            .iter()
            .map(|p| {
                let mut measure = p.measure.clone();
                measure["meta"] = serde_json::json!({
                    "versionId": "1",
                    "lastUpdated": crate::fhir::time::format_instant(now),
                });
                Builtin {
                    rtype: "Measure".into(),
                    id: p.id.clone(),
                    rows: crate::search::extract(registry, "Measure", &measure),
                    json: serde_json::to_vec(&measure).unwrap_or_default().into(),
                    last_updated: now,
                }
            })
            .collect();
        Builtins { items }
    }

    fn position(&self, rtype: &str, id: &str) -> Option<usize> {
        self.items.iter().position(|b| b.rtype == rtype && b.id == id)
    }

    /// Built-in resources are keyed below zero, so that a search's result set
    /// holds them beside stored keys: the `i`-th is `-(i + 1)`.
    fn stored(&self, key: i64) -> Option<Stored> {
        let b = self.items.get(usize::try_from(-(key + 1)).ok()?)?;
        Some(Stored {
            key,
            rtype: b.rtype.clone(),
            id: b.id.clone(),
            version: 1,
            last_updated: b.last_updated,
            method: Method::Create,
            json: Some(b.json.clone()),
        })
    }
}

impl FhirService {
    /// A write of `rtype/id` refused when it is a built-in resource.
    pub(super) fn refuse_builtin(&self, rtype: &str, id: &str) -> Result<(), Error> {
        match self.builtins.position(rtype, id) {
            Some(_) => Err(Error::MethodNotAllowed(format!(
                "{rtype}/{id} is a pathway definition this node runs; it changes with the pathway files (--pathways), not through the API"
            ))),
            None => Ok(()),
        }
    }

    /// The built-in resource `rtype/id`, when no stored resource has its place.
    pub(super) fn builtin(&self, rtype: &str, id: &str) -> Option<Stored> {
        let i = self.builtins.position(rtype, id)?;
        self.builtins.stored(-(i as i64) - 1)
    }

    /// The keys of the built-in resources that meet the search, in their order.
    pub(super) fn builtin_matches(&self, req: &SearchRequest) -> Result<Vec<i64>, Error> {
        let mut keys = Vec::new();
        for (i, b) in self.builtins.items.iter().enumerate() {
            let candidate = Candidate {
                id: &b.id,
                last_updated: b.last_updated,
                rows: &b.rows,
            };
            if b.rtype == req.rtype
                && matches_all(&req.conditions, &candidate)
                && self.store.read(&b.rtype, &b.id)?.is_none()
            {
                keys.push(-(i as i64) - 1);
            }
        }
        Ok(keys)
    }

    /// The resources behind `keys`, in their order, built-in ones included.
    pub(super) fn fetch_keys(&self, keys: &[i64]) -> Result<Vec<Stored>, Error> {
        if keys.iter().all(|k| *k >= 0) {
            return Ok(self.store.fetch(keys)?);
        }
        let stored_keys: Vec<i64> = keys.iter().copied().filter(|k| *k >= 0).collect();
        let mut stored: std::collections::HashMap<i64, Stored> = self
            .store
            .fetch(&stored_keys)?
            .into_iter()
            .map(|s| (s.key, s))
            .collect();
        Ok(keys
            .iter()
            .filter_map(|k| {
                if *k < 0 {
                    self.builtins.stored(*k)
                } else {
                    stored.remove(k)
                }
            })
            .collect())
    }
}
