//! ICD-10 codes as the pathway algorithms compare them.

/// The ICD-10 code system URI (WHO ICD-10, as used in NHS hospital episode data).
pub const SYSTEM: &str = "http://hl7.org/fhir/sid/icd-10";

/// Normalises an ICD-10 code as extracts write it (`J44.1`, `J441`, `J40`, `J40X`,
/// `J40-`, with a dagger or asterisk mark `D`/`A` after the fourth character) to the
/// 4-character form without a dot, 3-character codes padded with `X` (`J441`, `J40X`).
pub fn normalise(raw: &str) -> Option<String> {
    let mut s: String = raw.trim().to_ascii_uppercase();
    if let Some(i) = s.find('.') {
        s.remove(i);
    }
    let s = s.trim_end_matches(['-', '*', '+']);
    let b = s.as_bytes();
    let stem_ok = b.len() >= 3 && b[0].is_ascii_uppercase() && b[1].is_ascii_digit() && b[2].is_ascii_digit();
    if !stem_ok {
        return None;
    }
    match b.len() {
        3 => Some(format!("{s}X")),
        4 if b[3].is_ascii_digit() || b[3] == b'X' => Some(s.to_string()),
        // A fifth character: a dagger/asterisk mark or a national fifth digit; the
        // algorithms read the first four.
        5 | 6
            if (b[3].is_ascii_digit() || b[3] == b'X')
                && b[4..]
                    .iter()
                    .all(|c| c.is_ascii_digit() || matches!(c, b'A' | b'D' | b'X')) =>
        {
            Some(s[..4].to_string())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icd10_codes_are_normalised_as_the_algorithms_read_them() {
        for (sent, want) in [
            ("J44.1", "J441"),
            ("J441", "J441"),
            ("J40", "J40X"),
            ("J40X", "J40X"),
            ("J40-", "J40X"),
            ("j44.1", "J441"),
            (" K70.3 ", "K703"),
            ("G409D", "G409"),
            ("M0600A", "M060"),
        ] {
            assert_eq!(normalise(sent).as_deref(), Some(want), "{sent}");
        }
        for bad in ["", "J4", "44.1", "J4X1", "JJ441", "J441Q", "J44.1.2", "R56.8.9"] {
            assert_eq!(normalise(bad), None, "{bad}");
        }
    }
}
