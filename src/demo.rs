//! Synthetic regional data for `pennine demo` and the federation benchmark:
//! deterministic (seeded), plausible, and different from region to region so
//! that pooled answers visibly differ from any one region's.
//!
//! Patients carry valid test-range NHS numbers (999 prefix, Modulus 11 check
//! digit), a gender, a birth date and a postcode district of their region;
//! with `clinical` they also get encounters, conditions and observations
//! (body weight, systolic blood pressure, HbA1c) coded in SNOMED CT and LOINC.

use serde_json::{json, Value};

/// SplitMix64: small, fast, and good enough for synthetic data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Normal(mean, sd) by Box–Muller.
    pub fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        mean + sd * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// A test-range NHS number (999xxxxxxx) with a valid Modulus 11 check digit.
pub fn nhs_number(rng: &mut Rng) -> String {
    loop {
        let mut digits = [9u32, 9, 9, 0, 0, 0, 0, 0, 0];
        for d in digits.iter_mut().skip(3) {
            *d = rng.below(10) as u32;
        }
        let sum: u32 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u32)).sum();
        let check = match 11 - sum % 11 {
            11 => 0,
            10 => continue, // no valid check digit: draw again
            c => c,
        };
        return digits
            .iter()
            .chain(std::iter::once(&check))
            .map(|d| d.to_string())
            .collect();
    }
}

/// How a region's population differs (prevalences and means are illustrative).
struct Profile {
    postcodes: &'static [&'static str],
    diabetes: f64,
    hypertension: f64,
    asthma: f64,
    weight_shift: f64,
}

fn profile(region: &str) -> Profile {
    match region {
        "nenc" => Profile {
            postcodes: &["NE1", "NE6", "SR1", "DH1", "TS1", "CA1"],
            diabetes: 0.085,
            hypertension: 0.17,
            asthma: 0.07,
            weight_shift: 2.0,
        },
        "yh" => Profile {
            postcodes: &["LS1", "S1", "BD1", "HU1", "YO1", "WF1"],
            diabetes: 0.078,
            hypertension: 0.15,
            asthma: 0.065,
            weight_shift: 1.0,
        },
        "gm" => Profile {
            postcodes: &["M1", "M14", "OL1", "BL1", "SK1", "WN1"],
            diabetes: 0.092,
            hypertension: 0.16,
            asthma: 0.075,
            weight_shift: 1.5,
        },
        _ => Profile {
            postcodes: &["L1", "L8", "CH1", "PR1", "WA1", "LA1"],
            diabetes: 0.07,
            hypertension: 0.14,
            asthma: 0.06,
            weight_shift: 0.5,
        },
    }
}

const GIVEN_F: [&str; 8] = ["Olivia", "Amelia", "Isla", "Ava", "Mia", "Grace", "Freya", "Aisha"];
const GIVEN_M: [&str; 8] = ["Oliver", "George", "Noah", "Arthur", "Harry", "Leo", "Jack", "Mohammed"];
const FAMILY: [&str; 10] = [
    "Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Khan", "Patel",
];

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}], "text": display})
}

const SNOMED: &str = "http://snomed.info/sct";
const LOINC: &str = "http://loinc.org";

