//! Instance-level interactions: create, read, vread, update, delete and their
//! conditional forms. Each write is one unit of work in the store.

use super::{Error, FhirService, Prepared};
use crate::fhir::{Id, Identifier, Issue, IssueCode, ResourceType};
use crate::search::SearchRequest;
use crate::store::{Method, NewVersion, Stored, WriteTxn};
use serde_json::Value;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Created,
    Updated,
    Deleted,
    /// A conditional create matched an existing resource; nothing was written.
    Existing,
    /// A delete of something absent or already deleted.
    NothingToDelete,
}

/// What a write did, with the stored version.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub last_updated: i64,
    pub outcome: WriteOutcome,
    pub json: Option<Arc<[u8]>>,
    /// What validation found and the node accepted (warnings, flagged profile errors).
    pub issues: Vec<Issue>,
    /// How many of `issues` are flagged profile errors.
    pub flagged: usize,
    /// What the written resource adds to the data-quality figures, stored in its unit of work.
    pub recorded: Option<Arc<super::quality::Recorded>>,
}

/// How a conditional interaction picks its target.
#[derive(Debug, Clone)]
pub enum Conditional {
    None,
    Search(SearchRequest),
}

/// The result of a conditional create that matched `id`: nothing written.
pub(super) fn existing(txn: &mut dyn WriteTxn, rtype: &str, id: String) -> Result<WriteResult, Error> {
    let c = txn.current(rtype, &id)?;
    Ok(WriteResult {
        rtype: rtype.to_string(),
        id,
        version: c.map_or(0, |c| c.version),
        last_updated: c.map_or(0, |c| c.last_updated),
        outcome: WriteOutcome::Existing,
        json: None,
        issues: Vec::new(),
        flagged: 0,
        recorded: None,
    })
}

impl WriteResult {
    /// A conditional delete that matched nothing.
    pub(super) fn nothing_to_delete(rtype: &str) -> WriteResult {
        WriteResult {
            rtype: rtype.to_string(),
            id: String::new(),
            version: 0,
            last_updated: 0,
            outcome: WriteOutcome::NothingToDelete,
            json: None,
            issues: Vec::new(),
            flagged: 0,
            recorded: None,
        }
    }
}

/// A new server-assigned id: a version 7 UUID, ordered by creation time within the
/// process, so that new resources' keys (and the index rows that point at them) are
/// appended to the end of their B-trees instead of scattered over every page.
pub(super) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Finds the single match of a conditional search, or says why there is none.
pub(super) fn single_match(txn: &mut dyn WriteTxn, q: &SearchRequest) -> Result<Option<String>, Error> {
    let mut ids = txn.search_ids(q, 2)?;
    match ids.len() {
        0 => Ok(None),
        1 => Ok(ids.pop()),
        _ => Err(Error::PreconditionFailed(format!(
            "the conditional search on {} matched more than one resource",
            q.rtype
        ))),
    }
}

/// Writes a new resource under a server-assigned id (a fresh UUID, so there
/// is no current version to look up).
pub(super) fn create_fresh(txn: &mut dyn WriteTxn, prepared: &Prepared, id: &str) -> Result<WriteResult, Error> {
    write_version(txn, prepared, id, None, None)
}

/// Writes `prepared` as the next version of `rtype/id`, honouring `if_match`.
pub(super) fn put_version(
    txn: &mut dyn WriteTxn,
    prepared: &Prepared,
    id: &str,
    if_match: Option<u64>,
) -> Result<WriteResult, Error> {
    let current = txn.current(&prepared.rtype, id)?;
    write_version(txn, prepared, id, current, if_match)
}

fn write_version(
    txn: &mut dyn WriteTxn,
    prepared: &Prepared,
    id: &str,
    current: Option<crate::store::Current>,
    if_match: Option<u64>,
) -> Result<WriteResult, Error> {
    if let Some(expected) = if_match {
        match current {
            Some(c) if c.version == expected && !c.deleted => {}
            other => {
                return Err(Error::VersionConflict {
                    rtype: prepared.rtype.to_string(),
                    id: id.to_string(),
                    expected,
                    current: other.map(|c| c.version),
                })
            }
        }
    }
    let version = current.map_or(1, |c| c.version + 1);
    let now = txn.now();
    let json = prepared.assemble(id, version, now);
    let created = current.is_none_or(|c| c.deleted);
    txn.write(&NewVersion {
        rtype: &prepared.rtype,
        id,
        version,
        last_updated: now,
        method: if created { Method::Create } else { Method::Update },
        json: Some(&json),
        index: Some(&prepared.index),
        existed: current.is_some(),
    })?;
    Ok(WriteResult {
        rtype: prepared.rtype.clone(),
        id: id.to_string(),
        version,
        last_updated: now,
        outcome: if created {
            WriteOutcome::Created
        } else {
            WriteOutcome::Updated
        },
        json: Some(Arc::from(json)),
        issues: prepared.issues.clone(),
        flagged: prepared.flagged,
        recorded: Some(prepared.recorded.clone()),
    })
}

