//! ViewDefinition compiler and evaluation: any JSON compiles or is refused, and a
//! compiled view evaluates over a small resource within its limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(def) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(view) = pennine::views::View::compile(&def) else { return };
    let resource = serde_json::json!({"resourceType": view.resource, "id": "x",
        "name": [{"family": "f", "given": ["a", "b"]}], "gender": "female", "birthDate": "1970-01-01"});
    let mut rows = Vec::new();
    let _ = view.rows(&resource, &pennine::fhir::definitions::get().choice, &mut rows);
});
