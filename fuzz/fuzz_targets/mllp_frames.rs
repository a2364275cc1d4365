//! MLLP framing: any byte stream, split anywhere, yields frames or a size refusal.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = pennine::feeds::mllp::Decoder::new(4096);
    let split = data.first().map_or(0, |b| *b as usize) % (data.len().max(1));
    for part in [&data[..split], &data[split..]] {
        if decoder.push(part).is_err() {
            return;
        }
    }
    let _ = decoder.pending();
});
