//! The registered clients (`--clients <file>`): who they are, which roles and
//! region they hold, and how they prove it (public keys as a JWKS for SMART
//! Backend Services, or the SHA-256 of a secret for development).

use super::scopes::Scope;
use crate::config::Region;
use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Vendor,
    Analyst,
    Partner,
    Admin,
    /// A person at a provider, bound to its region: the hub's web view only.
    Clinician,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Vendor => "vendor",
            Role::Analyst => "analyst",
            Role::Partner => "partner",
            Role::Admin => "admin",
            Role::Clinician => "clinician",
        }
    }

    /// The most a role may be granted.
    pub fn allowed_scopes(self) -> Vec<Scope> {
        let s = |x: &str| Scope::parse(x).expect("a valid built-in scope");
        match self {
            Role::Vendor => vec![s("system/*.cud"), s("pennine/feed")],
            Role::Analyst => vec![s("system/*.rs"), s("pennine/run")],
            Role::Partner => vec![s("pennine/aggregate")],
            Role::Admin => vec![
                s("system/AuditEvent.rs"),
                s("pennine/audit"),
                s("pennine/quality"),
                s("pennine/clients"),
            ],
            // People who read the web view; no API scope.
            Role::Clinician => vec![],
        }
    }

    /// Whether the role is bound to one region.
    pub fn regional(self) -> bool {
        matches!(self, Role::Vendor | Role::Analyst)
    }
}

#[derive(Debug, Clone)]
pub enum Credential {
    /// SHA-256 of a high-entropy secret (`client_secret_basic`, development).
    SecretSha256([u8; 32]),
    /// Public keys for `private_key_jwt` assertions.
    Jwks(jsonwebtoken::jwk::JwkSet),
}

#[derive(Debug, Clone)]
pub struct Client {
    pub id: String,
    pub roles: Vec<Role>,
    pub region: Option<Region>,
    /// What the client may be granted: its `scopes`, within what its roles allow.
    pub allowed: Vec<Scope>,
    pub credential: Credential,
}

#[derive(Debug, Default, Clone)]
pub struct Clients {
    pub clients: Vec<Client>,
    /// People with local accounts for the hub's web view (`[[user]]`).
    pub users: Vec<super::users::User>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientsFile {
    #[serde(default)]
    client: Vec<ClientEntry>,
    #[serde(default)]
    user: Vec<super::users::UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientEntry {
    id: String,
    roles: Vec<Role>,
    region: Option<String>,
    scopes: Option<Vec<String>>,
    jwks: Option<toml::Value>,
    jwks_file: Option<std::path::PathBuf>,
    secret_sha256: Option<String>,
    /// Refused with a clear message: secrets are never stored in plain text.
    secret: Option<toml::Value>,
}

fn invalid(id: &str, message: impl std::fmt::Display) -> String {
    format!("client '{id}': {message}")
}

impl Clients {
    pub fn load(path: &Path) -> Result<Clients, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        Clients::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> Result<Clients, String> {
        let file: ClientsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut clients: Vec<Client> = Vec::new();
        for e in file.client {
            let id = e.id.clone();
            if id.is_empty() || clients.iter().any(|c| c.id == id) {
                return Err(invalid(&id, "ids must be non-empty and unique"));
            }
            if e.roles.is_empty() {
                return Err(invalid(
                    &id,
                    "needs at least one role (vendor, analyst, partner, admin)",
                ));
            }
            if e.secret.is_some() {
                return Err(invalid(
                    &id,
                    "plain 'secret' is not accepted: give secret_sha256 (hex SHA-256 of the secret) or public keys (jwks, jwks_file)",
                ));
            }
            let region = match e.region.as_deref() {
                Some(r) => Some(Region::parse(r).map_err(|err| invalid(&id, err))?),
                None => None,
            };
            if e.roles.iter().any(|r| r.regional()) && region.is_none() {
                return Err(invalid(&id, "vendors and analysts need a 'region'"));
            }
            let role_max: Vec<Scope> = e.roles.iter().flat_map(|r| r.allowed_scopes()).collect();
            let allowed = match &e.scopes {
                None => role_max,
                Some(list) => {
                    let mut asked = Vec::new();
                    for s in list {
                        asked.push(Scope::parse(s).ok_or_else(|| invalid(&id, format!("'{s}' is not a scope")))?);
                    }
                    super::scopes::grant(&asked, &role_max)
                }
            };
            let credential = match (e.secret_sha256, e.jwks, e.jwks_file) {
                (Some(hex), None, None) => Credential::SecretSha256(
                    parse_sha256(&hex).ok_or_else(|| invalid(&id, "secret_sha256 must be 64 hex digits"))?,
                ),
                (None, Some(jwks), None) => {
                    let json = match jwks {
                        toml::Value::String(s) => serde_json::from_str(&s),
                        other => serde_json::to_value(other).and_then(serde_json::from_value),
                    };
                    Credential::Jwks(json.map_err(|err| invalid(&id, format!("jwks: {err}")))?)
                }
                (None, None, Some(file)) => {
                    let p = base.join(file);
                    let text =
                        std::fs::read_to_string(&p).map_err(|err| invalid(&id, format!("{}: {err}", p.display())))?;
                    Credential::Jwks(
                        serde_json::from_str(&text).map_err(|err| invalid(&id, format!("{}: {err}", p.display())))?,
                    )
                }
                _ => return Err(invalid(&id, "give exactly one of jwks, jwks_file, secret_sha256")),
            };
            clients.push(Client {
                id,
                roles: e.roles,
                region,
                allowed,
                credential,
            });
        }
        let mut users: Vec<super::users::User> = Vec::new();
        for e in file.user {
            let u = super::users::User::from_entry(e)?;
            if users.iter().any(|x| x.name == u.name) {
                return Err(format!("user '{}': names must be unique", u.name));
            }
            users.push(u);
        }
        Ok(Clients { clients, users })
    }

    pub fn get(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Hex SHA-256 of a secret, as `secret_sha256` wants it.
pub fn sha256_hex(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_clients_and_refuses_plain_secrets() {
        let ok = format!(
            "[[client]]\nid = \"v\"\nroles = [\"vendor\"]\nregion = \"nenc\"\nsecret_sha256 = \"{}\"\n\
             [[client]]\nid = \"p\"\nroles = [\"partner\"]\nscopes = [\"pennine/aggregate\", \"system/*.r\"]\nsecret_sha256 = \"{}\"\n",
            sha256_hex("a"),
            sha256_hex("b")
        );
        let c = Clients::parse(&ok, Path::new(".")).unwrap();
        assert_eq!(
            c.get("p").unwrap().allowed.len(),
            1,
            "a partner gets no resource scope even if listed"
        );
        let e = Clients::parse(
            "[[client]]\nid = \"x\"\nroles = [\"admin\"]\nsecret = \"hunter2\"\n",
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("secret_sha256"), "{e}");
        let e = Clients::parse(
            &format!(
                "[[client]]\nid = \"x\"\nroles = [\"vendor\"]\nsecret_sha256 = \"{}\"\n",
                sha256_hex("a")
            ),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("region"), "{e}");
    }
}
