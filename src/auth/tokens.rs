//! OAuth 2.0 client credentials (SMART Backend Services): checking a client's
//! signed assertion or secret, issuing a short-lived access token (a JWT signed
//! with this server's key), and checking access tokens on every request.

use super::clients::{Client, Clients, Credential, Role};
use super::scopes::{grant, Scope};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Access tokens live this long.
pub const TOKEN_SECONDS: i64 = 300;
/// Assertions may not claim to live longer than this (SMART says five minutes).
const MAX_ASSERTION_SECONDS: i64 = 300;
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECONDS: u64 = 30;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// An OAuth error response (`{"error": ..., "error_description": ...}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: String,
}

fn oauth(status: u16, error: &'static str, description: impl Into<String>) -> OAuthError {
    OAuthError {
        status,
        error,
        description: description.into(),
    }
}

/// The claims of an access token this server issues.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub scope: String,
    pub roles: Vec<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

/// The client a valid access token stands for.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client_id: String,
    pub roles: Vec<Role>,
    pub region: Option<String>,
    pub scopes: Vec<Scope>,
}

impl Principal {
    pub fn roles_text(&self) -> String {
        self.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",")
    }
}

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: i64,
    jti: Option<String>,
}

/// One server's authority: its clients, its signing key, its audience name and
/// the assertion ids it has seen (replay protection).
pub struct Authority {
    pub clients: Option<Clients>,
    /// `pennine:node:<region>` or `pennine:hub`: tokens are valid only here.
    pub audience: String,
    key: Vec<u8>,
    /// Assertion ids used, and failed secrets: `MemoryShared` unless `with_shared`.
    shared: std::sync::Arc<dyn Shared>,
    /// Failed secrets per client id and per address.
    pub throttle: Throttle,
}

/// What a client sees for any failed secret: the same words whether the id is
/// unknown, registered for assertions, or the secret wrong, so ids cannot be told.
pub const BAD_SECRET: &str = "the client id or secret is wrong";

/// Failed client secrets within this window count towards a lock.
const THROTTLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Longest lock.
const THROTTLE_MAX_LOCK: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// Keys kept at most (the oldest go first).
const THROTTLE_CAPACITY: usize = 10_000;

/// What every process serving one node must agree on: assertion ids already used and
/// failed secrets. A node keeps it in its store (`startup` gives the adapter), so several
/// processes on one database refuse a replay and lock a guesser together; the hub and
/// tests keep it in memory (`MemoryShared`).
pub trait Shared: Send + Sync {
    /// The value under `key`, unless absent or expired.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Replaces the value under `key` by what `f` makes of the current one (None: delete),
    /// atomically with respect to every other process. `f` gives the value and its expiry
    /// (seconds since the epoch). Returns the value it replaced (None: absent or expired).
    fn update(&self, key: &str, f: Update) -> Result<Option<Vec<u8>>, String>;
}

/// A key for `Shared` from text a client chose (an id, a `jti`): its SHA-256 in hex, so
/// that no byte a database refuses (NUL) and no length reaches the store.
fn shared_key(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What `Shared::update` makes of a current value.
pub type Update = Box<dyn FnOnce(Option<&[u8]>) -> Option<(Vec<u8>, i64)> + Send>;

/// `Shared` in this process's memory (at most `THROTTLE_CAPACITY` keys; expired first).
#[derive(Default)]
pub struct MemoryShared(Mutex<HashMap<String, (Vec<u8>, i64)>>);

impl Shared for MemoryShared {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Ok(map.get(key).filter(|(_, exp)| *exp >= now()).map(|(v, _)| v.clone()))
    }

    fn update(&self, key: &str, f: Update) -> Result<Option<Vec<u8>>, String> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = now();
        if map.len() >= THROTTLE_CAPACITY {
            map.retain(|_, (_, exp)| *exp >= t);
            if map.len() >= THROTTLE_CAPACITY {
                if let Some(k) = map.iter().min_by_key(|(_, (_, exp))| *exp).map(|(k, _)| k.clone()) {
                    map.remove(&k);
                }
            }
        }
        let current = map.get(key).filter(|(_, exp)| *exp >= t).map(|(v, _)| v.clone());
        match f(current.as_deref()) {
            Some(new) => map.insert(key.to_string(), new),
            None => map.remove(key),
        };
        Ok(current)
    }
}

