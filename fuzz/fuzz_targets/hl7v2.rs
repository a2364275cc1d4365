//! HL7 v2: any text parses and translates, or is refused with a reason.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = pennine::feeds::hl7v2::er7::parse(text) {
        let _ = m.get("PID-3");
        let _ = m.get("MSH-9.2");
    }
    let _ = pennine::feeds::hl7v2::translate(text, "2024-01-01T00:00:00Z");
});
