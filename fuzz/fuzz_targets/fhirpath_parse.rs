//! FHIRPath parser: any text parses or is refused, never panics or overflows the stack.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = pennine::fhirpath::parse(text);
    }
});
