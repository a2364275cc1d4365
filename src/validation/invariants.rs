//! Invariants (FHIRPath constraints) of the base definitions and of profiles,
//! compiled once and evaluated with our FHIRPath engine.
//!
//! An invariant the engine cannot evaluate is not guessed at: it is compiled
//! as skipped, with the reason (a function we do not implement, a syntax we
//! do not parse), and `skipped()` lists them. Best-practice invariants (dom-6
//! and friends) are guidance, not conformance, and are skipped as such. An
//! evaluation error at run time (an unexpected collection, say) is not an
//! issue either: the invariant counts as not evaluated for that resource.

use crate::fhir::{Issue, IssueCode};
use crate::fhirpath::{evaluate_in, Expr, Item};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Deserialize)]
pub struct RawInvariant {
    pub key: String,
    pub severity: String,
    pub human: String,
    pub expression: String,
    #[serde(default, rename = "bestPractice")]
    pub best_practice: bool,
}

#[derive(Debug)]
pub struct Invariant {
    pub key: String,
    pub error: bool,
    pub human: String,
    pub source: String,
    expr: Expr,
    /// Whether the expression reads `%rootResource` (most do not: no variable to set up).
    uses_root: bool,
}

/// Why an invariant is not evaluated.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub key: String,
    pub on: String,
    pub reason: String,
}

/// Compiles an invariant declared on `on` (a type or element path), or says why it is skipped.
pub fn compile(raw: &RawInvariant, on: &str) -> Result<Invariant, Skipped> {
    let skipped = |reason: String| Skipped {
        key: raw.key.clone(),
        on: on.to_string(),
        reason,
    };
    if raw.best_practice {
        return Err(skipped("best-practice guidance, not conformance".into()));
    }
    let expr = crate::fhirpath::parse(&raw.expression).map_err(|e| skipped(format!("not parsed: {e}")))?;
    let missing = crate::fhirpath::unsupported_functions(&expr);
    if !missing.is_empty() {
        return Err(skipped(format!("uses {}", missing.join("(), ") + "()")));
    }
    Ok(Invariant {
        key: raw.key.clone(),
        error: raw.severity == "error",
        human: raw.human.clone(),
        source: on.to_string(),
        expr,
        uses_root: raw.expression.contains("%rootResource"),
    })
}

impl Invariant {
    /// Evaluates the invariant on `focus` inside `root`; an issue if it does not hold.
    /// Empty results hold (the constraint has nothing to say), as do evaluation errors.
    /// `root` is `%resource` (the contained resource, inside one) and `container` is
    /// `%rootResource` (the resource that contains it, or the same).
    pub fn check<'v>(
        &self,
        focus: &'v Value,
        ty: Option<&'v str>,
        root: &'v Value,
        container: &'v Value,
        at: &str,
    ) -> Option<Issue> {
        let model = &crate::fhir::definitions::get().choice;
        let item = Item::Node { value: focus, ty };
        let vars = if self.uses_root {
            vec![(
                "rootResource".to_string(),
                Item::Node {
                    value: container,
                    ty: None,
                },
            )]
        } else {
            Vec::new()
        };
        match evaluate_in(&self.expr, &item, root, model, &vars) {
            Ok(r) => {
                let fails = matches!(r.as_slice(), [Item::Boolean(false)]);
                fails.then(|| {
                    let text = format!("{} ({})", self.human, self.key);
                    let issue = if self.error {
                        Issue::error(IssueCode::Invariant, text)
                    } else {
                        Issue::warning(IssueCode::Invariant, text)
                    };
                    issue.at(at)
                })
            }
            Err(e) => {
                tracing::trace!(key = %self.key, error = %e, "invariant not evaluated");
                None
            }
        }
    }
}
