//! FHIRPath evaluator: an expression (first line) over a resource (the rest) ends
//! within its budget with a result or an error.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (expr, json) = text.split_once('\n').unwrap_or((text, r#"{"resourceType":"Patient","name":[{"given":["a","b"]}]}"#));
    let Ok(e) = pennine::fhirpath::parse(expr) else { return };
    let Ok(resource) = serde_json::from_str::<serde_json::Value>(json) else { return };
    let model = &pennine::fhir::definitions::get().choice;
    let _ = pennine::fhirpath::evaluate(&e, &resource, model);
});
