//! Search and history results as Bundles, written straight from the stored
//! JSON bytes (no re-parsing) unless `_elements` or `_summary` asks to trim.

use super::{Error, FhirService};
use crate::fhir::{self, definitions, outcome::operation_outcome, Issue, IssueCode};
use crate::search::query::Summary;
use crate::search::SearchRequest;
use crate::store::{HistoryQuery, Method, Stored};
use serde_json::Value;
use std::collections::HashSet;

/// A search's matches and what rendering its pages needs.
struct CachedSearch {
    request: SearchRequest,
    keys: Vec<i64>,
    total: Option<u64>,
    /// The applied query, `Type?a=b`: kept with the result set, and parsed
    /// again for later pages (for `_include`, `_elements`, `_summary`).
    self_query: String,
}

/// What a stored result set carries besides its keys.
#[derive(serde::Serialize, serde::Deserialize)]
struct PagePayload {
    query: String,
    total: Option<u64>,
}

/// Where a result Bundle's links point.
#[derive(Debug, Clone)]
pub struct SearchContext {
    /// The FHIR base URL, e.g. `https://node.example/fhir`.
    pub base: String,
    /// The query as applied, relative to the base: `Patient?name=x`.
    pub self_query: String,
    /// Stops the search once its client has gone.
    pub cancel: crate::store::Cancel,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Writes a Bundle without building a DOM of its resources.
struct BundleWriter {
    out: Vec<u8>,
    entries: usize,
}

impl BundleWriter {
    fn new(kind: &str, total: Option<u64>, links: &[(&str, String)]) -> BundleWriter {
        let mut out = Vec::with_capacity(16 * 1024);
        out.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":\"");
        out.extend_from_slice(uuid::Uuid::new_v4().to_string().as_bytes());
        out.extend_from_slice(b"\",\"meta\":{\"lastUpdated\":\"");
        out.extend_from_slice(fhir::time::format_instant(fhir::time::now_millis()).as_bytes());
        out.extend_from_slice(b"\"},\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        if let Some(t) = total {
            out.extend_from_slice(format!(",\"total\":{t}").as_bytes());
        }
        if !links.is_empty() {
            out.extend_from_slice(b",\"link\":[");
            for (i, (rel, url)) in links.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(
                    format!("{{\"relation\":{},\"url\":{}}}", json_str(rel), json_str(url)).as_bytes(),
                );
            }
            out.push(b']');
        }
        BundleWriter { out, entries: 0 }
    }

    fn entry(&mut self, full_url: Option<&str>, resource: Option<&[u8]>, tail: &str) {
        self.out
            .extend_from_slice(if self.entries == 0 { b",\"entry\":[{" } else { b",{" });
        self.entries += 1;
        let mut first = true;
        if let Some(u) = full_url {
            self.out.extend_from_slice(b"\"fullUrl\":");
            self.out.extend_from_slice(json_str(u).as_bytes());
            first = false;
        }
        if let Some(r) = resource {
            if !first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(b"\"resource\":");
            self.out.extend_from_slice(r);
            first = false;
        }
        if !tail.is_empty() {
            if !first {
                self.out.push(b',');
            }
            self.out.extend_from_slice(tail.as_bytes());
        }
        self.out.push(b'}');
    }

    fn finish(mut self) -> Vec<u8> {
        if self.entries > 0 {
            self.out.push(b']');
        }
        self.out.push(b'}');
        self.out
    }
}

/// Applies `_summary` and `_elements` to one resource, marking it SUBSETTED.
fn trim(json: &[u8], summary: Summary, elements: Option<&[String]>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(json).ok()?;
    let obj = v.as_object_mut()?;
    let rtype = obj.get("resourceType")?.as_str()?.to_string();
    let mandatory = ["resourceType", "id", "meta"];
    let keep = |k: &str, allowed: &[String]| {
        mandatory.contains(&k)
            || allowed.iter().any(|a| {
                k == a
                    || (k.starts_with(a.as_str())
                        && k[a.len()..].starts_with(|c: char| c.is_ascii_uppercase())
                        && definitions::get().choice.choice_names.contains(a.as_str()))
                    || k.strip_prefix('_') == Some(a)
            })
    };
    let allowed: Option<Vec<String>> = match (summary, elements) {
        (_, Some(e)) => Some(e.to_vec()),
        (Summary::True, None) => Some(
            definitions::get()
                .summary_elements
                .get(&rtype)
                .cloned()
                .unwrap_or_default(),
        ),
        (Summary::Text, None) => Some(vec!["text".into()]),
        (Summary::Data, None) => {
            obj.shift_remove("text");
            None
        }
        _ => return None,
    };
    if let Some(allowed) = allowed {
        obj.retain(|k, _| keep(k, &allowed));
    }
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Default::default()));
    if let Some(m) = meta.as_object_mut() {
        let tags = m.entry("tag").or_insert_with(|| Value::Array(vec![]));
        if let Some(t) = tags.as_array_mut() {
            t.push(serde_json::json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
                "display": "Resource encoded in summary mode"
            }));
        }
    }
    serde_json::to_vec(&v).ok()
}

