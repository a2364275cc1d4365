//! Which searches a federated count may use. A count over a free search is a
//! tracker's tool: `identifier=` asks whether one person is in a region,
//! `birthdate=ne…` takes one person out of a cell, day-precise ranges bisect
//! down to one person. Federated counts therefore accept only approved
//! parameters of approved types, in generalised forms: codes without
//! modifiers, one value each, and dates as whole-year ranges (`geYYYY`,
//! `ltYYYY`). Both the hub and each node check this.

use super::QueryProblem;

/// How an approved parameter may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// A code, `system|code` or `code`: one value, no modifier.
    Token,
    /// `true` or `false`.
    Boolean,
    /// `geYYYY` or `ltYYYY`, at most once each.
    YearRange,
}

/// The approved types and parameters.
const APPROVED: &[(&str, &[(&str, Form)])] = &[
    (
        "Patient",
        &[
            ("gender", Form::Token),
            ("deceased", Form::Boolean),
            ("birthdate", Form::YearRange),
        ],
    ),
    (
        "Condition",
        &[
            ("code", Form::Token),
            ("clinical-status", Form::Token),
            ("category", Form::Token),
            ("onset-date", Form::YearRange),
        ],
    ),
    (
        "Observation",
        &[
            ("code", Form::Token),
            ("category", Form::Token),
            ("status", Form::Token),
            ("date", Form::YearRange),
        ],
    ),
    (
        "Encounter",
        &[
            ("class", Form::Token),
            ("status", Form::Token),
            ("date", Form::YearRange),
        ],
    ),
    (
        "Procedure",
        &[
            ("code", Form::Token),
            ("status", Form::Token),
            ("date", Form::YearRange),
        ],
    ),
    (
        "MedicationRequest",
        &[
            ("code", Form::Token),
            ("status", Form::Token),
            ("authoredon", Form::YearRange),
        ],
    ),
    (
        "DiagnosticReport",
        &[
            ("code", Form::Token),
            ("status", Form::Token),
            ("date", Form::YearRange),
        ],
    ),
];

fn refuse(expression: &str, message: String) -> QueryProblem {
    QueryProblem {
        message,
        expression: expression.to_string(),
    }
}

/// The approved parameters of `rtype`, as text for error messages.
fn listing(params: &[(&str, Form)]) -> String {
    params
        .iter()
        .map(|(name, form)| match form {
            Form::Token => format!("{name}=<code>"),
            Form::Boolean => format!("{name}=true|false"),
            Form::YearRange => format!("{name}=geYYYY / {name}=ltYYYY"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks the search parameters of a federated count (without `_summary`,
/// `_count` and `_format`, which the caller has taken out).
pub fn check(rtype: &str, pairs: &[(String, String)]) -> Result<(), QueryProblem> {
    let Some((_, params)) = APPROVED.iter().find(|(t, _)| *t == rtype) else {
        return Err(refuse(
            rtype,
            format!(
                "federated counts are approved for {} only",
                APPROVED.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in pairs {
        let Some((name, form)) = params.iter().find(|(n, _)| n == key) else {
            return Err(refuse(
                key,
                format!(
                    "'{key}' is not approved for federated counts of {rtype} (approved: {}; no modifiers or chains)",
                    listing(params)
                ),
            ));
        };
        let bad = |why: &str| refuse(key, format!("{name}={value}: {why}"));
        match form {
            Form::Token => {
                if value.is_empty() || value.contains(',') || value.len() > 256 {
                    return Err(bad("give exactly one code"));
                }
            }
            Form::Boolean => {
                if value != "true" && value != "false" {
                    return Err(bad("give true or false"));
                }
            }
            Form::YearRange => {
                // By `get`, not `split_at`: the value may start with a multi-byte character.
                let (prefix, year) = (value.get(..2).unwrap_or(""), value.get(2..).unwrap_or(""));
                if !(prefix == "ge" || prefix == "lt") || year.len() != 4 || !year.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad("give whole years as geYYYY or ltYYYY"));
                }
                let tag = format!("{name}:{prefix}");
                if seen.contains(&tag) {
                    return Err(bad("each bound may be given once"));
                }
                seen.push(tag);
                continue;
            }
        }
        if seen.contains(&name.to_string()) {
            return Err(bad("each parameter may be given once"));
        }
        seen.push(name.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &str) -> Vec<(String, String)> {
        form_urlencoded::parse(q.as_bytes()).into_owned().collect()
    }

    #[test]
    fn generalised_questions_pass_and_trackers_do_not() {
        assert!(check(
            "Patient",
            &pairs("gender=female&birthdate=ge1940&birthdate=lt1950&deceased=true")
        )
        .is_ok());
        assert!(check("Condition", &pairs("code=http://snomed.info/sct|44054006")).is_ok());
        for (t, q) in [
            ("Patient", "identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919"),
            ("Patient", "birthdate=ne1945-11-27"),
            ("Patient", "birthdate=ge1945-11-27"),
            ("Patient", "birthdate=ge1945&birthdate=ge1946"),
            ("Patient", "gender:not=male"),
            ("Patient", "_id=abc"),
            ("Patient", "name=Smith"),
            ("Patient", "address-postalcode=LS1"),
            ("Patient", "gender=male,female"),
            ("Patient", "birthdate=€1945"),
            ("Patient", "birthdate=é"),
            ("Observation", "subject=Patient/1"),
            ("AuditEvent", ""),
        ] {
            assert!(check(t, &pairs(q)).is_err(), "{t}?{q} must be refused");
        }
    }
}
