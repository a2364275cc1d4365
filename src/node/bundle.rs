//! `POST /fhir` with a Bundle of type batch or transaction.
//!
//! Work is split so the write lock is held briefly: parsing, checking, reference
//! rewriting and indexing happen first, in the caller's thread, with provisional
//! ids for new resources. Inside the store's unit of work only what needs the
//! database remains: `ifNoneExist`, conditional updates and deletes, and
//! conditional references. An entry whose references depend on those is
//! rewritten and re-indexed there; the others are written as prepared.

use super::crud::{
    create_fresh, delete_version, existing, new_id, put_version, single_match, WriteOutcome, WriteResult,
};
use super::{Error, FhirService, Prepared};
use crate::fhir::{self, outcome::operation_outcome, Id, Issue, IssueCode, ResourceType};
use crate::search::{parse_query, SearchRequest};
use crate::store::WriteTxn;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

#[derive(Deserialize)]
struct BundleIn<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default, borrow)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(Deserialize)]
struct EntryIn<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a RawValue>,
    request: Option<EntryRequest>,
}

/// `Bundle.entry.request`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EntryRequest {
    pub method: Option<String>,
    pub url: Option<String>,
    #[serde(rename = "ifNoneExist")]
    pub if_none_exist: Option<String>,
    #[serde(rename = "ifMatch")]
    pub if_match: Option<String>,
}

/// Whether an entry's request (index, method, url) may be made; the access table's check.
pub type EntryCheck<'a> = &'a dyn Fn(usize, &str, &str) -> Result<(), Error>;

/// One entry of a batch or transaction, its resource already parsed. Callers
/// that build resources themselves (the feeds) hand these over directly, so
/// nothing is serialised to be parsed again.
pub struct Entry {
    pub full_url: Option<String>,
    /// The resource, or why its text could not be read.
    pub resource: Option<Result<Value, String>>,
    pub request: Option<EntryRequest>,
}

/// Where a write goes: a known id, or the single match of a search.
#[derive(Debug, Clone)]
enum Target {
    Id(String),
    Search(SearchRequest),
}

#[derive(Debug)]
enum Action {
    Create {
        prepared: Prepared,
        id: String,
        if_none_exist: Option<SearchRequest>,
    },
    Update {
        prepared: Prepared,
        target: Target,
        if_match: Option<u64>,
    },
    Delete {
        rtype: String,
        target: Target,
    },
    /// A GET entry, answered after the writes.
    Read,
}

struct Planned {
    index: usize,
    full_url: Option<String>,
    action: Action,
    /// The resource with references rewritten, kept when the unit of work may
    /// have to rewrite it again (it points at a conditional target).
    late: Option<Value>,
}

/// A write entry's index in the request and what became of it.
type EntryWrite = (usize, Result<WriteResult, Error>);

/// The outcome of one entry.
pub enum EntryResult {
    Written(WriteResult),
    Read(Value),
    Failed(Error),
}

/// What a batch or transaction did, entry by entry, in request order.
pub struct BundleOutcome {
    pub kind: BundleKind,
    pub entries: Vec<EntryResult>,
}

/// An entry's request URL, split into type, id (or version) and query.
struct EntryUrl<'a> {
    rtype: ResourceType,
    id: Option<&'a str>,
    query: Option<&'a str>,
}

fn parse_entry_url(url: &str) -> Option<EntryUrl<'_>> {
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Absolute URLs: start at the first segment that is a resource type.
    let start = segments.iter().position(|s| ResourceType::parse(s).is_some())?;
    let rest = &segments[start..];
    Some(EntryUrl {
        rtype: ResourceType::parse(rest[0])?,
        id: rest.get(1).copied(),
        query,
    })
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn etag_version(s: &str) -> Option<u64> {
    let s = s.trim().trim_start_matches("W/").trim_matches('"');
    s.parse().ok()
}

fn prefix_issues(issues: Vec<Issue>, index: usize) -> Vec<Issue> {
    issues
        .into_iter()
        .map(|mut i| {
            i.expression = Some(match i.expression.take() {
                Some(e) => format!(
                    "Bundle.entry[{index}].resource.{}",
                    e.split_once('.').map_or(e.as_str(), |x| x.1)
                ),
                None => format!("Bundle.entry[{index}]"),
            });
            i
        })
        .collect()
}

