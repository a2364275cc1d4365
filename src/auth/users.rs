//! People who sign in to the hub's web view with a local account: `[[user]]` in
//! the clients file, each with an argon2id password hash (a PHC string, never a
//! password), roles, and for clinicians the region and provider (ODS code) they
//! work for. Repeated failures lock an account for a while.

use super::clients::Role;
use crate::config::Region;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures before an account is locked, within `FAILURE_WINDOW`.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

/// Someone signed in to the web view, however they proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub roles: Vec<Role>,
    pub region: Option<Region>,
    /// The ODS code of the provider a clinician works for.
    pub provider: Option<String>,
    /// `local` or the OpenID provider's issuer.
    pub via: String,
}

impl Person {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// A person with the roles, region and provider given, if they go together:
    /// at least one role and none of systems; clinicians and analysts have a
    /// region; clinicians have the ODS code of their provider. The same rules for
    /// a local account and for claims from an identity provider.
    pub fn checked(
        name: &str,
        roles: Vec<Role>,
        region: Option<&str>,
        provider: Option<&str>,
        via: &str,
    ) -> Result<Person, String> {
        if roles.is_empty() {
            return Err("needs at least one role (clinician, analyst, partner, admin)".into());
        }
        if roles.contains(&Role::Vendor) {
            return Err("vendor is a role of systems, not of people".into());
        }
        let region = region.map(Region::parse).transpose().map_err(|err| err.to_string())?;
        if roles.iter().any(|r| matches!(r, Role::Clinician | Role::Analyst)) && region.is_none() {
            return Err("clinicians and analysts need a 'region'".into());
        }
        let provider = provider.map(|p| p.to_ascii_uppercase());
        match &provider {
            Some(p) if !is_ods_code(p) => return Err("provider must be an ODS code".into()),
            None if roles.contains(&Role::Clinician) => {
                return Err("clinicians need the 'provider' (ODS code) they work for".into())
            }
            _ => {}
        }
        Ok(Person {
            name: name.to_string(),
            roles,
            region,
            provider,
            via: via.to_string(),
        })
    }

    /// Role and organisation, without the name: what the transparency log shows.
    pub fn public_label(&self) -> String {
        let roles = self.roles.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(",");
        match (&self.provider, &self.region) {
            (Some(p), _) => format!("{roles} at {p}"),
            (None, Some(r)) => format!("{roles} in {}", r.as_str()),
            (None, None) => roles,
        }
    }
}

/// One local account.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    password_hash: String,
    pub roles: Vec<Role>,
    pub region: Option<Region>,
    pub provider: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UserEntry {
    name: String,
    password_hash: String,
    roles: Vec<Role>,
    region: Option<String>,
    provider: Option<String>,
    /// Refused with a clear message: passwords are never stored in plain text.
    password: Option<toml::Value>,
}

/// Whether `s` looks like an ODS organisation code (3 to 6 letters and digits).
pub fn is_ods_code(s: &str) -> bool {
    (3..=6).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

impl User {
    pub(super) fn from_entry(e: UserEntry) -> Result<User, String> {
        let fail = |m: &str| format!("user '{}': {m}", e.name);
        if e.name.is_empty() || e.name.len() > 128 || e.name.chars().any(char::is_control) {
            return Err(fail("needs a name of 1 to 128 printable characters"));
        }
        if e.password.is_some() {
            return Err(fail(
                "plain 'password' is not accepted: give password_hash, an argon2id PHC string (pennine hash-password)",
            ));
        }
        let parsed = PasswordHash::new(&e.password_hash).map_err(|err| fail(&format!("password_hash: {err}")))?;
        if parsed.algorithm.as_str() != "argon2id" {
            return Err(fail("password_hash must be argon2id"));
        }
        let person = Person::checked(&e.name, e.roles, e.region.as_deref(), e.provider.as_deref(), "local")
            .map_err(|m| fail(&m))?;
        Ok(User {
            name: e.name,
            password_hash: e.password_hash,
            roles: person.roles,
            region: person.region,
            provider: person.provider,
        })
    }

    pub fn person(&self) -> Person {
        Person {
            name: self.name.clone(),
            roles: self.roles.clone(),
            region: self.region.clone(),
            provider: self.provider.clone(),
            via: "local".into(),
        }
    }
}

/// Why a sign-in failed. Both read the same to the person signing in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInError {
    Invalid,
    /// Too many failures: locked for this long.
    Locked(Duration),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    first: Instant,
    locked_until: Option<Instant>,
}

/// The local accounts and their recent failures.
pub struct Accounts {
    users: Vec<User>,
    failures: Mutex<HashMap<String, Failures>>,
    /// Checked against for unknown names, so that they cost what a known one does.
    decoy: String,
}

/// An argon2id PHC string of `password` (OWASP's parameters, argon2's defaults).
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "no randomness for a salt".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

