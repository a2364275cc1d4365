//! The pathway rules against the published algorithms: every rule branch with an
//! episode that passes and one that fails, the quirks (empty positions, positions
//! beyond S12), and random episodes against a reference implementation written
//! here straight from `../shared/pathways/README.md` (not from the rule files).

use super::*;
use std::collections::HashSet;

fn lib() -> Arc<Library> {
    Library::built_in()
}

fn episode(dx: &[&str]) -> Episode {
    let mut diagnoses: [Option<String>; POSITIONS] = Default::default();
    for (i, c) in dx.iter().enumerate().take(POSITIONS) {
        diagnoses[i] = (!c.is_empty()).then(|| c.to_string());
    }
    Episode {
        provider: "RTD".into(),
        admission_method: Some("21".into()),
        treatment_function: Some("300".into()),
        last_episode: true,
        discharge_date: Some("2025-06-01".into()),
        died: false,
        age: Some(70),
        sex: Some("female".into()),
        diagnoses,
        key: 0,
    }
}

/// The groups an episode falls in.
fn groups(id: &str, dx: &[&str]) -> Vec<String> {
    let p = lib().get(id).unwrap().clone();
    let e = episode(dx);
    let c = p.count([&e], "2025-01-01", "2025-12-31");
    c.groups
        .iter()
        .filter(|(code, g)| code != MORTALITY && g.total.numerator == 1)
        .map(|(code, _)| code.clone())
        .collect()
}

fn in_admissions(id: &str, dx: &[&str]) -> bool {
    groups(id, dx).iter().any(|g| g == ADMISSIONS)
}

// Codes from each list (the lists do not overlap).
const COPD1: &str = "J440";
const COPD2: &str = "J100";
const COPD3: &str = "R060";
const A: &str = "K700"; // arld-specific
const C: &str = "D65X"; // arld-complications
const N: &str = "K710"; // arld-nonspecific-liver
const L: &str = "F100"; // arld-alcohol-specific, not in A
const G: &str = "G400";
const ASSOC: &str = "F019";
const OTHER: &str = "I10X";

#[test]
fn copd_every_branch() {
    assert!(in_admissions("chc-copd", &[COPD1]), "P in list 1");
    assert!(
        !in_admissions("chc-copd", &[OTHER, COPD1]),
        "S1 alone does not count without P in 2/3"
    );
    assert!(in_admissions("chc-copd", &[COPD2, COPD1]), "P infection, S1 COPD");
    assert!(in_admissions("chc-copd", &[COPD3, COPD1]), "P symptom, S1 COPD");
    assert!(!in_admissions("chc-copd", &[COPD2, OTHER]), "P infection, S1 other");
    assert!(
        in_admissions("chc-copd", &[COPD2, COPD3, COPD1]),
        "P, S1 infection/symptom, S2 COPD"
    );
    assert!(in_admissions("chc-copd", &[COPD3, COPD2, COPD1]));
    assert!(
        !in_admissions("chc-copd", &[COPD2, OTHER, COPD1]),
        "S1 other breaks the S2 rule"
    );
    assert!(
        !in_admissions("chc-copd", &[COPD2, "", COPD1]),
        "an empty S1 is in no list"
    );
    assert!(
        !in_admissions("chc-copd", &[COPD2, COPD3, COPD2, COPD1]),
        "S3 is not read by COPD"
    );
    assert!(
        !in_admissions("chc-copd", &["", COPD1]),
        "an empty primary is in no list"
    );
}

