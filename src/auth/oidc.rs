//! OpenID Connect sign-in for people, the parts that need no network: the
//! pending sign-ins (`state`, `nonce`, the PKCE verifier) kept between the
//! redirect to the identity provider and its answer, the checks of an ID token
//! (signature by a key of the provider's JWKS, issuer, audience and authorised
//! party, nonce, expiry, issue time), and the claims' mapping to a `Person`.
//! The hub's relying party (`hub::oidc`) fetches discovery, keys and tokens.

use super::clients::Role;
use super::users::Person;
use crate::config::OidcConfig;
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a browser may take at the identity provider.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Pending sign-ins kept at most; the oldest go first (a flood of started
/// sign-ins costs memory only up to this).
const PENDING_CAPACITY: usize = 10_000;
/// Clock difference allowed between the hub and the identity provider.
pub const LEEWAY: Duration = Duration::from_secs(60);

/// Signature algorithms accepted on ID tokens: asymmetric only. `none` and the
/// HMAC family (keyed by the client secret, which the hub shares with the
/// provider) are refused.
const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// A sign-in sent to the identity provider and not yet back.
#[derive(Debug, Clone)]
pub struct Pending {
    pub nonce: String,
    /// The PKCE code verifier (RFC 7636); its S256 challenge went with the request.
    pub verifier: String,
    /// The redirect URI the request named; the token request names it again.
    pub redirect_uri: String,
    /// The page of the view to open afterwards.
    pub next: String,
    started: Instant,
}

/// Pending sign-ins by `state`. Each is taken once.
#[derive(Default)]
pub struct PendingSignIns {
    live: Mutex<HashMap<String, Pending>>,
}

impl PendingSignIns {
    /// A new pending sign-in: its `state` and what the redirect carries.
    pub fn start(&self, redirect_uri: String, next: String) -> (String, Pending) {
        let state = super::sessions::random_token();
        let p = Pending {
            nonce: super::sessions::random_token(),
            verifier: super::sessions::random_token(),
            redirect_uri,
            next,
            started: Instant::now(),
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, p| p.started.elapsed() < PENDING_LIFETIME);
        if live.len() >= PENDING_CAPACITY {
            if let Some(oldest) = live.iter().min_by_key(|(_, p)| p.started).map(|(k, _)| k.clone()) {
                live.remove(&oldest);
            }
        }
        live.insert(state.clone(), p.clone());
        (state, p)
    }

    /// The pending sign-in of `state`, removed: a state is good for one answer.
    pub fn take(&self, state: &str) -> Option<Pending> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let p = live.remove(state)?;
        (p.started.elapsed() < PENDING_LIFETIME).then_some(p)
    }
}

/// The S256 code challenge of a PKCE verifier.
pub fn pkce_challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

/// Why a sign-in through the identity provider failed. The text is for the
/// audit trail and the log; the person sees a general message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    #[error("the identity provider could not be reached or answered wrongly: {0}")]
    Provider(String),
    #[error("the identity provider refused: {0}")]
    Refused(String),
    #[error("the ID token is not acceptable: {0}")]
    Token(String),
    #[error("the person's claims do not give a Pennine role: {0}")]
    Claims(String),
}

/// Checks an ID token against the provider's keys and what the sign-in sent;
/// its claims when everything holds.
pub fn verify_id_token(
    token: &str,
    keys: &JwkSet,
    issuer: &str,
    client_id: &str,
    nonce: &str,
) -> Result<Map<String, Value>, OidcError> {
    let bad = |m: String| OidcError::Token(m);
    let header = jsonwebtoken::decode_header(token).map_err(|e| bad(format!("header: {e}")))?;
    if !ALGORITHMS.contains(&header.alg) {
        return Err(bad(format!("algorithm {:?} is not accepted", header.alg)));
    }
    let key = match &header.kid {
        Some(kid) => keys.find(kid),
        // Without a kid, only an unambiguous key set will do.
        None if keys.keys.len() == 1 => keys.keys.first(),
        None => None,
    }
    .ok_or_else(|| bad(format!("no key {:?} in the provider's key set", header.kid)))?;
    if matches!(
        key.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return Err(bad("the key named is for encryption, not signatures".into()));
    }
    if let Some(alg) = key.common.key_algorithm {
        if format!("{alg:?}") != format!("{:?}", header.alg) {
            return Err(bad(format!("the key is for {alg:?}, the token says {:?}", header.alg)));
        }
    }
    let decoding = DecodingKey::from_jwk(key).map_err(|e| bad(format!("key: {e}")))?;
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[client_id]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.leeway = LEEWAY.as_secs();
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &decoding, &v).map_err(|e| bad(e.to_string()))?;
    let claims = data.claims;
    // Several audiences: the hub must be the authorised party (OIDC Core 3.1.3.7).
    if let Some(Value::Array(auds)) = claims.get("aud") {
        if auds.len() > 1 && claims.get("azp").and_then(Value::as_str) != Some(client_id) {
            return Err(bad(
                "several audiences and the hub is not the authorised party (azp)".into()
            ));
        }
    }
    let now = crate::fhir::time::now_millis() / 1000;
    let iat = claims.get("iat").and_then(Value::as_i64).unwrap_or(i64::MAX);
    if iat > now + LEEWAY.as_secs() as i64 {
        return Err(bad("issued in the future (iat)".into()));
    }
    match claims.get("nonce").and_then(Value::as_str) {
        Some(n) if super::sessions::same_secret(n, nonce) => {}
        Some(_) => return Err(bad("the nonce is not the one this sign-in sent".into())),
        None => return Err(bad("no nonce".into())),
    }
    match claims.get("sub").and_then(Value::as_str) {
        Some(s) if !s.is_empty() && s.len() <= 255 => {}
        _ => return Err(bad("no usable subject (sub)".into())),
    }
    Ok(claims)
}

