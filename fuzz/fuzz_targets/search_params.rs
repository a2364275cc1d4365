//! Search parameter parsing: any query string for any type parses or is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fuzz_target!(|data: &[u8]| {
    static REGISTRY: OnceLock<pennine::search::Registry> = OnceLock::new();
    let registry = REGISTRY.get_or_init(pennine::search::Registry::r4);
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (rtype, query) = text.split_once('?').unwrap_or(("Patient", text));
    let pairs: Vec<(String, String)> = form_pairs(query);
    let _ = pennine::search::parse_query(registry, rtype, &pairs, true, 1000);
    let _ = pennine::federation::counts::check(rtype, &pairs);
});

fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}