/// One patient's resources as transaction entries (the patient first).
pub fn patient_entries(region: &str, rng: &mut Rng, clinical: bool) -> Vec<Value> {
    let p = profile(region);
    let female = rng.below(2) == 0;
    let year = 1935 + rng.below(85) as i32;
    let birth = format!("{year:04}-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28));
    let age = 2026 - year;
    let patient_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let mut patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs_number(rng)}],
        "name": [{"use": "official",
                  "family": FAMILY[rng.below(FAMILY.len() as u64) as usize],
                  "given": [if female { GIVEN_F[rng.below(8) as usize] } else { GIVEN_M[rng.below(8) as usize] }]}],
        "gender": if female { "female" } else { "male" },
        "birthDate": birth,
        "address": [{"use": "home", "postalCode": format!("{} {}{}{}",
            p.postcodes[rng.below(p.postcodes.len() as u64) as usize], rng.below(10),
            (b'A' + rng.below(26) as u8) as char, (b'A' + rng.below(26) as u8) as char), "country": "GB"}]
    });
    if age > 75 && rng.unit() < 0.08 {
        patient["deceasedDateTime"] = json!(format!("2025-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28)));
    }
    let mut entries = vec![json!({"fullUrl": patient_url, "resource": patient,
        "request": {"method": "POST", "url": "Patient"}})];
    if !clinical {
        return entries;
    }
    let subject = json!({"reference": patient_url});
    let encounter_url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
    let (class, display) = match rng.below(10) {
        0 => ("EMER", "emergency"),
        1 | 2 => ("IMP", "inpatient encounter"),
        _ => ("AMB", "ambulatory"),
    };
    let day = format!("2025-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28));
    entries.push(json!({"fullUrl": encounter_url, "resource": {
        "resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class, "display": display},
        "subject": subject, "period": {"start": format!("{day}T09:00:00+00:00"), "end": format!("{day}T10:30:00+00:00")}
    }, "request": {"method": "POST", "url": "Encounter"}}));
    let age_factor = (age as f64 / 60.0).min(1.6);
    let conditions = [
        ("44054006", "Diabetes mellitus type 2", p.diabetes * age_factor),
        ("38341003", "Hypertensive disorder", p.hypertension * age_factor),
        ("195967001", "Asthma", p.asthma),
    ];
    let mut diabetic = false;
    for (code, name, prevalence) in conditions {
        if rng.unit() < prevalence {
            diabetic |= code == "44054006";
            entries.push(json!({"resource": {
                "resourceType": "Condition",
                "clinicalStatus": coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
                "verificationStatus": coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"),
                "code": coding(SNOMED, code, name),
                "subject": subject, "encounter": {"reference": encounter_url},
                "onsetDateTime": format!("{}-{:02}-01", 2026 - rng.below(20) as i32, 1 + rng.below(12))
            }, "request": {"method": "POST", "url": "Condition"}}));
        }
    }
    let weight = rng
        .normal(if female { 70.0 } else { 84.0 } + p.weight_shift, 13.0)
        .clamp(35.0, 200.0);
    let systolic = rng
        .normal(118.0 + 0.4 * (age as f64 - 40.0).max(0.0), 14.0)
        .clamp(80.0, 220.0);
    let mut observations = vec![
        ("29463-7", "Body weight", (weight * 10.0).round() / 10.0, "kg"),
        ("8480-6", "Systolic blood pressure", systolic.round(), "mm[Hg]"),
    ];
    if diabetic || rng.unit() < 0.2 {
        let hba1c = rng.normal(if diabetic { 7.6 } else { 5.4 }, 0.7).clamp(4.0, 14.0);
        observations.push((
            "4548-4",
            "Hemoglobin A1c/Hemoglobin.total in Blood",
            (hba1c * 10.0).round() / 10.0,
            "%",
        ));
    }
    for (code, name, value, unit) in observations {
        entries.push(json!({"resource": {
            "resourceType": "Observation", "status": "final",
            "category": [coding("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs", "Vital Signs")],
            "code": coding(LOINC, code, name),
            "subject": subject, "encounter": {"reference": encounter_url},
            "effectiveDateTime": format!("{day}T09:30:00+00:00"),
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
        }, "request": {"method": "POST", "url": "Observation"}}));
    }
    entries
}

/// Transaction Bundles of `per_bundle` patients each, `patients` in all.
pub fn bundles(region: &str, seed: u64, patients: usize, per_bundle: usize, clinical: bool) -> Vec<Value> {
    let mut rng = Rng::new(
        seed ^ region
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64)),
    );
    let mut out = Vec::new();
    let mut left = patients;
    while left > 0 {
        let n = left.min(per_bundle.max(1));
        left -= n;
        let entries: Vec<Value> = (0..n)
            .flat_map(|_| patient_entries(region, &mut rng, clinical))
            .collect();
        out.push(json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}));
    }
    out
}

/// A demo client: its id, roles, region and secret (printed by the demo; development only).
#[derive(Debug, Clone)]
pub struct DemoClient {
    pub id: String,
    pub roles: &'static str,
    pub region: Option<String>,
    pub secret: String,
}

/// Providers (ODS codes) of each demo region; the first of `nwc` has a higher death
/// rate after COPD admissions, so the demo's benchmark has a provider to flag.
fn providers(region: &str) -> [&'static str; 3] {
    match region {
        "nenc" => ["RTD", "RXP", "RR7"],
        "yh" => ["RCF", "RAE", "RWY"],
        "gm" => ["R0A", "RMC", "RM3"],
        _ => ["REM", "RBL", "RVY"],
    }
}

