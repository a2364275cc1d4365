//! Search result sets: the matches of a search are kept for a while under a
//! random id so that next/previous links page through one stable list,
//! whatever is written meanwhile (as HAPI's `_getpages` does). The embedded
//! store keeps them in memory; PostgreSQL keeps them in the database so that
//! every node process sharing it can serve any page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a result set can be paged through.
pub const RESULT_SET_TTL: Duration = Duration::from_secs(600);

/// A stored result list and what the service needs to render its pages.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultSet {
    /// Opaque to the store: the service's description of the search.
    pub payload: Vec<u8>,
    pub keys: Vec<i64>,
}

pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Result sets in process memory, bounded in number and age.
pub struct MemoryResultSets {
    inner: Mutex<HashMap<String, (Instant, Arc<ResultSet>)>>,
    capacity: usize,
}

impl MemoryResultSets {
    pub fn new(capacity: usize) -> MemoryResultSets {
        MemoryResultSets {
            inner: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    pub fn insert(&self, set: ResultSet) -> String {
        let id = new_id();
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, (t, _)| now.duration_since(*t) < RESULT_SET_TTL);
        if map.len() >= self.capacity {
            if let Some(oldest) = map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(id.clone(), (now, Arc::new(set)));
        id
    }

    pub fn get(&self, id: &str) -> Option<Arc<ResultSet>> {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(t, _)| t.elapsed() < RESULT_SET_TTL)
            .map(|(_, s)| s.clone())
    }
}
