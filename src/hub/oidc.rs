//! The hub as an OpenID Connect relying party (authorization code flow with
//! PKCE, confidential client): it reads the provider's discovery document and
//! keys, sends the browser to the authorization endpoint, exchanges the code for
//! tokens, checks the ID token (`auth::oidc`) and, when the roles claim is not in
//! it, reads the userinfo endpoint for the same subject.
//!
//! Discovery and keys are fetched on first use and kept for an hour; an ID token
//! signed by a key not yet seen fetches the keys again (at most once a minute),
//! so the provider can rotate keys. Every request has a deadline and a size cap.

use crate::auth::oidc::{self, OidcError, Pending, PendingSignIns};
use crate::auth::Person;
use crate::config::{secure_or_loopback, OidcConfig};
use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::time::{Duration, Instant};

/// How long discovery and keys are trusted before they are read again.
const METADATA_LIFETIME: Duration = Duration::from_secs(60 * 60);
/// Least time between two reads of the keys for an unknown `kid`.
const KEYS_REFRESH_GAP: Duration = Duration::from_secs(60);
/// Deadline of each request to the provider.
const DEADLINE: Duration = Duration::from_secs(10);
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 1 << 20;

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
    #[serde(default)]
    code_challenge_methods_supported: Option<Vec<String>>,
}

#[derive(Clone)]
struct Metadata {
    discovery: Discovery,
    keys: JwkSet,
    read: Instant,
    keys_read: Instant,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: Option<String>,
    access_token: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

pub struct RelyingParty {
    pub config: OidcConfig,
    pub pending: PendingSignIns,
    http: reqwest::Client,
    metadata: tokio::sync::Mutex<Option<Metadata>>,
}

fn provider_error(what: &str, e: impl std::fmt::Display) -> OidcError {
    OidcError::Provider(format!("{what}: {e}"))
}

impl RelyingParty {
    pub fn new(config: OidcConfig) -> Result<RelyingParty, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(DEADLINE)
            .connect_timeout(DEADLINE)
            // The provider's documents are read where they are: a redirect is an error.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pennine-hub/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).map_err(|e| format!("oidc_ca {}: {e}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem).map_err(|e| format!("oidc_ca {}: {e}", ca.display()))?;
            builder = builder.add_root_certificate(cert);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the identity provider's client: {e}"))?;
        Ok(RelyingParty {
            config,
            pending: PendingSignIns::default(),
            http,
            metadata: tokio::sync::Mutex::new(None),
        })
    }