/// A seeded SUS admitted-patient-care extract (the `sus-apc` header) of `episodes`
/// emergency and elective spells of one episode each, discharged in 2025: COPD,
/// ARLD and epilepsy admissions among others, deaths rising with age.
pub fn sus_extract(region: &str, seed: u64, episodes: usize) -> String {
    let mut rng = Rng::new(
        seed ^ 0x5e5
            ^ region
                .bytes()
                .fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b as u64)),
    );
    let providers = providers(region);
    let mut out = String::from(
        "spell_id,episode_number,last_episode_in_spell,nhs_number,sex,age_on_admission,provider_code,admission_method,treatment_function_code,admission_date,discharge_date,episode_start_date,episode_end_date,discharge_method",
    );
    for i in 1..=20 {
        out.push_str(&format!(",diag_{i:02}"));
    }
    // (primary, first secondary) by kind of admission.
    let copd = [
        ("J44.1", ""),
        ("J44.0", "J45.9"),
        ("J22", "J44.9"),
        ("R06.0", "J44.1"),
        ("J18.9", "J43.9"),
    ];
    let arld = [
        ("K70.3", ""),
        ("K70.4", "F10.2"),
        ("I85.9", "K70.3"),
        ("R18", "K70.1"),
        ("I10", "K70.0"),
    ];
    let epilepsy = [("G40.9", ""), ("G41.0", ""), ("R56.8", "G40.3"), ("F01.9", "G40.6")];
    let other = [
        ("I21.9", "I10"),
        ("N39.0", ""),
        ("S72.0", "W19"),
        ("I63.9", "I48"),
        ("E11.9", ""),
    ];
    for n in 0..episodes {
        let age = 18 + rng.below(80) as u32;
        let sex = 1 + rng.below(2);
        let provider = providers[rng.below(3) as usize];
        let (p, s1) = match rng.below(10) {
            0..=3 => copd[rng.below(copd.len() as u64) as usize],
            4..=5 => arld[rng.below(arld.len() as u64) as usize],
            6 => epilepsy[rng.below(epilepsy.len() as u64) as usize],
            _ => other[rng.below(other.len() as u64) as usize],
        };
        let is_copd = copd.iter().any(|(cp, _)| *cp == p);
        let mut risk = 0.04 + 0.004 * (age.saturating_sub(40)) as f64;
        if is_copd && region == "nwc" && provider == providers[0] {
            risk *= 2.5;
        }
        let died = rng.unit() < risk;
        let elective = rng.below(8) == 0;
        let month = 1 + rng.below(12);
        let admitted = format!("2025-{month:02}-{:02}", 1 + rng.below(20));
        let discharged = format!("2025-{month:02}-{:02}", 21 + rng.below(7));
        out.push_str(&format!(
            "\n{region}-{n},1,1,{},{sex},{age},{provider},{},{},{admitted},{discharged},{admitted},{discharged},{},{p},{s1}{}",
            nhs_number(&mut rng),
            if elective { "11" } else { "21" },
            ["300", "340", "430", "100"][rng.below(4) as usize],
            if died { "4" } else { "1" },
            ",".repeat(18),
        ));
    }
    out.push('\n');
    out
}

/// Writes a clients file for the demo's own clients: a vendor and an analyst per
/// region, a partner and an administrator, each with a fresh random secret.
pub fn demo_clients(path: &std::path::Path, regions: &[&str]) -> std::io::Result<Vec<DemoClient>> {
    let mut clients = Vec::new();
    let secret = || {
        let mut b = [0u8; 24];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    };
    for r in regions {
        for role in ["vendor", "analyst"] {
            clients.push(DemoClient {
                id: format!("{r}-{role}"),
                roles: role,
                region: Some(r.to_string()),
                secret: secret(),
            });
        }
    }
    for role in ["partner", "admin"] {
        clients.push(DemoClient {
            id: format!("demo-{role}"),
            roles: role,
            region: None,
            secret: secret(),
        });
    }
    let mut toml = String::from("# Demo clients (development only): secrets are stored as SHA-256.\n");
    for c in &clients {
        toml.push_str(&format!(
            "\n[[client]]\nid = \"{}\"\nroles = [\"{}\"]\n{}secret_sha256 = \"{}\"\n",
            c.id,
            c.roles,
            c.region
                .as_ref()
                .map(|r| format!("region = \"{r}\"\n"))
                .unwrap_or_default(),
            crate::auth::clients::sha256_hex(&c.secret)
        ));
    }
    // People for the web view: they sign in with the one-time links the demo prints
    // (their passwords are random and never shown).
    let clinician_region = regions.last().copied().unwrap_or("nwc");
    for (name, role, region, provider) in [
        (
            "demo-clinician",
            "clinician",
            clinician_region,
            Some(providers(clinician_region)[0]),
        ),
        (
            "demo-analyst",
            "analyst",
            regions.first().copied().unwrap_or("nenc"),
            None,
        ),
    ] {
        let hash = crate::auth::users::hash_password(&secret()).map_err(std::io::Error::other)?;
        toml.push_str(&format!(
            "\n[[user]]\nname = \"{name}\"\npassword_hash = \"{hash}\"\nroles = [\"{role}\"]\nregion = \"{region}\"\n{}",
            provider.map(|p| format!("provider = \"{p}\"\n")).unwrap_or_default()
        ));
    }
    std::fs::write(path, toml)?;
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_pass_modulus_11() {
        let mut rng = Rng::new(7);
        for _ in 0..1000 {
            let n = nhs_number(&mut rng);
            assert_eq!(n.len(), 10);
            let d: Vec<u32> = n.chars().map(|c| c.to_digit(10).unwrap()).collect();
            let sum: u32 = d[..9].iter().enumerate().map(|(i, x)| x * (10 - i as u32)).sum();
            assert_eq!((11 - sum % 11) % 11, d[9]);
        }
    }

    #[test]
    fn bundles_hold_the_patients_asked_for() {
        let b = bundles("gm", 1, 25, 10, true);
        assert_eq!(b.len(), 3);
        let patients: usize = b
            .iter()
            .map(|x| {
                x["entry"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|e| e["resource"]["resourceType"] == "Patient")
                    .count()
            })
            .sum();
        assert_eq!(patients, 25);
    }
}
