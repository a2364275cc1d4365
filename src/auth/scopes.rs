//! SMART v2 system scopes (`system/Patient.rs`, `system/*.cruds`) and Pennine's
//! operation scopes (`pennine/aggregate`, `pennine/run`, `pennine/audit`).

use std::fmt;

/// One scope. Resource scopes carry a type (or `*`) and a set of the letters
/// c, r, u, d, s; operation scopes are a name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource { rtype: String, perms: Perms },
    Operation(String),
}

/// A set of SMART v2 permission letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Perms(u8);

impl Perms {
    pub const C: Perms = Perms(1);
    pub const R: Perms = Perms(2);
    pub const U: Perms = Perms(4);
    pub const D: Perms = Perms(8);
    pub const S: Perms = Perms(16);

    pub fn parse(s: &str) -> Option<Perms> {
        let mut p = 0u8;
        let mut last = 0u8;
        for ch in s.chars() {
            let bit = match ch {
                'c' => 1,
                'r' => 2,
                'u' => 4,
                'd' => 8,
                's' => 16,
                _ => return None,
            };
            // SMART v2 requires the letters in order c, r, u, d, s, each once.
            if bit <= last {
                return None;
            }
            last = bit;
            p |= bit;
        }
        (p != 0).then_some(Perms(p))
    }

    pub fn contains(self, other: Perms) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn intersect(self, other: Perms) -> Perms {
        Perms(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Perms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (bit, ch) in [(1, 'c'), (2, 'r'), (4, 'u'), (8, 'd'), (16, 's')] {
            if self.0 & bit != 0 {
                write!(f, "{ch}")?;
            }
        }
        Ok(())
    }
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        if let Some(op) = s.strip_prefix("pennine/") {
            return (!op.is_empty() && op.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
                .then(|| Scope::Operation(op.to_string()));
        }
        let rest = s.strip_prefix("system/")?;
        // SMART v1 `.read`/`.write` are accepted as their v2 equivalents.
        let (rtype, perms) = rest.rsplit_once('.')?;
        let perms = match perms {
            "read" => Perms(2 | 16),
            "write" => Perms(1 | 4 | 8),
            "*" => Perms(31),
            p => Perms::parse(p.split('?').next().unwrap_or(p))?,
        };
        let valid_type = rtype == "*" || crate::fhir::is_resource_type(rtype);
        valid_type.then(|| Scope::Resource {
            rtype: rtype.to_string(),
            perms,
        })
    }

    /// What `self` (requested) and `other` (allowed) have in common.
    pub fn intersect(&self, other: &Scope) -> Option<Scope> {
        match (self, other) {
            (Scope::Operation(a), Scope::Operation(b)) if a == b => Some(self.clone()),
            (Scope::Resource { rtype: a, perms: p }, Scope::Resource { rtype: b, perms: q }) => {
                let rtype = match (a.as_str(), b.as_str()) {
                    ("*", t) | (t, "*") => t.to_string(),
                    (x, y) if x == y => x.to_string(),
                    _ => return None,
                };
                let perms = p.intersect(*q);
                (!perms.is_empty()).then_some(Scope::Resource { rtype, perms })
            }
            _ => None,
        }
    }

    /// Whether this scope allows `perm` on resources of `rtype`.
    pub fn allows(&self, rtype: &str, perm: Perms) -> bool {
        match self {
            Scope::Resource { rtype: t, perms } => (t == "*" || t == rtype) && perms.contains(perm),
            Scope::Operation(_) => false,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Resource { rtype, perms } => write!(f, "system/{rtype}.{perms}"),
            Scope::Operation(op) => write!(f, "pennine/{op}"),
        }
    }
}

/// The grant: every requested scope intersected with every allowed one.
pub fn grant(requested: &[Scope], allowed: &[Scope]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    for r in requested {
        for a in allowed {
            if let Some(s) = r.intersect(a) {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_intersects_smart_v2_scopes() {
        let all = Scope::parse("system/*.cruds").unwrap();
        let vendor = Scope::parse("system/*.cu").unwrap();
        assert_eq!(all.intersect(&vendor).unwrap().to_string(), "system/*.cu");
        let p = Scope::parse("system/Patient.rs").unwrap();
        assert_eq!(p.intersect(&vendor), None);
        assert_eq!(
            Scope::parse("system/Patient.rs")
                .unwrap()
                .intersect(&Scope::parse("system/*.r").unwrap())
                .unwrap()
                .to_string(),
            "system/Patient.r"
        );
        assert!(Scope::parse("system/Patient.sr").is_none(), "letters out of order");
        assert!(Scope::parse("system/Nope.r").is_none());
        assert!(Scope::parse("patient/Patient.r").is_none(), "only system scopes");
        assert_eq!(
            Scope::parse("system/Observation.read").unwrap().to_string(),
            "system/Observation.rs"
        );
        let granted = grant(
            &[
                Scope::parse("system/*.cruds").unwrap(),
                Scope::parse("pennine/aggregate").unwrap(),
            ],
            &[vendor],
        );
        assert_eq!(
            granted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["system/*.cu"]
        );
    }
}