fn entry_error(index: usize, message: impl Into<String>) -> Error {
    Error::invalid(Issue::error(IssueCode::Invalid, message).at(format!("Bundle.entry[{index}].request")))
}

impl FhirService {
    fn search_request(&self, rtype: &str, query: &str) -> Result<SearchRequest, Error> {
        Ok(parse_query(
            &self.registry,
            rtype,
            &query_pairs(query),
            true,
            usize::MAX,
        )?)
    }

    /// Parses one entry into a planned action (without resolving references).
    fn plan_entry(&self, index: usize, e: &Entry, value: Option<Value>, new: String) -> Result<Action, Error> {
        let req = e
            .request
            .as_ref()
            .ok_or_else(|| entry_error(index, "entry.request is required in a batch or transaction"))?;
        let method = req.method.as_deref().unwrap_or("");
        let url = req
            .url
            .as_deref()
            .ok_or_else(|| entry_error(index, "entry.request.url is required"))?;
        let parsed =
            parse_entry_url(url).ok_or_else(|| entry_error(index, format!("cannot understand the URL '{url}'")))?;
        let if_match = match &req.if_match {
            Some(m) => {
                Some(etag_version(m).ok_or_else(|| entry_error(index, format!("ifMatch '{m}' is not a version")))?)
            }
            None => None,
        };
        // Each arm below calls this at most once, so the value moves, never copied.
        let resource = move |rtype: &str| -> Result<Prepared, Error> {
            let value = value.ok_or_else(|| entry_error(index, format!("a {method} entry needs a resource")))?;
            let found = self.check_resource(&value).map_err(|err| match err {
                Error::Unprocessable(issues) => Error::Unprocessable(prefix_issues(issues, index)),
                Error::Invalid(issues) => Error::Invalid(prefix_issues(issues, index)),
                other => other,
            })?;
            if found.rtype != rtype {
                return Err(entry_error(
                    index,
                    format!("the resource is a {} but the URL is for {rtype}", found.rtype),
                ));
            }
            Ok(self.prepare(found, value))
        };
        Ok(match method {
            "POST" => {
                if parsed.id.is_some() || parsed.query.is_some() {
                    return Err(entry_error(index, "a POST entry's url must be a resource type"));
                }
                let if_none_exist = match &req.if_none_exist {
                    Some(q) => Some(self.search_request(&parsed.rtype, q.trim_start_matches('?'))?),
                    None => None,
                };
                Action::Create {
                    prepared: resource(&parsed.rtype)?,
                    id: new,
                    if_none_exist,
                }
            }
            "PUT" => {
                let target = match (parsed.id, parsed.query) {
                    (Some(id), None) if fhir::is_valid_id(id) => Target::Id(id.to_string()),
                    (None, Some(q)) => Target::Search(self.search_request(&parsed.rtype, q)?),
                    _ => return Err(entry_error(index, "a PUT entry's url must be Type/id or Type?search")),
                };
                let prepared = resource(&parsed.rtype)?;
                if let (Target::Id(id), Some(body)) = (&target, &prepared.body_id) {
                    if id != body {
                        return Err(entry_error(
                            index,
                            format!("the resource id '{body}' does not match the url id '{id}'"),
                        ));
                    }
                }
                if let (Target::Id(_), None) = (&target, &prepared.body_id) {
                    return Err(entry_error(index, "a PUT entry's resource needs its id"));
                }
                Action::Update {
                    prepared,
                    target,
                    if_match,
                }
            }
            "DELETE" => {
                let target = match (parsed.id, parsed.query) {
                    (Some(id), None) => Target::Id(id.to_string()),
                    (None, Some(q)) => Target::Search(self.search_request(&parsed.rtype, q)?),
                    _ => {
                        return Err(entry_error(
                            index,
                            "a DELETE entry's url must be Type/id or Type?search",
                        ))
                    }
                };
                Action::Delete {
                    rtype: parsed.rtype.to_string(),
                    target,
                }
            }
            "GET" | "HEAD" => Action::Read,
            "PATCH" => return Err(Error::NotSupported("PATCH entries".into())),
            other => return Err(entry_error(index, format!("unknown method '{other}'"))),
        })
    }

    /// Processes a batch or transaction Bundle given as JSON text.
    pub fn process_bundle(&self, body: &str) -> Result<BundleOutcome, Error> {
        self.process_bundle_unless(body, None)
    }

