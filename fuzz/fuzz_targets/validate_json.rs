//! FHIR JSON into the validator: any JSON gives a list of issues, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(resource) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let _ = pennine::validation::validator().validate(&resource);
});