pub(super) fn delete_version(txn: &mut dyn WriteTxn, rtype: &str, id: &str) -> Result<WriteResult, Error> {
    let current = txn.current(rtype, id)?;
    match current {
        Some(c) if !c.deleted => {
            let now = txn.now();
            let version = c.version + 1;
            txn.write(&NewVersion {
                rtype,
                id,
                version,
                last_updated: now,
                method: Method::Delete,
                json: None,
                index: None,
                existed: true,
            })?;
            Ok(WriteResult {
                rtype: rtype.to_string(),
                id: id.to_string(),
                version,
                last_updated: now,
                outcome: WriteOutcome::Deleted,
                json: None,
                issues: Vec::new(),
                flagged: 0,
                recorded: None,
            })
        }
        other => Ok(WriteResult {
            rtype: rtype.to_string(),
            id: id.to_string(),
            version: other.map_or(0, |c| c.version),
            last_updated: other.map_or(0, |c| c.last_updated),
            outcome: WriteOutcome::NothingToDelete,
            json: None,
            issues: Vec::new(),
            flagged: 0,
            recorded: None,
        }),
    }
}

impl FhirService {
    /// Runs `f` as one atomic unit of work and returns its result once durable. The
    /// quality figures of what it wrote (`written` lists its results) and of the
    /// refusals waiting go into the same transaction: they count what committed.
    pub(super) fn run_written<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, Error> + Send + 'static,
        written: fn(&T) -> Vec<&WriteResult>,
    ) -> Result<T, Error> {
        let book = self.quality.clone();
        let pending = book.take_pending();
        let carried = pending.clone();
        let result = self.run(move |txn| {
            let out = f(txn)?;
            // Delta rows the unit adds: one per figure new to it.
            let mut rows = 0;
            if !pending.is_empty() {
                rows += txn.add_quality(&pending.counts, &pending.patients)?;
            }
            for r in written(&out) {
                if let Some(recorded) = &r.recorded {
                    let patient = recorded.patient_keys.as_ref().map(|keys| (r.id.clone(), keys.clone()));
                    rows += txn.add_quality(&recorded.counts, patient.as_slice())?;
                }
            }
            Ok((out, rows as u64))
        });
        match result {
            Ok((out, rows)) => {
                book.invalidate();
                self.fold_quality(rows);
                Ok(out)
            }
            Err(e) => {
                book.give_back(carried);
                Err(e)
            }
        }
    }

    /// Stores the refusals' quality figures that wait for a unit of work (at shutdown, or
    /// when many have gathered).
    pub fn flush_quality(&self) -> Result<(), Error> {
        self.run_written(|_| Ok(()), |_| Vec::new())
    }

    /// Folds the stored quality delta rows once this process has added enough of them.
    fn fold_quality(&self, rows: u64) {
        use std::sync::atomic::Ordering;
        const FOLD_AFTER: u64 = 20_000;
        if self.quality.added.fetch_add(rows, Ordering::Relaxed) + rows < FOLD_AFTER {
            return;
        }
        self.quality.added.store(0, Ordering::Relaxed);
        if let Err(e) = self.run(|txn| Ok(txn.compact_quality()?)) {
            tracing::warn!(error = %e, "quality figures could not be folded (they stay correct, only larger)");
        }
    }

    /// The data-quality figures (`GET /quality`): stored totals and the refusals waiting.
    pub fn quality_report(&self, region: &str) -> Result<serde_json::Value, Error> {
        let totals = self.quality.totals(|| self.store.quality())?;
        Ok(self.quality.report(&totals, region))
    }

    /// Share of must-support elements present in the resources of `rtype` (None: none
    /// seen, or the figures could not be read).
    pub fn completeness(&self, rtype: &str) -> Option<f64> {
        match self.quality.totals(|| self.store.quality()) {
            Ok(totals) => self.quality.completeness(&totals, rtype),
            Err(e) => {
                tracing::warn!(error = %e, "quality figures could not be read");
                None
            }
        }
    }

    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn WriteTxn) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        crate::store::run_unit(&*self.store, f)
    }

    fn expect_type(&self, rtype: ResourceType, value: &Value) -> Result<super::Checked, Error> {
        let found = self.check_resource(value)?;
        if found.rtype != rtype.as_str() {
            return Err(Error::invalid(
                Issue::error(
                    IssueCode::Invalid,
                    format!("the body is a {} but the URL is for {rtype}", found.rtype),
                )
                .at("resourceType"),
            ));
        }
        Ok(found)
    }

    /// `POST [type]`, optionally conditional (`If-None-Exist`).
    pub fn create(&self, rtype: ResourceType, value: Value, if_none_exist: Conditional) -> Result<WriteResult, Error> {
        let checked = self.expect_type(rtype, &value)?;
        let prepared = self.prepare(checked, value);
        let id = new_id();
        let result = self.run_written(
            move |txn| {
                if let Conditional::Search(q) = &if_none_exist {
                    if let Some(id) = single_match(txn, q)? {
                        return existing(txn, &prepared.rtype, id);
                    }
                }
                create_fresh(txn, &prepared, &id)
            },
            |r| vec![r],
        )?;
        self.with_current_json(result)
    }

    fn with_current_json(&self, mut result: WriteResult) -> Result<WriteResult, Error> {
        if result.outcome == WriteOutcome::Existing {
            if let Some(s) = self.store.read(&result.rtype, &result.id)? {
                result.json = s.json;
            }
        }
        Ok(result)
    }

    /// `PUT [type]/[id]` (create-on-update), with an optional `If-Match` version.
    pub fn update(
        &self,
        rtype: ResourceType,
        id: &Id,
        value: Value,
        if_match: Option<u64>,
    ) -> Result<WriteResult, Error> {
        let checked = self.expect_type(rtype, &value)?;
        // Check the id before indexing: a rejected request should cost no more than it must.
        match value.get("id").and_then(Value::as_str) {
            Some(b) if b == id.as_str() => {}
            Some(b) => {
                return Err(Error::invalid(
                    Issue::error(
                        IssueCode::Invalid,
                        format!("the body's id '{b}' does not match the URL's id '{id}'"),
                    )
                    .at(format!("{rtype}.id")),
                ))
            }
            None => {
                return Err(Error::invalid(
                    Issue::error(IssueCode::Required, "an update needs the resource id in the body")
                        .at(format!("{rtype}.id")),
                ))
            }
        }
        self.refuse_builtin(&rtype, id)?;
        let prepared = self.prepare(checked, value);
        let id = id.clone();
        let result = self.run_written(move |txn| put_version(txn, &prepared, &id, if_match), |r| vec![r])?;
        Ok(result)
    }

    /// `PUT [type]?[search]`: update the single match, or create if none.
    pub fn conditional_update(
        &self,
        rtype: ResourceType,
        query: SearchRequest,
        value: Value,
        if_match: Option<u64>,
    ) -> Result<WriteResult, Error> {
        let checked = self.expect_type(rtype, &value)?;
        let prepared = self.prepare(checked, value);
        let this = self.clone();
        let result = self.run_written(
            move |txn| {
                let id = match (single_match(txn, &query)?, &prepared.body_id) {
                    (Some(found), Some(body)) if &found != body => {
                        return Err(Error::invalid(Issue::error(
                            IssueCode::Invalid,
                            format!(
                                "the search matched {rtype}/{found} but the body's id is '{body}'",
                                rtype = query.rtype
                            ),
                        )))
                    }
                    (Some(found), _) => found,
                    (None, Some(body)) => body.clone(),
                    (None, None) => new_id(),
                };
                this.refuse_builtin(&prepared.rtype, &id)?;
                put_version(txn, &prepared, &id, if_match)
            },
            |r| vec![r],
        )?;
        Ok(result)
    }

    /// `DELETE [type]/[id]`: logical delete; deleting what is absent is not an error.
    pub fn delete(&self, rtype: ResourceType, id: &Id) -> Result<WriteResult, Error> {
        self.refuse_builtin(&rtype, id)?;
        let id = id.clone();
        self.run(move |txn| delete_version(txn, &rtype, &id))
    }

    /// `DELETE [type]?[search]`: delete the single match.
    pub fn conditional_delete(&self, query: SearchRequest) -> Result<WriteResult, Error> {
        let this = self.clone();
        self.run(move |txn| match single_match(txn, &query)? {
            Some(id) => {
                this.refuse_builtin(&query.rtype, &id)?;
                delete_version(txn, &query.rtype, &id)
            }
            None => Ok(WriteResult::nothing_to_delete(&query.rtype)),
        })
    }

    /// `GET [type]/[id]`.
    pub fn read(&self, rtype: ResourceType, id: &Id) -> Result<Stored, Error> {
        match self.store.read(&rtype, id)? {
            None => self
                .builtin(&rtype, id)
                .ok_or_else(|| Error::NotFound(rtype.to_string(), id.to_string())),
            Some(s) if s.deleted() => Err(Error::Gone(rtype.to_string(), id.to_string())),
            Some(s) => Ok(s),
        }
    }

    /// `GET [type]/[id]/_history/[vid]`.
    pub fn vread(&self, rtype: ResourceType, id: &Id, version: u64) -> Result<Stored, Error> {
        match self.store.vread(&rtype, id, version)? {
            None => self
                .builtin(&rtype, id)
                .filter(|b| b.version == version && self.store.read(&rtype, id).ok().flatten().is_none())
                .ok_or_else(|| Error::NotFound(rtype.to_string(), format!("{id}/_history/{version}"))),
            Some(s) if s.deleted() => Err(Error::Gone(rtype.to_string(), format!("{id}/_history/{version}"))),
            Some(s) => Ok(s),
        }
    }
}