    /// Like `process_bundle`, but every entry's request (index, method, url) is
    /// first put to `allowed`, and the first refusal is the answer: nothing is
    /// read or written. Done on the one parse of the body (the access table's
    /// check used to parse the whole Bundle a second time).
    pub fn process_bundle_checked(&self, body: &str, allowed: EntryCheck<'_>) -> Result<BundleOutcome, Error> {
        self.process_bundle_inner(body, None, Some(allowed))
    }

    /// Like `process_bundle`, but a transaction is applied only if the resource
    /// `unless` (type, id) does not exist yet; otherwise nothing is written and
    /// the answer is `Error::AlreadyApplied`. The check runs inside the store's
    /// unit of work, so two copies of one message cannot both apply. Feeds use
    /// it with the Provenance of a message to apply each message once.
    pub fn process_bundle_unless(&self, body: &str, unless: Option<(String, String)>) -> Result<BundleOutcome, Error> {
        self.process_bundle_inner(body, unless, None)
    }

    fn process_bundle_inner(
        &self,
        body: &str,
        unless: Option<(String, String)>,
        allowed: Option<EntryCheck<'_>>,
    ) -> Result<BundleOutcome, Error> {
        let bundle: BundleIn = serde_json::from_str(body).map_err(|e| {
            let what = if e.is_syntax() || e.is_eof() {
                "malformed JSON"
            } else {
                "the Bundle cannot be read"
            };
            Error::invalid(Issue::error(
                IssueCode::Structure,
                format!("{what} at line {} column {}: {e}", e.line(), e.column()),
            ))
        })?;
        if let Some(allowed) = allowed {
            for (i, e) in bundle.entry.iter().enumerate() {
                if let Some(EntryRequest {
                    method: Some(m),
                    url: Some(u),
                    ..
                }) = &e.request
                {
                    allowed(i, m, u)?;
                }
            }
        }
        if bundle.resource_type.as_deref() != Some("Bundle") {
            return Err(Error::invalid(
                Issue::error(IssueCode::Invalid, "POST to the base URL needs a Bundle").at("resourceType"),
            ));
        }
        let kind = match bundle.kind.as_deref() {
            Some("transaction") => BundleKind::Transaction,
            Some("batch") => BundleKind::Batch,
            other => {
                return Err(Error::invalid(
                    Issue::error(
                        IssueCode::Invalid,
                        format!(
                            "Bundle.type must be batch or transaction, not {}",
                            other.unwrap_or("missing")
                        ),
                    )
                    .at("Bundle.type"),
                ))
            }
        };
        let entries = bundle
            .entry
            .into_iter()
            .map(|e| Entry {
                full_url: e.full_url,
                resource: e
                    .resource
                    .map(|raw| serde_json::from_str::<Value>(raw.get()).map_err(|err| err.to_string())),
                request: e.request,
            })
            .collect();
        self.process_entries(kind, entries, unless)
    }

