//! NHS numbers: ten digits, the last a Modulus 11 check digit.

/// The identifier system of NHS numbers in FHIR.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// The identifier system of ODS organisation codes.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// Why a value is not a valid NHS number, or `Ok` with its ten digits
/// (spaces, as people write them in groups of 3-3-4, are removed).
pub fn check(value: &str) -> Result<String, String> {
    let digits: String = value.chars().filter(|c| *c != ' ').collect();
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("'{value}' is not an NHS number: it must have ten digits"));
    }
    let d: Vec<u32> = digits.bytes().map(|b| (b - b'0') as u32).collect();
    let sum: u32 = d[..9].iter().zip((2..=10).rev()).map(|(x, w)| x * w).sum();
    let check = match 11 - sum % 11 {
        11 => 0,
        10 => {
            return Err(format!(
                "'{value}' is not an NHS number: no valid check digit exists for it"
            ))
        }
        c => c,
    };
    if check != d[9] {
        return Err(format!(
            "'{value}' is not an NHS number: the Modulus 11 check digit should be {check}, not {}",
            d[9]
        ));
    }
    Ok(digits)
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn modulus_eleven() {
        // Published test numbers.
        assert_eq!(check("9434765919").unwrap(), "9434765919");
        assert_eq!(check("943 476 5870").unwrap(), "9434765870");
        assert!(check("9434765918").unwrap_err().contains("should be 9"));
        assert!(check("123456789").is_err());
        assert!(check("94347659AB").is_err());
        // 000000006x would need check digit 10: no such number.
        assert!(check("0000000060").unwrap_err().contains("no valid check digit"));
    }
}