/// Failed secrets of one key (client id or address), as kept in `Shared`.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct Failures {
    count: u32,
    /// Seconds since the epoch.
    first: i64,
    locked_until: Option<i64>,
}

/// Growing locks after repeated failed secrets: a client id after 5 failures in 15
/// minutes, an address after 20 (it may be guessing many ids); each further failure
/// doubles the lock, from 1 s up to 15 minutes. A success clears both. Kept in
/// `Shared`: every process of a node counts the same failures.
pub struct Throttle {
    shared: std::sync::Arc<dyn Shared>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            shared: std::sync::Arc::new(MemoryShared::default()),
        }
    }
}

impl Throttle {
    fn threshold(key: &str) -> u32 {
        if key.starts_with("addr:") {
            20
        } else {
            5
        }
    }

    fn key(k: &str) -> String {
        format!("throttle:{}", shared_key(k))
    }

    /// `Err(retry after)` while any of `keys` is locked. A store that cannot be read
    /// does not lock anyone out (the failure is logged).
    pub fn check(&self, keys: &[String]) -> Result<(), std::time::Duration> {
        let t = now();
        let mut wait = 0;
        for k in keys {
            match self.shared.get(&Self::key(k)) {
                Ok(Some(v)) => {
                    if let Some(until) = serde_json::from_slice::<Failures>(&v).ok().and_then(|f| f.locked_until) {
                        wait = wait.max(until - t);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "failed-secret counts could not be read"),
            }
        }
        if wait > 0 {
            Err(std::time::Duration::from_secs(wait as u64))
        } else {
            Ok(())
        }
    }

    pub fn failed(&self, keys: &[String]) {
        let t = now();
        let window = THROTTLE_WINDOW.as_secs() as i64;
        for k in keys {
            let threshold = Self::threshold(k);
            let r = self.shared.update(
                &Self::key(k),
                Box::new(move |current| {
                    let mut f = current
                        .and_then(|v| serde_json::from_slice::<Failures>(v).ok())
                        .unwrap_or(Failures {
                            count: 0,
                            first: t,
                            locked_until: None,
                        });
                    if t - f.first >= window && f.locked_until.is_none_or(|u| u <= t) {
                        f = Failures {
                            count: 0,
                            first: t,
                            locked_until: None,
                        };
                    }
                    f.count += 1;
                    if f.count >= threshold {
                        let over = f.count - threshold;
                        let lock = (1i64 << over.min(20)).min(THROTTLE_MAX_LOCK.as_secs() as i64);
                        f.locked_until = Some(t + lock);
                    }
                    let expires = f.first.max(f.locked_until.unwrap_or(0)) + window;
                    Some((serde_json::to_vec(&f).unwrap_or_default(), expires))
                }),
            );
            if let Err(e) = r {
                tracing::warn!(error = %e, "a failed secret could not be counted");
            }
        }
    }

    pub fn succeeded(&self, keys: &[String]) {
        for k in keys {
            // Most successes follow no failure: nothing to clear, nothing to write.
            if matches!(self.shared.get(&Self::key(k)), Ok(None)) {
                continue;
            }
            if let Err(e) = self.shared.update(&Self::key(k), Box::new(|_| None)) {
                tracing::warn!(error = %e, "failed-secret counts could not be cleared");
            }
        }
    }
}

impl Authority {
    /// `key_file` holds the token-signing key; it is created (0600) on first use.
    pub fn open(clients: Option<Clients>, audience: String, key_file: &Path) -> Result<Authority, String> {
        let key = match std::fs::read(key_file) {
            Ok(k) if k.len() >= 32 => k,
            _ => {
                let mut k = vec![0u8; 32];
                ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                    .map_err(|_| "no system randomness for the token key".to_string())?;
                std::fs::write(key_file, &k).map_err(|e| format!("cannot write {}: {e}", key_file.display()))?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(key_file, std::fs::Permissions::from_mode(0o600));
                }
                k
            }
        };
        Ok(Authority {
            clients,
            audience,
            key,
            shared: std::sync::Arc::new(MemoryShared::default()),
            throttle: Throttle::default(),
        })
    }