    /// Processes parsed entries as a batch or a transaction (see `process_bundle_unless`
    /// for `unless`).
    pub fn process_entries(
        &self,
        kind: BundleKind,
        mut entries: Vec<Entry>,
        unless: Option<(String, String)>,
    ) -> Result<BundleOutcome, Error> {
        let atomic = kind == BundleKind::Transaction;

        // 1. Provisional targets from the requests alone: fullUrl -> Type/id.
        let mut map: HashMap<String, String> = HashMap::new();
        let mut conditional_urls: HashSet<String> = HashSet::new();
        let mut new_ids: Vec<String> = Vec::with_capacity(entries.len());
        for e in &entries {
            let id = new_id();
            if let (Some(full), Some(req)) = (&e.full_url, &e.request) {
                let url = req.url.as_deref().and_then(parse_entry_url);
                match (req.method.as_deref(), url) {
                    (Some("POST"), Some(u)) => {
                        map.insert(full.clone(), format!("{}/{id}", u.rtype));
                        if req.if_none_exist.is_some() {
                            conditional_urls.insert(full.clone());
                        }
                    }
                    (Some("PUT"), Some(u)) => match (u.id, u.query) {
                        (Some(rid), None) => {
                            map.insert(full.clone(), format!("{}/{rid}", u.rtype));
                        }
                        _ => {
                            conditional_urls.insert(full.clone());
                        }
                    },
                    _ => {}
                }
            }
            new_ids.push(id);
        }

        // 2. Parse each resource, rewrite its references, then plan (check and index) it.
        let mut plans: Vec<Planned> = Vec::with_capacity(entries.len());
        let mut failures: Vec<(usize, Error)> = Vec::new();
        let mut conditional_refs: HashMap<String, Option<SearchRequest>> = HashMap::new();
        for (index, e) in entries.iter_mut().enumerate() {
            let mut late = None;
            let value = match e.resource.take() {
                Some(parsed) => match parsed {
                    Ok(mut v) => {
                        let mut is_late = false;
                        fhir::refs::rewrite(&mut v, &mut |r| {
                            if conditional_urls.contains(r) {
                                is_late = true;
                                return None;
                            }
                            if let Some(t) = map.get(r) {
                                return Some(t.clone());
                            }
                            if r.contains('?') && parse_entry_url(r).is_some() {
                                is_late = true;
                                conditional_refs.entry(r.to_string()).or_insert(None);
                            }
                            None
                        });
                        if is_late {
                            late = Some(v.clone());
                        }
                        Some(v)
                    }
                    Err(err) => {
                        failures.push((index, entry_error(index, format!("the resource cannot be read: {err}"))));
                        continue;
                    }
                },
                None => None,
            };
            match self.plan_entry(index, e, value, std::mem::take(&mut new_ids[index])) {
                Ok(action) => plans.push(Planned {
                    index,
                    full_url: e.full_url.clone(),
                    action,
                    late,
                }),
                Err(err) => failures.push((index, err)),
            }
        }
        if atomic && !failures.is_empty() {
            return Err(merge_errors(failures));
        }
        for (r, slot) in conditional_refs.iter_mut() {
            let parsed = parse_entry_url(r).expect("checked when collected");
            *slot = Some(self.search_request(&parsed.rtype, parsed.query.unwrap_or(""))?);
        }

        // 3. The unit of work: resolve what needs the database, then write.
        let service = self.clone();
        let provisional = map.clone();
        let results = self.run_written(
            move |txn| -> Result<Vec<EntryWrite>, Error> {
                if let Some((rtype, id)) = &unless {
                    if txn.current(rtype, id)?.is_some() {
                        return Err(Error::AlreadyApplied(format!("{rtype}/{id}")));
                    }
                }
                let mut final_map = provisional;
                // Conditional references.
                for (r, q) in &conditional_refs {
                    let q = q.as_ref().expect("parsed above");
                    match single_match(txn, q)? {
                        Some(id) => {
                            final_map.insert(r.clone(), format!("{}/{id}", q.rtype));
                        }
                        None if atomic => {
                            return Err(Error::PreconditionFailed(format!(
                                "the conditional reference '{r}' matched nothing"
                            )))
                        }
                        None => {}
                    }
                }
                // Conditional creates and updates decide the ids others point at.
                let mut skip: HashSet<usize> = HashSet::new();
                for p in plans.iter_mut() {
                    match &mut p.action {
                        Action::Create {
                            prepared,
                            if_none_exist: Some(q),
                            ..
                        } => {
                            if let Some(existing) = single_match(txn, q)? {
                                if let Some(f) = &p.full_url {
                                    final_map.insert(f.clone(), format!("{}/{existing}", prepared.rtype));
                                }
                                skip.insert(p.index);
                            }
                        }
                        Action::Update {
                            prepared,
                            target: target @ Target::Search(_),
                            ..
                        } => {
                            let Target::Search(q) = &*target else { unreachable!() };
                            let id = match single_match(txn, q)? {
                                Some(id) => id,
                                None => prepared.body_id.clone().unwrap_or_else(new_id),
                            };
                            if let Some(f) = &p.full_url {
                                final_map.insert(f.clone(), format!("{}/{id}", prepared.rtype));
                            }
                            *target = Target::Id(id);
                        }
                        _ => {}
                    }
                }
                // Entries that point at conditional targets: rewrite and re-index.
                for p in plans.iter_mut() {
                    let Some(mut value) = p.late.take() else { continue };
                    fhir::refs::rewrite(&mut value, &mut |r| final_map.get(r).cloned());
                    if let Action::Create { prepared, .. } | Action::Update { prepared, .. } = &mut p.action {
                        let body_id = prepared.body_id.clone();
                        *prepared = service.prepare_again(
                            std::mem::take(&mut prepared.rtype),
                            std::mem::take(&mut prepared.issues),
                            prepared.flagged,
                            prepared.recorded.clone(),
                            value,
                        );
                        prepared.body_id = body_id;
                    }
                }
                // A transaction may not touch one resource twice.
                if atomic {
                    let mut seen = HashSet::new();
                    for p in &plans {
                        let key = match &p.action {
                            Action::Update {
                                prepared,
                                target: Target::Id(id),
                                ..
                            } => format!("{}/{id}", prepared.rtype),
                            Action::Delete {
                                rtype,
                                target: Target::Id(id),
                            } => format!("{rtype}/{id}"),
                            _ => continue,
                        };
                        if !seen.insert(key.clone()) {
                            return Err(Error::invalid(
                                Issue::error(IssueCode::Duplicate, format!("{key} is written by more than one entry"))
                                    .at(format!("Bundle.entry[{}]", p.index)),
                            ));
                        }
                    }
                }
                // Deletes, then creates, then updates, as the specification orders them.
                let order = |a: &Action| match a {
                    Action::Delete { .. } => 0,
                    Action::Create { .. } => 1,
                    Action::Update { .. } => 2,
                    Action::Read => 3,
                };
                plans.sort_by_key(|p| (order(&p.action), p.index));
                let mut out = Vec::with_capacity(plans.len());
                for p in &plans {
                    let run_one = |txn: &mut dyn WriteTxn| -> Result<Option<WriteResult>, Error> {
                        Ok(match &p.action {
                            Action::Create { prepared, id, .. } => {
                                if skip.contains(&p.index) {
                                    let Some(Action::Create {
                                        if_none_exist: Some(q), ..
                                    }) = Some(&p.action)
                                    else {
                                        unreachable!()
                                    };
                                    let id = single_match(txn, q)?.unwrap_or_default();
                                    Some(existing(txn, &prepared.rtype, id)?)
                                } else {
                                    Some(create_fresh(txn, prepared, id)?)
                                }
                            }
                            Action::Update {
                                prepared,
                                target: Target::Id(id),
                                if_match,
                            } => {
                                service.refuse_builtin(&prepared.rtype, id)?;
                                Some(put_version(txn, prepared, id, *if_match)?)
                            }
                            Action::Update { .. } => unreachable!("resolved above"),
                            Action::Delete { rtype, target } => {
                                let id = match target {
                                    Target::Id(id) => Some(id.clone()),
                                    Target::Search(q) => single_match(txn, q)?,
                                };
                                match id {
                                    Some(id) => {
                                        service.refuse_builtin(rtype, &id)?;
                                        Some(delete_version(txn, rtype, &id)?)
                                    }
                                    None => Some(WriteResult::nothing_to_delete(rtype)),
                                }
                            }
                            Action::Read => None,
                        })
                    };
                    if atomic {
                        if let Some(r) = run_one(txn)? {
                            out.push((p.index, Ok(r)));
                        }
                    } else {
                        let mut result = None;
                        txn.nested(&mut |t| {
                            let r = run_one(t);
                            let ok = r.is_ok();
                            result = Some(r);
                            ok
                        })?;
                        match result {
                            Some(Ok(Some(r))) => out.push((p.index, Ok(r))),
                            Some(Ok(None)) | None => {}
                            Some(Err(e)) => out.push((p.index, Err(e))),
                        }
                    }
                }
                Ok(out)
            },
            |out| out.iter().filter_map(|(_, r)| r.as_ref().ok()).collect(),
        )?;

        // 4. Reads run after the writes; then answer in request order.
        let mut answers: Vec<Option<EntryResult>> = (0..entries.len()).map(|_| None).collect();
        for (i, r) in results {
            answers[i] = Some(match r {
                Ok(w) => EntryResult::Written(w),
                Err(e) => EntryResult::Failed(e),
            });
        }
        for (i, e) in failures {
            answers[i] = Some(EntryResult::Failed(e));
        }
        for (i, e) in entries.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            let url = e.request.as_ref().and_then(|r| r.url.clone()).unwrap_or_default();
            answers[i] = Some(match self.read_url(&url) {
                Ok(v) => EntryResult::Read(v),
                Err(err) => EntryResult::Failed(err),
            });
        }
        Ok(BundleOutcome {
            kind,
            entries: answers.into_iter().map(|e| e.expect("every entry answered")).collect(),
        })
    }

    /// A GET inside a batch: read, vread or search, as a resource.
    fn read_url(&self, url: &str) -> Result<Value, Error> {
        let parsed = parse_entry_url(url)
            .ok_or_else(|| Error::invalid(Issue::error(IssueCode::Invalid, format!("cannot understand '{url}'"))))?;
        let segments: Vec<&str> = url
            .split('?')
            .next()
            .unwrap_or("")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let stored = match (parsed.id, parsed.query) {
            (Some(raw_id), _) => {
                let pos = segments.iter().position(|s| *s == raw_id).unwrap_or(0);
                let id = Id::parse(raw_id).ok_or_else(|| {
                    Error::invalid(Issue::error(
                        IssueCode::Value,
                        format!("'{raw_id}' is not a valid resource id"),
                    ))
                })?;
                match (segments.get(pos + 1), segments.get(pos + 2)) {
                    (Some(&"_history"), Some(v)) => {
                        let v: u64 = v
                            .parse()
                            .map_err(|_| Error::invalid(Issue::error(IssueCode::Invalid, "bad version")))?;
                        self.vread(parsed.rtype, &id, v)?
                    }
                    _ => self.read(parsed.rtype, &id)?,
                }
            }
            (None, q) => {
                let req = parse_query(
                    &self.registry,
                    &parsed.rtype,
                    &query_pairs(q.unwrap_or("")),
                    false,
                    self.settings.max_count,
                )?;
                let ctx = super::SearchContext {
                    base: String::new(),
                    self_query: url.to_string(),
                    cancel: Default::default(),
                };
                return self.search(req, &ctx);
            }
        };
        let json = stored.json.as_deref().unwrap_or(b"{}");
        serde_json::from_slice(json).map_err(|e| Error::Store(crate::store::StoreError::Corrupt(e)))
    }
}