#[test]
fn arld_every_category() {
    let g = |dx: &[&str]| groups("chc-arld", dx);
    let has = |dx: &[&str], group: &str| g(dx).iter().any(|x| x == group);
    // 1: P in A.
    assert!(has(&[A], "primary") && has(&[A], "admissions") && !has(&[A], "uplift"));
    // 2: P in CN, S1 in A.
    assert!(has(&[C, A], "uplift") && has(&[N, A], "uplift"));
    assert!(!has(&[C, OTHER], "admissions"));
    // 3: P in CN, S1 in CN, one of S2..S12 in A.
    assert!(has(&[C, N, OTHER, A], "uplift"));
    assert!(!has(&[C, N, OTHER, OTHER], "admissions"));
    // 4: P in CN, S1 in L, S2..S12 in A.
    assert!(has(&[N, L, A], "uplift"));
    assert!(
        !has(&[C, L, OTHER], "admissions"),
        "P in C, not N: category 9 does not apply"
    );
    // 5: P in CN, S1 not in ALL (empty counts), S2..S12 in A.
    assert!(has(&[C, OTHER, A], "uplift"));
    assert!(has(&[C, "", OTHER, OTHER, A], "uplift"), "an empty S1 is 'not in ALL'");
    // 6: P in L, S1 in CN, S2..S12 in A.
    assert!(has(&[L, C, A], "uplift"));
    // 7: P in N, S1 in C, S2..S12 in L.
    assert!(has(&[N, C, L], "uplift"));
    assert!(!has(&[N, C, OTHER], "admissions"));
    // 8: P in C, S1 in N, S2..S12 in L.
    assert!(has(&[C, N, OTHER, L], "uplift"));
    // 9: P in N, one of S1..S12 in L.
    assert!(has(&[N, OTHER, OTHER, L], "uplift"));
    assert!(!has(&[N, OTHER, OTHER, OTHER], "admissions"));
    // 10: P in L, one of S1..S12 in A.
    assert!(has(&[L, OTHER, A], "uplift"));
    assert!(!has(&[L, OTHER, OTHER], "admissions"));
    // 11: P not in ALL (empty counts), one of S1..S12 in A: co-morbid, not the algorithm.
    assert!(has(&[OTHER, A], "comorbid") && !has(&[OTHER, A], "admissions"));
    assert!(has(&["", OTHER, A], "comorbid"), "an empty primary is 'not in ALL'");
    assert!(!has(&[OTHER, OTHER], "comorbid"));
    // Positions beyond S12 are never read.
    let mut far = vec![OTHER; 13];
    far.push(A);
    assert!(!has(&far, "comorbid"));
    let mut s12 = vec![OTHER; 12];
    s12.push(A);
    assert!(has(&s12, "comorbid"), "S12 is read");
}

#[test]
fn epilepsy_every_branch() {
    assert!(in_admissions("chc-epilepsy", &[G]));
    assert!(in_admissions("chc-epilepsy", &["R568", OTHER, G]));
    assert!(!in_admissions("chc-epilepsy", &["R568", OTHER]));
    assert!(in_admissions("chc-epilepsy", &[ASSOC, G]));
    assert!(!in_admissions("chc-epilepsy", &[ASSOC, OTHER]));
    assert!(
        !in_admissions("chc-epilepsy", &[OTHER, G]),
        "G in a secondary alone is not enough"
    );
}