    /// A JSON answer of at most `MAX_ANSWER` bytes, or why not.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        req: reqwest::RequestBuilder,
        error_bodies: bool,
    ) -> Result<T, OidcError> {
        let mut res = req.send().await.map_err(|e| provider_error(what, e))?;
        let status = res.status();
        let readable = status.is_success() || (error_bodies && status.is_client_error());
        if !readable {
            return Err(provider_error(what, format!("HTTP {status}")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| provider_error(what, e))? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(provider_error(what, "the answer is too large"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| provider_error(what, e))
    }

    async fn read_keys(&self, uri: &str) -> Result<JwkSet, OidcError> {
        self.json("keys (jwks_uri)", self.http.get(uri), false).await
    }

    /// Discovery and keys, read again when old (or the keys alone, for an unknown key).
    async fn metadata(&self, keys_again: bool) -> Result<Metadata, OidcError> {
        let mut slot = self.metadata.lock().await;
        match slot.as_mut() {
            Some(m) if m.read.elapsed() < METADATA_LIFETIME => {
                if keys_again && m.keys_read.elapsed() >= KEYS_REFRESH_GAP {
                    m.keys = self.read_keys(&m.discovery.jwks_uri).await?;
                    m.keys_read = Instant::now();
                }
                return Ok(m.clone());
            }
            _ => {}
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let d: Discovery = self.json("discovery", self.http.get(&url), false).await?;
        // OIDC Discovery 4.3: the document's issuer is exactly the one configured.
        if d.issuer != self.config.issuer {
            return Err(provider_error(
                "discovery",
                format!("it names issuer '{}', not '{}'", d.issuer, self.config.issuer),
            ));
        }
        for (name, u) in [
            ("authorization_endpoint", &d.authorization_endpoint),
            ("token_endpoint", &d.token_endpoint),
            ("jwks_uri", &d.jwks_uri),
        ]
        .into_iter()
        .chain(d.userinfo_endpoint.iter().map(|u| ("userinfo_endpoint", u)))
        {
            if !secure_or_loopback(u) {
                return Err(provider_error("discovery", format!("{name} '{u}' is not https")));
            }
        }
        if let Some(methods) = &d.code_challenge_methods_supported {
            if !methods.iter().any(|m| m == "S256") {
                return Err(provider_error(
                    "discovery",
                    "the provider does not support PKCE with S256",
                ));
            }
        }
        let keys = self.read_keys(&d.jwks_uri).await?;
        let m = Metadata {
            discovery: d,
            keys,
            read: Instant::now(),
            keys_read: Instant::now(),
        };
        *slot = Some(m.clone());
        Ok(m)
    }

    /// Starts a sign-in: its `state` and the provider's authorization URL to send
    /// the browser to.
    pub async fn start(&self, redirect_uri: String, next: String) -> Result<(String, String), OidcError> {
        let m = self.metadata(false).await?;
        let (state, p) = self.pending.start(redirect_uri, next);
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.config.client_id)
            .append_pair("redirect_uri", &p.redirect_uri)
            .append_pair("scope", &self.config.scopes)
            .append_pair("state", &state)
            .append_pair("nonce", &p.nonce)
            .append_pair("code_challenge", &oidc::pkce_challenge(&p.verifier))
            .append_pair("code_challenge_method", "S256")
            .finish();
        let sep = if m.discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok((state, format!("{}{sep}{query}", m.discovery.authorization_endpoint)))
    }

    /// Finishes a sign-in with the code the provider gave: the person signed in.
    pub async fn finish(&self, code: &str, p: &Pending) -> Result<Person, OidcError> {
        let m = self.metadata(false).await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", p.redirect_uri.as_str()),
            ("code_verifier", p.verifier.as_str()),
        ];
        let post_only = m
            .discovery
            .token_endpoint_auth_methods_supported
            .as_ref()
            .is_some_and(|ms| {
                !ms.iter().any(|x| x == "client_secret_basic") && ms.iter().any(|x| x == "client_secret_post")
            });
        let mut req = self.http.post(&m.discovery.token_endpoint);
        if post_only {
            form.push(("client_id", &self.config.client_id));
            form.push(("client_secret", &self.config.client_secret));
        } else {
            // RFC 6749 2.3.1: each part form-encoded before Basic.
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            req = req.basic_auth(enc(&self.config.client_id), Some(enc(&self.config.client_secret)));
        }
        let answer: TokenAnswer = self.json("token", req.form(&form), true).await?;
        if let Some(e) = answer.error {
            return Err(OidcError::Refused(format!(
                "{e}{}",
                answer.error_description.map(|d| format!(": {d}")).unwrap_or_default()
            )));
        }
        let id_token = answer
            .id_token
            .ok_or_else(|| provider_error("token", "no id_token in the answer"))?;
        let verify = |keys: &JwkSet| {
            oidc::verify_id_token(&id_token, keys, &self.config.issuer, &self.config.client_id, &p.nonce)
        };
        let mut claims = match verify(&m.keys) {
            Err(OidcError::Token(why)) if why.starts_with("no key") => verify(&self.metadata(true).await?.keys)?,
            other => other?,
        };
        if !oidc::has_mapped_claims(&self.config, &claims) {
            if let (Some(uri), Some(access)) = (&m.discovery.userinfo_endpoint, &answer.access_token) {
                self.add_userinfo(uri, access, &mut claims).await?;
            }
        }
        oidc::person_from_claims(&self.config, &claims)
    }

    /// Adds the userinfo endpoint's claims that the ID token lacks; the subject
    /// must be the ID token's (OIDC Core 5.3.2).
    async fn add_userinfo(&self, uri: &str, access: &str, claims: &mut Map<String, Value>) -> Result<(), OidcError> {
        let info: Map<String, Value> = self
            .json("userinfo", self.http.get(uri).bearer_auth(access), false)
            .await?;
        if info.get("sub") != claims.get("sub") {
            return Err(OidcError::Token("userinfo is about another subject".into()));
        }
        for (k, v) in info {
            claims.entry(k).or_insert(v);
        }
        Ok(())
    }
}