fn merge_errors(failures: Vec<(usize, Error)>) -> Error {
    let mut issues = Vec::new();
    let mut unprocessable = false;
    for (index, e) in failures {
        match e {
            Error::Invalid(i) => issues.extend(i),
            Error::Unprocessable(i) => {
                unprocessable = true;
                issues.extend(i)
            }
            other => issues.extend(other.issues().into_iter().map(|mut i| {
                i.expression.get_or_insert_with(|| format!("Bundle.entry[{index}]"));
                i
            })),
        }
    }
    if unprocessable {
        Error::Unprocessable(issues)
    } else {
        Error::Invalid(issues)
    }
}

/// Renders a batch-response or transaction-response Bundle.
pub fn response_bundle(outcome: &BundleOutcome, representation: bool) -> Value {
    let entries: Vec<Value> = outcome
        .entries
        .iter()
        .map(|e| match e {
            EntryResult::Written(w) => {
                let status = match w.outcome {
                    WriteOutcome::Created => "201 Created",
                    WriteOutcome::Updated | WriteOutcome::Existing => "200 OK",
                    WriteOutcome::Deleted | WriteOutcome::NothingToDelete => "204 No Content",
                };
                let mut response = json!({ "status": status });
                if !w.id.is_empty() && w.version > 0 {
                    response["etag"] = json!(format!("W/\"{}\"", w.version));
                    response["lastModified"] = json!(fhir::time::format_instant(w.last_updated));
                    if matches!(
                        w.outcome,
                        WriteOutcome::Created | WriteOutcome::Updated | WriteOutcome::Existing
                    ) {
                        response["location"] = json!(format!("{}/{}/_history/{}", w.rtype, w.id, w.version));
                    }
                }
                if !w.issues.is_empty() {
                    response["outcome"] = operation_outcome(&w.issues);
                }
                let mut entry = json!({});
                if !w.id.is_empty() && w.outcome != WriteOutcome::NothingToDelete {
                    entry["fullUrl"] = json!(format!("{}/{}", w.rtype, w.id));
                }
                if representation {
                    if let Some(j) = &w.json {
                        if let Ok(v) = serde_json::from_slice::<Value>(j) {
                            entry["resource"] = v;
                        }
                    }
                }
                entry["response"] = response;
                entry
            }
            EntryResult::Read(v) => json!({ "resource": v, "response": { "status": "200 OK" } }),
            EntryResult::Failed(err) => json!({
                "response": {
                    "status": format!("{} {}", err.status(), err.reason()),
                    "outcome": operation_outcome(&err.issues()),
                }
            }),
        })
        .collect();
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": match outcome.kind {
            BundleKind::Batch => "batch-response",
            BundleKind::Transaction => "transaction-response",
        },
        "entry": entries,
    })
}