#[test]
fn cohort_filters_and_mortality() {
    let p = lib().get("chc-copd").unwrap().clone();
    let base = episode(&[COPD1]);
    let count = |e: &Episode| p.count([e], "2025-01-01", "2025-12-31").groups[0].1.total;
    assert_eq!(count(&base).numerator, 1);
    assert_eq!(
        count(&Episode {
            admission_method: Some("11".into()),
            ..base.clone()
        })
        .population,
        0,
        "elective"
    );
    assert_eq!(
        count(&Episode {
            treatment_function: Some("100".into()),
            ..base.clone()
        })
        .population,
        0,
        "surgery"
    );
    assert_eq!(
        count(&Episode {
            last_episode: false,
            ..base.clone()
        })
        .population,
        0,
        "not the last episode"
    );
    assert_eq!(
        count(&Episode {
            discharge_date: Some("2026-01-01".into()),
            ..base.clone()
        })
        .population,
        0
    );
    assert_eq!(
        count(&Episode {
            discharge_date: None,
            ..base.clone()
        })
        .population,
        0,
        "still in hospital"
    );
    // ARLD has no specialty filter.
    let arld = lib().get("chc-arld").unwrap().clone();
    let surgical = Episode {
        treatment_function: Some("100".into()),
        ..episode(&[A])
    };
    assert_eq!(
        arld.count([&surgical], "2025-01-01", "2025-12-31").groups[0]
            .1
            .total
            .numerator,
        1
    );
    // Mortality: deaths among the admissions group only.
    let died = Episode {
        died: true,
        ..base.clone()
    };
    let other_died = Episode {
        died: true,
        ..episode(&[OTHER])
    };
    let c = p.count([&died, &base, &other_died], "2025-01-01", "2025-12-31");
    let mortality = &c.groups.iter().find(|(g, _)| g == MORTALITY).unwrap().1;
    assert_eq!((mortality.total.population, mortality.total.numerator), (2, 1));
    assert_eq!((c.groups[0].1.total.population, c.groups[0].1.total.numerator), (3, 2));
    assert_eq!(
        mortality.strata[&("age-band".to_string(), "65-74".to_string())].population,
        2
    );
    assert_eq!(
        mortality.strata[&("month".to_string(), "2025-06".to_string())].numerator,
        1
    );
}

/// The shared transcription of the algorithms, when present beside the project.
fn shared_lists() -> Option<HashMap<String, HashSet<String>>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pathways/code-lists.csv");
    let Ok(text) = std::fs::read_to_string(&path) else {
        assert!(std::env::var("CI").is_err(), "{} is missing under CI", path.display());
        println!("SKIPPED: {} is missing", path.display());
        return None;
    };
    let mut lists: HashMap<String, HashSet<String>> = HashMap::new();
    for line in text.lines().skip(1) {
        let (l, c) = line.split_once(',').unwrap();
        lists.entry(l.to_string()).or_default().insert(c.trim().to_string());
    }
    Some(lists)
}

#[test]
fn value_sets_match_the_published_lists() {
    let Some(lists) = shared_lists() else { return };
    let sets = value_sets(&serde_json::from_str(BUILT_IN_VALUESETS).unwrap()).unwrap();
    for (name, codes) in &lists {
        let url = format!("https://pennine.nhs.example/fhir/ValueSet/chc-{name}");
        assert_eq!(&**sets.get(&url).unwrap_or_else(|| panic!("no {url}")), codes, "{name}");
    }
}

/// A reference implementation of the three algorithms, from the README's text.
fn reference(
    lists: &HashMap<String, HashSet<String>>,
    dx: &[Option<String>; POSITIONS],
) -> (bool, bool, bool, bool, bool) {
    let inl = |i: usize, l: &str| dx[i].as_ref().is_some_and(|c| lists[l].contains(c));
    let any = |from: usize, l: &str| (from..POSITIONS).any(|i| inl(i, l));
    // COPD statuses.
    let status = |i: usize| {
        if inl(i, "copd-list-1") {
            1
        } else if inl(i, "copd-list-2") {
            2
        } else if inl(i, "copd-list-3") {
            3
        } else {
            0
        }
    };
    let (p, s1, s2) = (status(0), status(1), status(2));
    let copd = p == 1 || (matches!(p, 2 | 3) && s1 == 1) || (matches!(p, 2 | 3) && matches!(s1, 2 | 3) && s2 == 1);
    // ARLD categories.
    let (a, c, n, cn, l, all) = (
        "arld-specific",
        "arld-complications",
        "arld-nonspecific-liver",
        "arld-complications-and-nonspecific",
        "arld-alcohol-specific",
        "arld-all-lists",
    );
    let cat = [
        inl(0, a),
        inl(0, cn) && inl(1, a),
        inl(0, cn) && inl(1, cn) && any(2, a),
        inl(0, cn) && inl(1, l) && any(2, a),
        inl(0, cn) && !inl(1, all) && any(2, a),
        inl(0, l) && inl(1, cn) && any(2, a),
        inl(0, n) && inl(1, c) && any(2, l),
        inl(0, c) && inl(1, n) && any(2, l),
        inl(0, n) && any(1, l),
        inl(0, l) && any(1, a),
        !inl(0, all) && any(1, a),
    ];
    let arld = cat[..10].iter().any(|x| *x);
    let uplift = !cat[0] && cat[1..10].iter().any(|x| *x);
    let comorbid = cat[10];
    let g = "epilepsy-g40-g41";
    let epilepsy = inl(0, g)
        || (dx[0].as_deref() == Some("R568") && any(1, g))
        || (inl(0, "epilepsy-associated-primary") && any(1, g));
    (copd, arld, uplift, comorbid, epilepsy)
}

