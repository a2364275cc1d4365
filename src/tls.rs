//! TLS with rustls: server and client configurations from PEM files, and the
//! development certificates of `pennine dev-certs`.
//!
//! Trust model: one CA signs every certificate. Node certificates carry only
//! the server-auth usage; the hub's carries server- and client-auth, so the
//! hub is the only party that can complete a node's client-certificate
//! request. A node's TLS layer asks for a client certificate but does not
//! require one (partners and vendors connect without); the federation routes
//! require it (`http::federation`).

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The PEM files of one party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA that signs peers' certificates (clients of a node, nodes for the hub).
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The files `dev-certs` writes for `name` (a region slug or `hub`).
    pub fn in_dir(dir: &Path, name: &str) -> TlsFiles {
        TlsFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
            ca: Some(dir.join("ca.pem")),
        }
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| TlsError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!(
            "{} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        path: path.display().to_string(),
        message: format!("no usable private key: {e}"),
    })
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Invalid(format!("{}: {e}", ca.display())))?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// A server configuration; with a CA, clients are asked (not required) for a
/// certificate signed by it.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match &files.ca {
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::Invalid(format!("client verifier: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", files.cert.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A client configuration that trusts only `files.ca` and presents `files.cert`.
pub fn client_config(files: &TlsFiles) -> Result<rustls::ClientConfig, TlsError> {
    let ca = files
        .ca
        .as_ref()
        .ok_or_else(|| TlsError::Invalid("a CA certificate is needed to verify nodes".into()))?;
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", files.cert.display())))
}

/// Writes a development CA and certificates for the hub and each region into
/// `dir`, valid for 127.0.0.1, localhost, the party's own name and `hosts`.
pub fn dev_certs(dir: &Path, regions: &[&str], hosts: &[String]) -> Result<Vec<PathBuf>, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    let fail = |e: rcgen::Error| TlsError::Invalid(format!("certificate generation failed: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| TlsError::Read {
        path: dir.display().to_string(),
        message: e.to_string(),
    })?;
    let mut written = Vec::new();
    let mut write = |name: &str, text: &str, secret: bool| -> Result<(), TlsError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| TlsError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        let _ = secret;
        written.push(path);
        Ok(())
    };
    let validity = |p: &mut CertificateParams| {
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2036, 1, 1);
    };
    let ca_key = KeyPair::generate().map_err(fail)?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Pennine development CA");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params);
    let ca_cert = ca_params.self_signed(&ca_key).map_err(fail)?;
    write("ca.pem", &ca_cert.pem(), false)?;
    write("ca-key.pem", &ca_key.serialize_pem(), true)?;
    let mut parties: Vec<(&str, bool)> = vec![("hub", true)];
    parties.extend(regions.iter().map(|r| (*r, false)));
    for (name, is_hub) in parties {
        let key = KeyPair::generate().map_err(fail)?;
        let mut names = vec!["localhost".to_string(), name.to_string()];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names).map_err(fail)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("pennine {name}"));
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = if is_hub {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        };
        validity(&mut params);
        let cert = params.signed_by(&key, &ca_cert, &ca_key).map_err(fail)?;
        write(&format!("{name}.pem"), &cert.pem(), false)?;
        write(&format!("{name}-key.pem"), &key.serialize_pem(), true)?;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_load_as_server_and_client() {
        let dir = tempfile::tempdir().unwrap();
        dev_certs(dir.path(), &["nenc"], &[]).unwrap();
        server_config(&TlsFiles::in_dir(dir.path(), "nenc")).unwrap();
        server_config(&TlsFiles::in_dir(dir.path(), "hub")).unwrap();
        client_config(&TlsFiles::in_dir(dir.path(), "hub")).unwrap();
        let e = server_config(&TlsFiles::in_dir(dir.path(), "nowhere")).unwrap_err();
        assert!(e.to_string().contains("nowhere.pem"), "{e}");
    }
}
