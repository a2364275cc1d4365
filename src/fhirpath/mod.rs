//! A FHIRPath subset evaluated over `serde_json::Value` resources.
//!
//! The node uses it to index search parameters (whose definitions are FHIRPath
//! expressions) and, later, to evaluate ViewDefinitions and invariants. It is
//! pure: no I/O, and `resolve()` only knows a reference's target type, which is
//! all that search expressions like `subject.where(resolve() is Patient)` need.

mod eval;
mod parse;

/// The choice-element model lives with the FHIR definitions; the evaluator navigates with it.
pub use crate::fhir::choice::ChoiceModel;
pub use eval::{evaluate, evaluate_in, EvalError, Item, FUNCTIONS};
pub use parse::{parse, BinOp, Expr, Literal, ParseError};

/// The functions `expr` calls that this evaluator does not implement.
pub fn unsupported_functions(expr: &Expr) -> Vec<String> {
    fn walk(e: &Expr, out: &mut Vec<String>) {
        match e {
            Expr::Call { target, name, args } => {
                if !FUNCTIONS.contains(&name.as_str()) && !out.contains(name) {
                    out.push(name.clone());
                }
                if let Some(t) = target {
                    walk(t, out);
                }
                args.iter().for_each(|a| walk(a, out));
            }
            Expr::Member(t, _) | Expr::Negate(t) | Expr::Is(t, _) | Expr::As(t, _) => walk(t, out),
            Expr::Index(a, b) | Expr::Binary(_, a, b) => {
                walk(a, out);
                walk(b, out);
            }
            Expr::This | Expr::Literal(_) | Expr::Constant(_) | Expr::Ident(_) => {}
        }
    }
    let mut out = Vec::new();
    walk(expr, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn model() -> ChoiceModel {
        ChoiceModel::new(
            ["value", "deceased", "onset"],
            ["Quantity", "string", "dateTime", "boolean", "CodeableConcept"],
        )
    }

    fn strings(expr: &str, res: &serde_json::Value) -> Vec<String> {
        let e = parse(expr).unwrap();
        evaluate(&e, res, &model())
            .unwrap()
            .into_iter()
            .map(|i| i.to_string_value())
            .collect()
    }

    #[test]
    fn navigates_choices_and_of_type() {
        let obs = json!({"resourceType":"Observation","valueQuantity":{"value":5.4,"unit":"mg"},
            "subject":{"reference":"Patient/1"}});
        assert_eq!(strings("Observation.value.ofType(Quantity).unit", &obs), ["mg"]);
        assert!(strings("(Observation.value as string)", &obs).is_empty());
        assert_eq!(
            strings("Observation.subject.where(resolve() is Patient).reference", &obs),
            ["Patient/1"]
        );
        assert!(strings("Observation.subject.where(resolve() is Group)", &obs).is_empty());
    }

    #[test]
    fn where_exists_and_union() {
        let p = json!({"resourceType":"Patient","telecom":[{"system":"phone","value":"1"},{"system":"email","value":"a@b"}],
            "deceasedBoolean": false, "name":[{"given":["A","B"],"family":"C"}]});
        assert_eq!(strings("Patient.telecom.where(system='email').value", &p), ["a@b"]);
        assert_eq!(strings("Patient.name.given | Patient.name.family", &p), ["A", "B", "C"]);
        assert_eq!(
            strings("Patient.deceased.exists() and Patient.deceased != false", &p),
            ["false"]
        );
        assert_eq!(strings("Patient.name.given.join(',')", &p), ["A,B"]);
        assert_eq!(strings("Patient.name.given.first()", &p), ["A"]);
    }

    #[test]
    fn deep_or_long_expressions_are_refused_with_the_limit_named() {
        let chain = vec!["true"; 3500].join(" and ");
        let parens = format!("{}1{}", "(".repeat(3000), ")".repeat(3000));
        let iifs = format!("{}1{}", "iif(true, ".repeat(3000), ", 0)".repeat(3000));
        let minus = format!("{}1", "-".repeat(3000));
        let steps = format!("Patient{}", ".name".repeat(3000));
        for e in [&chain, &parens, &iifs, &minus, &steps] {
            let err = parse(e).unwrap_err();
            assert!(
                err.message.contains("limit") || err.message.contains("deeper than"),
                "{}",
                err.message
            );
        }
        let err = parse(&"a".repeat(20_000)).unwrap_err();
        assert!(err.message.contains("bytes long"), "{}", err.message);
        // The limit leaves room for real expressions: the longest R4 invariants parse.
        assert!(parse(&vec!["true"; 100].join(" and ")).is_ok());
    }

    #[test]
    fn runaway_evaluations_stop_at_the_budget() {
        let mut p = json!({"resourceType": "Patient"});
        p["name"] = json!((0..200)
            .map(|i| json!({"given": [format!("g{i}"), "x", "y"], "family": "f"}))
            .collect::<Vec<_>>());
        let m = model();
        for expr in [
            "descendants().select(%resource.descendants().select(%resource.descendants()))",
            "descendants().where(%resource.descendants().where(%resource.descendants().exists()).exists())",
            "(descendants() | %resource.descendants().select(%resource.descendants())).isDistinct()",
        ] {
            let e = parse(expr).unwrap();
            let started = std::time::Instant::now();
            let r = evaluate(&e, &p, &m);
            assert!(r.is_err(), "{expr} should stop");
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "{expr} took too long"
            );
        }
    }

    #[test]
    fn escapes_of_multibyte_characters_do_not_split_them() {
        // Found by the fhirpath_parse fuzz target: a backslash before a multi-byte character.
        assert!(parse("'\\é'").is_ok());
        assert!(parse("'a\\€b' = 'x'").is_ok());
        let fuzzed = b"'\\\\JJJJ\x00\x00!~\xc3\xa9\\\xe2\x82\xac";
        let _ = parse(&String::from_utf8_lossy(fuzzed));
        assert!(parse("'\\").is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("Patient.(").is_err());
        assert!(parse("'unterminated").is_err());
    }
}