#[test]
fn random_episodes_agree_with_the_reference() {
    let Some(lists) = shared_lists() else { return };
    let mut pool: Vec<String> = lists.values().flatten().cloned().collect();
    pool.sort();
    pool.extend(["R568", "I10X", "Z999"].map(String::from));
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let library = lib();
    let [copd, arld, epilepsy] = ["chc-copd", "chc-arld", "chc-epilepsy"].map(|id| library.get(id).unwrap().clone());
    let mut hits = [0usize; 5];
    for _ in 0..20_000 {
        let mut e = episode(&[]);
        for d in e.diagnoses.iter_mut() {
            // Dense at the front (where the rules look), with empty positions.
            *d = match next() % 4 {
                0 => None,
                _ => Some(pool[(next() % pool.len() as u64) as usize].clone()),
            };
        }
        let want = reference(&lists, &e.diagnoses);
        let member = |p: &Pathway, group: &str| {
            let c = p.count([&e], "2025-01-01", "2025-12-31");
            c.groups.iter().find(|(g, _)| g == group).unwrap().1.total.numerator == 1
        };
        let got = (
            member(&copd, ADMISSIONS),
            member(&arld, ADMISSIONS),
            member(&arld, "uplift"),
            member(&arld, "comorbid"),
            member(&epilepsy, ADMISSIONS),
        );
        assert_eq!(got, want, "{:?}", e.diagnoses);
        assert_eq!(
            member(&arld, "primary"),
            e.diagnoses[0]
                .as_ref()
                .is_some_and(|c| lists["arld-specific"].contains(c))
        );
        for (i, h) in [want.0, want.1, want.2, want.3, want.4].into_iter().enumerate() {
            hits[i] += h as usize;
        }
    }
    // The random episodes reached every output, so the comparison means something.
    assert!(hits.iter().all(|h| *h > 20), "{hits:?}");
}

#[test]
fn broken_pathways_are_refused_with_the_reason() {
    let sets = value_sets(&serde_json::from_str(BUILT_IN_VALUESETS).unwrap()).unwrap();
    let good: Value = serde_json::from_str(BUILT_IN[0].1).unwrap();
    let broken = |edit: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        edit(&mut v);
        Pathway::compile("x.json", &v.to_string(), &sets)
            .unwrap_err()
            .to_string()
    };
    assert!(broken(&|v| v["rules"]["lists"]["L1"] = json!("https://nowhere/ValueSet/x")).contains("no ValueSet"));
    assert!(broken(&|v| v["rules"]["categories"]["copd-primary"]["all"][0]["at"] = json!("S13")).contains("S13"));
    assert!(
        broken(&|v| v["rules"]["groups"]["admissions"]["any"][0] = json!("nope")).contains("no category named nope")
    );
    assert!(broken(&|v| v["measure"]["group"].as_array_mut().unwrap().truncate(1)).contains("differ"));
    assert!(broken(&|v| v["rules"]["bogus"] = json!(1)).contains("bogus"));
    assert!(
        broken(&|v| v["rules"]["categories"]["copd-primary"]["all"][0] = json!({"anyOf": "S2-S1", "in": ["L1"]}))
            .contains("range")
    );
}