/// The value at a dotted claim path (`realm_access.roles`); a claim whose own
/// name has dots is found first.
fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut v = claims.get(parts.next()?)?;
    for p in parts {
        v = v.get(p)?;
    }
    Some(v)
}

/// The claim paths the mapping reads: whether `claims` hold all of them.
pub fn has_mapped_claims(config: &OidcConfig, claims: &Map<String, Value>) -> bool {
    claim(claims, &config.roles_claim).is_some()
}

/// The person the claims describe, by the configured claims: roles (a list, or
/// words separated by spaces or commas; names Pennine does not know are ignored),
/// region and provider. The rules are a local account's.
pub fn person_from_claims(config: &OidcConfig, claims: &Map<String, Value>) -> Result<Person, OidcError> {
    let words: Vec<String> = match claim(claims, &config.roles_claim) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s
            .split([' ', ','])
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        Some(_) => return Err(OidcError::Claims(format!("claim {} is not a list", config.roles_claim))),
        None => return Err(OidcError::Claims(format!("no {} claim", config.roles_claim))),
    };
    let mut roles = Vec::new();
    for w in &words {
        if let Ok(r) = serde_json::from_value::<Role>(Value::String(w.to_ascii_lowercase())) {
            if !roles.contains(&r) {
                roles.push(r);
            }
        }
    }
    let text = |path: &str| -> Result<Option<String>, OidcError> {
        match claim(claims, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(OidcError::Claims(format!("claim {path} is not text"))),
        }
    };
    let region = text(&config.region_claim)?;
    let provider = text(&config.provider_claim)?;
    let name = ["name", "preferred_username", "sub"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str))
        .unwrap_or("unnamed")
        .chars()
        .filter(|c| !c.is_control())
        .take(128)
        .collect::<String>();
    Person::checked(&name, roles, region.as_deref(), provider.as_deref(), &config.issuer)
        .map_err(|m| OidcError::Claims(format!("{m} (roles claim: {words:?})")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    struct Key {
        encoding: EncodingKey,
        jwk: Value,
    }

    fn key(kid: &str) -> Key {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Key {
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65]),
                        "kid": kid, "use": "sig", "alg": "ES256"}),
        }
    }

    fn set(keys: &[&Key]) -> JwkSet {
        serde_json::from_value(json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})).unwrap()
    }

    const ISS: &str = "https://idp.example.nhs.uk";

    fn claims() -> Value {
        let now = crate::fhir::time::now_millis() / 1000;
        json!({"iss": ISS, "aud": "pennine-hub", "sub": "u1", "iat": now, "exp": now + 300,
               "nonce": "n-1", "name": "Dr A", "roles": ["clinician"], "region": "gm", "provider": "rxl"})
    }

    fn sign(k: &Key, kid: Option<&str>, c: &Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, c, &k.encoding).unwrap()
    }

    fn config() -> OidcConfig {
        OidcConfig {
            issuer: ISS.into(),
            client_id: "pennine-hub".into(),
            client_secret: "s".into(),
            scopes: "openid".into(),
            roles_claim: "roles".into(),
            region_claim: "region".into(),
            provider_claim: "provider".into(),
            label: "x".into(),
            ca: None,
        }
    }

    #[test]
    fn a_token_is_accepted_only_when_every_check_holds() {
        let k1 = key("k1");
        let other = key("k2");
        let keys = set(&[&k1]);
        let good = sign(&k1, Some("k1"), &claims());
        let c = verify_id_token(&good, &keys, ISS, "pennine-hub", "n-1").unwrap();
        let person = person_from_claims(&config(), &c).unwrap();
        assert_eq!(person.provider.as_deref(), Some("RXL"));
        assert_eq!(person.region.as_ref().map(|r| r.as_str()), Some("gm"));
        assert_eq!(person.via, ISS);

        let with = |f: &dyn Fn(&mut Value)| {
            let mut c = claims();
            f(&mut c);
            sign(&k1, Some("k1"), &c)
        };
        let now = crate::fhir::time::now_millis() / 1000;
        let cases: Vec<(&str, String)> = vec![
            ("another key", sign(&other, Some("k1"), &claims())),
            ("unknown kid", sign(&other, Some("k2"), &claims())),
            ("issuer", with(&|c| c["iss"] = json!("https://evil.example"))),
            ("audience", with(&|c| c["aud"] = json!("someone-else"))),
            ("azp", with(&|c| c["aud"] = json!(["pennine-hub", "other"]))),
            ("expired", with(&|c| c["exp"] = json!(now - 3600))),
            ("future", with(&|c| c["iat"] = json!(now + 3600))),
            ("nonce", with(&|c| c["nonce"] = json!("replayed"))),
            ("no nonce", with(&|c| drop(c.as_object_mut().unwrap().remove("nonce")))),
            ("no sub", with(&|c| drop(c.as_object_mut().unwrap().remove("sub")))),
        ];
        for (what, token) in cases {
            let err = verify_id_token(&token, &keys, ISS, "pennine-hub", "n-1").unwrap_err();
            assert!(matches!(err, OidcError::Token(_)), "{what}: {err}");
        }
        // Several audiences with the hub as authorised party are fine.
        let azp = with(&|c| {
            c["aud"] = json!(["pennine-hub", "other"]);
            c["azp"] = json!("pennine-hub")
        });
        assert!(verify_id_token(&azp, &keys, ISS, "pennine-hub", "n-1").is_ok());
        // `none` and HMAC (keyed by the shared client secret) are refused whatever they say.
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"s"),
        )
        .unwrap();
        assert!(verify_id_token(&hs, &keys, ISS, "pennine-hub", "n-1").is_err());
        let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let none = format!("{}.{}.", b64(&json!({"alg": "none"})), b64(&claims()));
        assert!(verify_id_token(&none, &keys, ISS, "pennine-hub", "n-1").is_err());
        // Without a kid: only a set of one key is unambiguous.
        let no_kid = sign(&k1, None, &claims());
        assert!(verify_id_token(&no_kid, &keys, ISS, "pennine-hub", "n-1").is_ok());
        assert!(verify_id_token(&no_kid, &set(&[&k1, &other]), ISS, "pennine-hub", "n-1").is_err());
    }

    #[test]
    fn claims_map_to_a_person_by_the_rules_of_local_accounts() {
        let cfg = OidcConfig {
            roles_claim: "realm_access.roles".into(),
            ..config()
        };
        let mut c: Map<String, Value> = serde_json::from_value(json!({
            "sub": "u1", "preferred_username": "ana", "realm_access": {"roles": ["offline_access", "Analyst"]},
            "region": "nenc"
        }))
        .unwrap();
        let p = person_from_claims(&cfg, &c).unwrap();
        assert_eq!((p.name.as_str(), p.roles.as_slice()), ("ana", &[Role::Analyst][..]));
        c.insert("realm_access".into(), json!({"roles": ["offline_access"]}));
        assert!(matches!(person_from_claims(&cfg, &c), Err(OidcError::Claims(_))));
        c.insert("realm_access".into(), json!({"roles": ["vendor"]}));
        assert!(person_from_claims(&cfg, &c).is_err());
        // Space-separated roles; a clinician without a provider is refused.
        let c: Map<String, Value> =
            serde_json::from_value(json!({"sub": "u2", "roles": "clinician", "region": "gm"})).unwrap();
        let err = person_from_claims(&config(), &c).unwrap_err();
        assert!(err.to_string().contains("provider"), "{err}");
    }

    #[test]
    fn a_pending_sign_in_is_taken_once() {
        let p = PendingSignIns::default();
        let (state, pending) = p.start("https://hub/cb".into(), "/app/".into());
        assert_ne!(pending.nonce, pending.verifier);
        assert_eq!(pkce_challenge(&pending.verifier).len(), 43);
        assert!(p.take("other").is_none());
        assert_eq!(p.take(&state).map(|x| x.nonce), Some(pending.nonce));
        assert!(p.take(&state).is_none());
        // RFC 7636 appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