impl Accounts {
    pub fn new(users: Vec<User>) -> Accounts {
        Accounts {
            users,
            failures: Mutex::default(),
            decoy: hash_password("pennine decoy").unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Checks a name and password (slow by design: argon2id). A locked account
    /// is refused without looking at the password.
    pub fn sign_in(&self, name: &str, password: &str) -> Result<Person, SignInError> {
        let now = Instant::now();
        {
            let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = failures.get(name) {
                match f.locked_until {
                    Some(until) if until > now => return Err(SignInError::Locked(until - now)),
                    Some(_) => {
                        failures.remove(name);
                    }
                    None => {}
                }
            }
        }
        let user = self.get(name);
        let hash = user.map_or(self.decoy.as_str(), |u| u.password_hash.as_str());
        let ok = PasswordHash::new(hash)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        match (user, ok) {
            (Some(u), true) => {
                self.failures.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
                Ok(u.person())
            }
            _ => Err(self.failed(name, now)),
        }
    }

    fn failed(&self, name: &str, now: Instant) -> SignInError {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: names nobody has are counted too (so that guessing names costs
        // the same), but the table never grows past this.
        if failures.len() > 10_000 {
            failures
                .retain(|_, f| now.duration_since(f.first) < FAILURE_WINDOW || f.locked_until.is_some_and(|u| u > now));
        }
        let f = failures.entry(name.to_string()).or_insert(Failures {
            count: 0,
            first: now,
            locked_until: None,
        });
        if now.duration_since(f.first) > FAILURE_WINDOW {
            *f = Failures {
                count: 0,
                first: now,
                locked_until: None,
            };
        }
        f.count += 1;
        if f.count >= MAX_FAILURES {
            f.locked_until = Some(now + LOCKOUT);
            return SignInError::Locked(LOCKOUT);
        }
        SignInError::Invalid
    }
}

/// The people side of a hub: local accounts and web sessions.
pub struct People {
    pub accounts: Accounts,
    pub sessions: super::sessions::Sessions,
}

impl People {
    pub fn new(users: Vec<User>) -> People {
        People {
            accounts: Accounts::new(users),
            sessions: super::sessions::Sessions::default(),
        }
    }

    /// A one-time sign-in link's token for the local account `name`.
    pub fn link_for(&self, name: &str) -> Option<String> {
        let person = self.accounts.get(name)?.person();
        Some(self.sessions.link(person))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(toml_text: &str) -> Result<User, String> {
        User::from_entry(toml::from_str(toml_text).map_err(|e| e.to_string())?)
    }

    #[test]
    fn accounts_check_passwords_and_lock_after_repeated_failures() {
        let hash = hash_password("correct horse").unwrap();
        let user = entry(&format!(
            "name = \"dr.a\"\npassword_hash = \"{hash}\"\nroles = [\"clinician\"]\nregion = \"nwc\"\nprovider = \"rxl\""
        ))
        .unwrap();
        assert_eq!(user.provider.as_deref(), Some("RXL"));
        let accounts = Accounts::new(vec![user]);
        let me = accounts.sign_in("dr.a", "correct horse").unwrap();
        assert!(me.has(Role::Clinician));
        assert_eq!(me.public_label(), "clinician at RXL");
        assert_eq!(accounts.sign_in("dr.b", "correct horse"), Err(SignInError::Invalid));
        for _ in 1..MAX_FAILURES {
            assert_eq!(accounts.sign_in("dr.a", "wrong"), Err(SignInError::Invalid));
        }
        assert!(matches!(accounts.sign_in("dr.a", "wrong"), Err(SignInError::Locked(_))));
        // Locked: even the right password is refused until the lock ends.
        assert!(matches!(
            accounts.sign_in("dr.a", "correct horse"),
            Err(SignInError::Locked(_))
        ));
    }

    #[test]
    fn entries_are_checked() {
        let hash = hash_password("x").unwrap();
        for (text, why) in [
            (
                "name = \"a\"\npassword = \"x\"\npassword_hash = \"{h}\"\nroles = [\"admin\"]",
                "plain",
            ),
            (
                "name = \"a\"\npassword_hash = \"nothash\"\nroles = [\"admin\"]",
                "password_hash",
            ),
            ("name = \"a\"\npassword_hash = \"{h}\"\nroles = []", "role"),
            ("name = \"a\"\npassword_hash = \"{h}\"\nroles = [\"vendor\"]", "systems"),
            (
                "name = \"a\"\npassword_hash = \"{h}\"\nroles = [\"clinician\"]\nregion = \"gm\"",
                "provider",
            ),
            (
                "name = \"a\"\npassword_hash = \"{h}\"\nroles = [\"clinician\"]\nprovider = \"RXL\"",
                "region",
            ),
            (
                "name = \"a\"\npassword_hash = \"{h}\"\nroles = [\"clinician\"]\nregion = \"gm\"\nprovider = \"R-1\"",
                "ODS",
            ),
        ] {
            let err = entry(&text.replace("{h}", &hash)).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        let bcrypt = "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW";
        assert!(entry(&format!(
            "name = \"a\"\npassword_hash = \"{bcrypt}\"\nroles = [\"admin\"]"
        ))
        .is_err());
    }
}