    /// Keeps used assertion ids and failed secrets in `shared` (a node's store), so
    /// that every process serving the node agrees on them.
    pub fn with_shared(mut self, shared: std::sync::Arc<dyn Shared>) -> Authority {
        self.throttle = Throttle { shared: shared.clone() };
        self.shared = shared;
        self
    }

    fn client(&self, id: &str) -> Result<&Client, OAuthError> {
        let clients = self.clients.as_ref().ok_or_else(|| {
            oauth(
                401,
                "invalid_client",
                "this server has no registered clients (it was started without --clients)",
            )
        })?;
        clients
            .get(id)
            .ok_or_else(|| oauth(401, "invalid_client", format!("unknown client '{id}'")))
    }

    /// Authenticates a token request from a signed assertion.
    pub fn client_from_assertion(&self, assertion: &str, token_url: &str) -> Result<&Client, OAuthError> {
        let header = jsonwebtoken::decode_header(assertion).map_err(|e| {
            oauth(
                401,
                "invalid_client",
                format!("the client assertion is not a usable JWT: {e}"),
            )
        })?;
        // SMART Backend Services: the header names the key (`kid`) it was signed with.
        if header.kid.as_deref().is_none_or(str::is_empty) {
            return Err(oauth(
                401,
                "invalid_client",
                "the client assertion's header needs the kid of the registered key that signed it",
            ));
        }
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(oauth(
                401,
                "invalid_client",
                format!("assertions must be signed with RS384 or ES384, not {:?}", header.alg),
            ));
        }
        // Who claims to be asking (checked against the signature below).
        let unverified: AssertionClaims = {
            let mut v = Validation::new(header.alg);
            v.insecure_disable_signature_validation();
            v.validate_exp = false;
            v.validate_aud = false;
            v.required_spec_claims.clear();
            jsonwebtoken::decode::<AssertionClaims>(assertion, &DecodingKey::from_secret(&[]), &v)
                .map_err(|e| {
                    oauth(
                        401,
                        "invalid_client",
                        format!("the client assertion's claims are unreadable: {e}"),
                    )
                })?
                .claims
        };
        let client = self.client(&unverified.iss)?;
        let Credential::Jwks(jwks) = &client.credential else {
            return Err(oauth(
                401,
                "invalid_client",
                "this client is registered with a secret, not public keys",
            ));
        };
        let candidates: Vec<&jsonwebtoken::jwk::Jwk> = header
            .kid
            .as_deref()
            .and_then(|kid| jwks.find(kid))
            .into_iter()
            .collect();
        if candidates.is_empty() {
            return Err(oauth(
                401,
                "invalid_client",
                "no registered key matches the assertion's kid",
            ));
        }
        let mut v = Validation::new(header.alg);
        v.set_audience(&[token_url]);
        v.set_issuer(&[client.id.as_str()]);
        v.sub = Some(client.id.clone());
        v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        v.leeway = LEEWAY_SECONDS;
        v.validate_nbf = true;
        let mut last = None;
        for jwk in candidates {
            let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
            match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &v) {
                Ok(data) => {
                    let c = data.claims;
                    if c.iss != c.sub {
                        return Err(oauth(401, "invalid_client", "iss and sub must both be the client id"));
                    }
                    if c.exp > now() + MAX_ASSERTION_SECONDS + LEEWAY_SECONDS as i64 {
                        return Err(oauth(
                            401,
                            "invalid_client",
                            "the assertion may live at most five minutes",
                        ));
                    }
                    let jti = c
                        .jti
                        .filter(|j| !j.is_empty())
                        .ok_or_else(|| oauth(401, "invalid_client", "the assertion needs a jti"))?;
                    self.remember(&client.id, &jti, c.exp)?;
                    return Ok(client);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(oauth(
            401,
            "invalid_client",
            format!(
                "the client assertion was refused: {}",
                last.map(|e| e.to_string()).unwrap_or_else(|| "no usable key".into())
            ),
        ))
    }

    /// Refuses an assertion id seen before (until the assertion would have expired anyway).
    fn remember(&self, client: &str, jti: &str, exp: i64) -> Result<(), OAuthError> {
        let key = format!("jti:{}", shared_key(&format!("{client}\u{0}{jti}")));
        let until = exp + LEEWAY_SECONDS as i64;
        let kept = self.shared.update(&key, Box::new(move |_| Some((Vec::new(), until))));
        match kept {
            Err(e) => Err(oauth(
                503,
                "temporarily_unavailable",
                format!("used assertion ids cannot be checked now: {e}"),
            )),
            Ok(Some(_)) => Err(oauth(
                401,
                "invalid_client",
                format!("assertion jti '{jti}' was used before (replay)"),
            )),
            Ok(None) => Ok(()),
        }
    }

    /// Authenticates a token request with `client_secret_basic`. Every failure
    /// reads the same to the client (`BAD_SECRET`); the log says which it was.
    pub fn client_from_secret(&self, id: &str, secret: &str) -> Result<&Client, OAuthError> {
        let got = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let client = self.client(id).ok();
        // An unknown id is compared against a decoy, so it takes as long as a known one.
        let decoy = [0u8; 32];
        let want: &[u8] = match client.map(|c| &c.credential) {
            Some(Credential::SecretSha256(w)) => w,
            _ => &decoy,
        };
        // Constant time: every byte is compared whatever the earlier ones were.
        let diff = got
            .as_ref()
            .iter()
            .zip(want.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        let why = match client {
            None => Some("unknown client id"),
            Some(c) if !matches!(c.credential, Credential::SecretSha256(_)) => {
                Some("the client is registered with public keys")
            }
            Some(_) if got.as_ref().len() != want.len() || diff != 0 => Some("wrong secret"),
            Some(_) => None,
        };
        match (client, why) {
            (Some(c), None) => Ok(c),
            (_, why) => {
                tracing::info!(client = %id.chars().take(64).collect::<String>(), why = why.unwrap_or(""), "token request refused");
                Err(oauth(401, "invalid_client", BAD_SECRET))
            }
        }
    }

    /// Issues an access token for `client` with the requested scopes (all it may have when none are asked).
    pub fn issue(&self, client: &Client, requested: Option<&str>) -> Result<(String, AccessClaims), OAuthError> {
        let granted = match requested.map(str::trim).filter(|s| !s.is_empty()) {
            None => client.allowed.clone(),
            Some(text) => {
                // As SMART allows, the subset the client may hold is granted and the
                // rest dropped (`launch/patient` from a client-credentials client, say);
                // the reply's `scope` says what was granted.
                let asked: Vec<Scope> = text.split_whitespace().filter_map(Scope::parse).collect();
                grant(&asked, &client.allowed)
            }
        };
        if granted.is_empty() {
            return Err(oauth(
                400,
                "invalid_scope",
                "none of the requested scopes is allowed for this client",
            ));
        }
        let t = now();
        let claims = AccessClaims {
            iss: self.audience.clone(),
            sub: client.id.clone(),
            aud: self.audience.clone(),
            exp: t + TOKEN_SECONDS,
            iat: t,
            jti: uuid::Uuid::new_v4().to_string(),
            scope: granted.iter().map(ToString::to_string).collect::<Vec<_>>().join(" "),
            roles: client.roles.clone(),
            region: client.region.as_ref().map(|r| r.to_string()),
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(&self.key),
        )
        .map_err(|e| oauth(500, "server_error", e.to_string()))?;
        Ok((token, claims))
    }

    /// Checks an access token: signature, expiry, audience, and that its client is still registered.
    pub fn verify(&self, token: &str) -> Result<Principal, String> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[self.audience.as_str()]);
        v.set_issuer(&[self.audience.as_str()]);
        v.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<AccessClaims>(token, &DecodingKey::from_secret(&self.key), &v)
            .map_err(|e| format!("the access token is not valid here: {e}"))?;
        let c = data.claims;
        let client = self
            .clients
            .as_ref()
            .and_then(|cs| cs.get(&c.sub))
            .ok_or_else(|| format!("client '{}' is no longer registered", c.sub))?;
        let scopes: Vec<Scope> = c.scope.split_whitespace().filter_map(Scope::parse).collect();
        // A token never carries more than the client may have now.
        let scopes = grant(&scopes, &client.allowed);
        Ok(Principal {
            client_id: c.sub,
            roles: client.roles.clone(),
            region: client.region.as_ref().map(|r| r.to_string()),
            scopes,
        })
    }
}