fn full_url(base: &str, s: &Stored) -> String {
    if base.is_empty() {
        format!("{}/{}", s.rtype, s.id)
    } else {
        format!("{base}/{}/{}", s.rtype, s.id)
    }
}

impl FhirService {
    /// Runs a search and renders its first page.
    pub fn search(&self, req: SearchRequest, ctx: &SearchContext) -> Result<Value, Error> {
        let bytes = self.search_bytes(req, ctx)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Store(crate::store::StoreError::Corrupt(e)))
    }

    /// Runs a search and renders its first page as JSON bytes.
    pub fn search_bytes(&self, req: SearchRequest, ctx: &SearchContext) -> Result<Vec<u8>, Error> {
        let result = ctx.cancel.during(|| self.search_bytes_wanted(req, ctx));
        match result {
            Err(_) if ctx.cancel.cancelled() => Err(Error::ClientGone),
            other => other,
        }
    }

    fn search_bytes_wanted(&self, req: SearchRequest, ctx: &SearchContext) -> Result<Vec<u8>, Error> {
        let builtin = self.builtin_matches(&req)?;
        if req.summary == Summary::Count {
            let total = self.store.count(&req)? + builtin.len() as u64;
            let links = [("self", format!("{}/{}", ctx.base, ctx.self_query))];
            let mut w = BundleWriter::new("searchset", Some(total), &links);
            self.ignored_outcome(&mut w, &req);
            return Ok(w.finish());
        }
        let max = self.settings.max_results;
        let mut keys = builtin;
        keys.extend(self.store.search(&req, max + 1)?);
        let total = if keys.len() > max {
            keys.truncate(max);
            // Beyond what is kept for paging, count only when asked (`_total=accurate`).
            if req.total_accurate {
                let builtin = keys.iter().filter(|k| **k < 0).count() as u64;
                Some(self.store.count(&req)? + builtin)
            } else {
                None
            }
        } else {
            Some(keys.len() as u64)
        };
        let count = req.count.unwrap_or(self.settings.default_count);
        let cached = CachedSearch {
            request: req,
            keys,
            total,
            self_query: ctx.self_query.clone(),
        };
        if cached.keys.len() > count {
            let payload = serde_json::to_vec(&PagePayload {
                query: cached.self_query.clone(),
                total: cached.total,
            })
            .map_err(|e| Error::Store(crate::store::StoreError::Corrupt(e)))?;
            let id = self.store.save_result_set(crate::store::ResultSet {
                payload,
                keys: cached.keys.clone(),
            })?;
            self.render_page(&cached, Some(&id), 0, count, ctx)
        } else {
            self.render_page(&cached, None, 0, count, ctx)
        }
    }

    /// A later page of a cached search (`?_getpages=...`).
    pub fn search_page(
        &self,
        page_id: &str,
        offset: usize,
        count: Option<usize>,
        ctx: &SearchContext,
    ) -> Result<Vec<u8>, Error> {
        let expired = || {
            Error::invalid(Issue::error(
                IssueCode::NotFound,
                format!("search result page set '{page_id}' has expired or never existed; run the search again"),
            ))
        };
        let set = self.store.load_result_set(page_id)?.ok_or_else(expired)?;
        let payload: PagePayload = serde_json::from_slice(&set.payload).map_err(|_| expired())?;
        let (rtype, query) = payload.query.split_once('?').unwrap_or((payload.query.as_str(), ""));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let request = crate::search::parse_query(&self.registry, rtype, &pairs, false, self.settings.max_count)?;
        let cached = CachedSearch {
            request,
            keys: set.keys.clone(),
            total: payload.total,
            self_query: payload.query.clone(),
        };
        let count = count
            .or(cached.request.count)
            .unwrap_or(self.settings.default_count)
            .min(self.settings.max_count);
        self.render_page(&cached, Some(page_id), offset, count, ctx)
    }

    fn ignored_outcome(&self, w: &mut BundleWriter, req: &SearchRequest) {
        if req.ignored.is_empty() {
            return;
        }
        let issues: Vec<Issue> = req
            .ignored
            .iter()
            .map(|p| {
                Issue::warning(
                    IssueCode::NotSupported,
                    format!("unknown search parameter '{p}' was ignored"),
                )
            })
            .collect();
        let oo = operation_outcome(&issues).to_string();
        w.entry(None, Some(oo.as_bytes()), "\"search\":{\"mode\":\"outcome\"}");
    }

    fn render_page(
        &self,
        cached: &CachedSearch,
        page_id: Option<&str>,
        offset: usize,
        count: usize,
        ctx: &SearchContext,
    ) -> Result<Vec<u8>, Error> {
        let req = &cached.request;
        let end = (offset + count).min(cached.keys.len());
        let page: &[i64] = if offset < end { &cached.keys[offset..end] } else { &[] };
        let mut links = vec![("self", format!("{}/{}", ctx.base, cached.self_query))];
        if let Some(id) = page_id {
            let link = |off: usize| format!("{}?_getpages={id}&_getpagesoffset={off}&_count={count}", ctx.base);
            if end < cached.keys.len() {
                links.push(("next", link(end)));
            }
            if offset > 0 {
                links.push(("previous", link(offset.saturating_sub(count))));
            }
            if offset > 0 {
                links[0] = ("self", link(offset));
            }
        }
        let mut w = BundleWriter::new("searchset", cached.total, &links);
        let matches = self.fetch_keys(page)?;
        let trimming = req.elements.is_some() || matches!(req.summary, Summary::True | Summary::Text | Summary::Data);
        let mut seen: HashSet<i64> = page.iter().copied().collect();
        for s in &matches {
            let json = s.json.as_deref().unwrap_or(b"{}");
            let trimmed = if trimming {
                trim(json, req.summary, req.elements.as_deref())
            } else {
                None
            };
            w.entry(
                Some(&full_url(&ctx.base, s)),
                Some(trimmed.as_deref().unwrap_or(json)),
                "\"search\":{\"mode\":\"match\"}",
            );
        }
        let mut extra = Vec::new();
        let stop = || {
            if ctx.cancel.cancelled() {
                Err(Error::ClientGone)
            } else {
                Ok(())
            }
        };
        for inc in &req.includes {
            stop()?;
            if inc.source_type == req.rtype {
                extra.extend(self.store.include(page, inc)?);
            }
        }
        for inc in &req.revincludes {
            stop()?;
            extra.extend(self.store.revinclude(page, inc)?);
        }
        stop()?;
        extra.retain(|k| seen.insert(*k));
        for s in self.store.fetch(&extra)? {
            w.entry(
                Some(&full_url(&ctx.base, &s)),
                s.json.as_deref(),
                "\"search\":{\"mode\":\"include\"}",
            );
        }
        self.ignored_outcome(&mut w, req);
        Ok(w.finish())
    }

    /// Instance, type or system history, newest first.
    pub fn history(&self, mut q: HistoryQuery, ctx: &SearchContext, self_query: &str) -> Result<Vec<u8>, Error> {
        let before = q.at_or_before.unwrap_or_else(fhir::time::now_millis);
        q.at_or_before = Some(before);
        let (rows, total) = self.store.history(&q)?;
        let mut links = vec![("self", format!("{}/{self_query}", ctx.base))];
        let path = self_query.split('?').next().unwrap_or("");
        let since = q
            .since
            .map(|s| format!("&_since={}", fhir::time::format_instant(s)))
            .unwrap_or_default();
        let link = |off: usize| {
            format!(
                "{}/{path}?_count={}&_getpagesoffset={off}&_getpagesbefore={before}{since}",
                ctx.base, q.limit
            )
        };
        if (q.offset + rows.len()) < total as usize {
            links.push(("next", link(q.offset + q.limit)));
        }
        if q.offset > 0 {
            links.push(("previous", link(q.offset.saturating_sub(q.limit))));
        }
        let mut w = BundleWriter::new("history", Some(total), &links);
        for s in &rows {
            let method = s.method.as_str();
            let url = match s.method {
                Method::Create => s.rtype.clone(),
                _ => format!("{}/{}", s.rtype, s.id),
            };
            let status = match s.method {
                Method::Create => "201 Created",
                Method::Update => "200 OK",
                Method::Delete => "204 No Content",
            };
            let tail = format!(
                "\"request\":{{\"method\":\"{method}\",\"url\":{}}},\"response\":{{\"status\":\"{status}\",\"etag\":\"W/\\\"{}\\\"\",\"lastModified\":\"{}\"}}",
                json_str(&url),
                s.version,
                fhir::time::format_instant(s.last_updated)
            );
            w.entry(Some(&full_url(&ctx.base, s)), s.json.as_deref(), &tail);
        }
        Ok(w.finish())
    }
}
