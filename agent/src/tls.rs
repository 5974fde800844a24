//! TLS for `wss://`: a self-signed certificate made once with rcgen and kept on
//! disk, so the socktop client can pin it (`socktop --tls-ca cert.pem`). It is
//! reused on every start; delete the folder to get a new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Validity of a new certificate: the longest that browsers and most TLS stacks
/// accept for a leaf (398 days), less a day.
const VALIDITY_DAYS: i64 = 397;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("creating {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading {path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the certificate or key is not usable: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the certificate lives and how to recognise it.
#[derive(Debug, Clone)]
pub struct CertificateInfo {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// SHA-256 of the DER certificate, as `AA:BB:...`.
    pub sha256: String,
    /// Whether it was made on this start (as opposed to loaded).
    pub created: bool,
}

/// `$XDG_DATA_HOME/socktop_agent/tls`, or `~/.local/share/socktop_agent/tls`.
pub fn default_dir(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let data = xdg_data_home.filter(|p| p.is_absolute()).or_else(|| home.map(|h| h.join(".local/share")))?;
    Some(data.join("socktop_agent").join("tls"))
}

/// Loads the certificate in `dir`, creating it first if it is not there, and
/// builds the acceptor.
pub fn load_or_create(dir: &Path) -> Result<(TlsAcceptor, CertificateInfo), TlsError> {
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    let created = !(cert_path.exists() && key_path.exists());
    if created {
        create(dir, &cert_path, &key_path)?;
    }
    let pem_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Pem { path, source }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(pem_error(&cert_path))?
        .collect::<Result<_, _>>()
        .map_err(pem_error(&cert_path))?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(pem_error(&key_path))?;
    let sha256 = certs.first().map(|c| fingerprint(c)).unwrap_or_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok((TlsAcceptor::from(Arc::new(config)), CertificateInfo { cert_path, key_path, sha256, created }))
}

fn create(dir: &Path, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let mut params = CertificateParams::new(subject_alt_names())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "socktop_agent");
    params.distinguished_name = name;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_error(key_path))?;
    write_file(cert_path, cert.pem().as_bytes(), 0o644).map_err(io_error(cert_path))?;
    Ok(())
}

/// Writes a file created with `mode` from the start, so the key is never readable
/// by others, even briefly.
fn write_file(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    file.write_all(content)?;
    file.sync_all()
}

/// localhost, the loopback addresses, the host name and every address of the host.
fn subject_alt_names() -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if let Ok(host) = fs::read_to_string("/proc/sys/kernel/hostname") {
        names.push(host.trim().to_owned());
    }
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => names.extend(interfaces.into_iter().map(|i| i.ip().to_string())),
        Err(e) => tracing::warn!(error = %e, "listing the host's addresses for the certificate failed"),
    }
    names.retain(|n| !n.is_empty());
    names.sort();
    names.dedup();
    names
}

fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    digest.as_ref().iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_certificate_is_made_once_with_a_private_key_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("socktop_agent/tls");
        let (_, first) = load_or_create(&tls).unwrap();
        assert!(first.created);
        let mode = fs::metadata(&first.key_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (_, second) = load_or_create(&tls).unwrap();
        assert!(!second.created);
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.sha256.len(), 32 * 3 - 1);
    }

    #[test]
    fn a_corrupt_certificate_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        fs::write(dir.path().join("key.pem"), "not a key").unwrap();
        assert!(load_or_create(dir.path()).is_err());
        assert_eq!(fs::read_to_string(dir.path().join("cert.pem")).unwrap(), "not a certificate");
    }

    #[test]
    fn the_folder_follows_xdg_data_home_then_home() {
        let xdg = default_dir(Some("/data".into()), Some("/home/u".into()));
        assert_eq!(xdg, Some(PathBuf::from("/data/socktop_agent/tls")));
        let home = default_dir(None, Some("/home/u".into()));
        assert_eq!(home, Some(PathBuf::from("/home/u/.local/share/socktop_agent/tls")));
        // The XDG spec says relative paths are to be ignored.
        assert_eq!(default_dir(Some("rel".into()), None), None);
    }

    #[test]
    fn names_cover_loopback_and_localhost() {
        let names = subject_alt_names();
        for expected in ["localhost", "127.0.0.1", "::1"] {
            assert!(names.iter().any(|n| n == expected), "{names:?}");
        }
    }
}
