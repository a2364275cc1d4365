//! Search result pages: the matches of a search are kept for a while under a
//! random id so that next/previous links page through one stable result list,
//! whatever is written meanwhile (as HAPI's `_getpages` does).

use crate::search::SearchRequest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct CachedSearch {
    pub request: SearchRequest,
    pub keys: Vec<i64>,
    pub total: Option<u64>,
    pub self_query: String,
}

pub struct PageCache {
    inner: Mutex<HashMap<String, (Instant, Arc<CachedSearch>)>>,
    capacity: usize,
    ttl: Duration,
}

impl PageCache {
    pub fn new(capacity: usize, ttl: Duration) -> PageCache {
        PageCache {
            inner: Mutex::new(HashMap::new()),
            capacity,
            ttl,
        }
    }

    pub fn insert(&self, search: CachedSearch) -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (t, _)| now.duration_since(*t) < self.ttl);
        if map.len() >= self.capacity {
            if let Some(oldest) = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), (now, Arc::new(search)));
        id
    }

    pub fn get(&self, id: &str) -> Option<Arc<CachedSearch>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(t, _)| t.elapsed() < self.ttl)
            .map(|(_, s)| s.clone())
    }
}