impl FhirService {
    /// Current resources of `rtype` with any of `identifiers`, at most `limit`,
    /// each with its JSON parsed once.
    pub fn find_by_identifiers(
        &self,
        rtype: ResourceType,
        identifiers: &[Identifier],
        limit: usize,
    ) -> Result<Vec<Found>, Error> {
        let req = SearchRequest::by_identifiers(&self.registry, &rtype, identifiers)?;
        let keys = self.store.search(&req, limit)?;
        let mut found = Vec::new();
        for stored in self.store.fetch(&keys)? {
            let Some(bytes) = &stored.json else { continue };
            let json = serde_json::from_slice(bytes).map_err(|e| Error::Store(crate::store::StoreError::Corrupt(e)))?;
            found.push(Found { stored, json });
        }
        Ok(found)
    }
}

/// A stored resource with its JSON.
#[derive(Debug, Clone)]
pub struct Found {
    pub stored: Stored,
    pub json: Value,
}

/// A group of resources for `put_groups`: each is written by its id, and the
/// group is stored whole or not at all.
pub type PutGroup = Vec<Value>;

/// A resource of a group, ready to write: prepared, its id, and its content as sent.
type PlannedPut = (Prepared, String, String);

impl FhirService {
    /// Writes many groups in one unit of work (one commit), each group in its own
    /// nested savepoint: a group that fails (a resource the profiles refuse, a
    /// write the store refuses) is undone alone and reported, the others are kept.
    /// This is `PUT [type]/[id]` of every resource, group by group, at the cost of
    /// one commit: the CSV feed writes an extract's multi-resource rows this way.
    /// A resource identical to one an earlier group of the same call wrote (a
    /// patient on several rows) is not written again.
    pub fn put_groups(&self, groups: Vec<PutGroup>) -> Result<Vec<Result<Vec<WriteResult>, Error>>, Error> {
        let planned: Vec<Result<Vec<PlannedPut>, Error>> = groups
            .into_iter()
            .map(|group| group.into_iter().map(|value| self.plan_put(value)).collect())
            .collect();
        let results = self.run_written(
            move |txn| {
                let mut written: std::collections::HashMap<(String, String), String> = std::collections::HashMap::new();
                let mut out = Vec::with_capacity(planned.len());
                for group in planned {
                    let group = match group {
                        Ok(g) => g,
                        Err(e) => {
                            out.push(Err(e));
                            continue;
                        }
                    };
                    let mut result: Result<Vec<WriteResult>, Error> = Ok(Vec::new());
                    txn.nested(&mut |t| {
                        let mut done = Vec::with_capacity(group.len());
                        for (prepared, id, content) in &group {
                            if written.get(&(prepared.rtype.clone(), id.clone())) == Some(content) {
                                continue;
                            }
                            match put_version(t, prepared, id, None) {
                                Ok(r) => done.push(r),
                                Err(e) => {
                                    result = Err(e);
                                    return false;
                                }
                            }
                        }
                        result = Ok(done);
                        true
                    })?;
                    if result.is_ok() {
                        for (prepared, id, content) in &group {
                            written.insert((prepared.rtype.clone(), id.clone()), content.clone());
                        }
                    }
                    out.push(result);
                }
                Ok::<_, Error>(out)
            },
            |out| out.iter().flatten().flatten().collect(),
        )?;
        Ok(results)
    }

    /// One resource of a group: checked, prepared, with its id and its content.
    fn plan_put(&self, value: Value) -> Result<PlannedPut, Error> {
        let checked = self.check_resource(&value)?;
        let id = value
            .get("id")
            .and_then(Value::as_str)
            .and_then(Id::parse)
            .ok_or_else(|| {
                Error::invalid(
                    Issue::error(IssueCode::Required, "a resource written by its id needs a valid id")
                        .at(format!("{}.id", checked.rtype)),
                )
            })?;
        self.refuse_builtin(&checked.rtype, id.as_str())?;
        let content = value.to_string();
        Ok((self.prepare(checked, value), id.as_str().to_string(), content))
    }
}
