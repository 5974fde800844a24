//! TLS for `wss://`: a self-signed certificate made once with rcgen and kept on
//! disk, so the socktop client can pin it (`socktop --tls-ca cert.pem`). It is
//! reused on every start; delete the folder to get a new one.
//!
//! The private key is handled the way certbot and certmagic handle theirs: its
//! folder is 0700, it is written to a temporary file created 0600 in that folder,
//! synced to disk and renamed into place, so a crash never leaves half a key and
//! the key is never readable by others, not even briefly. A file that cannot be
//! read or parsed stops the start with an error naming it and saying how to start
//! over; the certificate's expiry is logged at every start, with a warning in its
//! last 30 days.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Validity of a new certificate: the longest that browsers and most TLS stacks
/// accept for a leaf (398 days), less a day.
const VALIDITY_DAYS: i64 = 397;

/// How long before its expiry a certificate is warned about at start.
const EXPIRY_WARNING: time::Duration = time::Duration::days(30);

const CERT_FILE: &str = "cert.pem";
const KEY_FILE: &str = "key.pem";

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
    /// A certificate or key file that cannot be used, with how to start over.
    #[error("{}: {problem}. {}", path.display(), start_over_hint(path))]
    Unusable { path: PathBuf, problem: String },
    #[error("setting up TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What to do about an unusable file: the files are ours to remake.
fn start_over_hint(path: &Path) -> String {
    let dir = path.parent().unwrap_or(Path::new("."));
    format!(
        "To have a new self-signed certificate made, delete {} and {} and start the agent again \
         (clients that pin the old certificate then need the new {CERT_FILE})",
        dir.join(CERT_FILE).display(),
        dir.join(KEY_FILE).display(),
    )
}

fn unusable(path: &Path, problem: impl Into<String>) -> TlsError {
    TlsError::Unusable { path: path.to_path_buf(), problem: problem.into() }
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
    /// The certificate's notAfter.
    pub not_after: OffsetDateTime,
}

/// How close a certificate is to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Valid {
        days_left: i64,
    },
    /// Within [`EXPIRY_WARNING`] of its notAfter.
    Soon {
        days_left: i64,
    },
    Expired {
        days_ago: i64,
    },
}

impl CertificateInfo {
    pub fn expiry(&self, now: OffsetDateTime) -> Expiry {
        let left = self.not_after - now;
        if left.is_negative() {
            Expiry::Expired { days_ago: -left.whole_days() }
        } else if left < EXPIRY_WARNING {
            Expiry::Soon { days_left: left.whole_days() }
        } else {
            Expiry::Valid { days_left: left.whole_days() }
        }
    }

    /// Logs when the certificate expires: info while it has time left, a warning
    /// in its last 30 days and once expired.
    pub fn log_expiry(&self) {
        let until = self.not_after.date();
        let renew = format!(
            "delete {} and {} and restart to have a new one made",
            self.cert_path.display(),
            self.key_path.display()
        );
        match self.expiry(OffsetDateTime::now_utc()) {
            Expiry::Valid { days_left } => {
                tracing::info!("TLS certificate valid until {until} ({days_left} days left)")
            }
            Expiry::Soon { days_left } => {
                tracing::warn!("TLS certificate expires on {until}, in {days_left} days: {renew}")
            }
            Expiry::Expired { days_ago } => {
                tracing::warn!(
                    "TLS certificate expired on {until}, {days_ago} days ago; clients will refuse it: {renew}"
                )
            }
        }
    }
}

/// `$XDG_DATA_HOME/socktop_agent/tls`, or `~/.local/share/socktop_agent/tls`.
pub fn default_dir(xdg_data_home: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    let data = xdg_data_home.filter(|p| p.is_absolute()).or_else(|| home.map(|h| h.join(".local/share")))?;
    Some(data.join("socktop_agent").join("tls"))
}

/// Loads the certificate in `dir`, creating it first if it is not there, and
/// builds the acceptor.
pub fn load_or_create(dir: &Path) -> Result<(TlsAcceptor, CertificateInfo), TlsError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let created = !(cert_path.exists() && key_path.exists());
    if created {
        create(dir, VALIDITY_DAYS)?;
    }
    let certs = read_certificates(&cert_path)?;
    let not_after = not_after(&certs[0], &cert_path)?;
    let key = read_key(&key_path)?;
    let sha256 = fingerprint(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| unusable(&key_path, format!("is not the key of {}: {e}", cert_path.display())))?;
    let info = CertificateInfo { cert_path, key_path, sha256, created, not_after };
    Ok((TlsAcceptor::from(Arc::new(config)), info))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| unusable(path, format!("cannot be read: {e}")))
}

/// Every certificate in a PEM file; at least one.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_file(path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| unusable(path, format!("is not a PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(unusable(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read_file(path)?;
    warn_if_others_may_read(path);
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| unusable(path, format!("holds no usable PEM private key: {e}")))
}

/// A key the owner put there with loose permissions still works, but is said.
fn warn_if_others_may_read(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!("{} is open to other users (mode {mode:04o}); `chmod 600` it", path.display());
        }
    }
}

/// The certificate's notAfter, which also proves it is X.509 DER.
fn not_after(cert: &CertificateDer<'_>, path: &Path) -> Result<OffsetDateTime, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| unusable(path, format!("is not an X.509 certificate: {e}")))?;
    OffsetDateTime::from_unix_timestamp(parsed.validity().not_after.timestamp())
        .map_err(|e| unusable(path, format!("has an out-of-range expiry: {e}")))
}

/// Makes a key pair and a self-signed certificate valid for `validity_days`.
fn create(dir: &Path, validity_days: i64) -> Result<(), TlsError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TlsError::Io { path, source }
    };
    private_dir(dir).map_err(io_error(dir))?;
    let mut params = CertificateParams::new(subject_alt_names())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "socktop_agent");
    params.distinguished_name = name;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(validity_days);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    let (key_path, cert_path) = (dir.join(KEY_FILE), dir.join(CERT_FILE));
    write_atomically(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io_error(&key_path))?;
    write_atomically(&cert_path, cert.pem().as_bytes(), 0o644).map_err(io_error(&cert_path))?;
    Ok(())
}

/// Creates `dir` (and missing parents) 0700, or narrows an existing one to 0700:
/// the key's temporary file is made there before it is renamed.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode != 0o700 {
        tracing::info!("narrowing {} from mode {mode:04o} to 0700 before writing a private key in it", dir.display());
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `content` to a temporary file created with `mode` next to `path`,
/// syncs it, renames it over `path` and syncs the folder, so `path` holds either
/// its old content or all of the new, whatever happens in between.
fn write_atomically(path: &Path, content: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut file = tempfile::Builder::new()
        .prefix(".socktop-tls-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    file.write_all(content)?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    fs::File::open(dir)?.sync_all()
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

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_certificate_is_made_once_with_a_private_key_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("socktop_agent/tls");
        let (_, first) = load_or_create(&tls).unwrap();
        assert!(first.created);
        assert_eq!(mode(&first.key_path), 0o600);
        assert_eq!(mode(&tls), 0o700);
        let (_, second) = load_or_create(&tls).unwrap();
        assert!(!second.created);
        assert_eq!(first.sha256, second.sha256);
        assert_eq!(first.sha256.len(), 32 * 3 - 1);
        // Only the two files: no temporary file left behind.
        let mut names: Vec<_> = fs::read_dir(&tls).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["cert.pem", "key.pem"]);
    }

    #[test]
    fn a_key_is_written_in_a_folder_narrowed_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        load_or_create(dir.path()).unwrap();
        assert_eq!(mode(dir.path()), 0o700);
        assert_eq!(mode(&dir.path().join(KEY_FILE)), 0o600);
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        fs::write(&path, "old content that is longer than the new one").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_atomically(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(mode(&path), 0o600);
    }

    /// The error text of loading `dir`, which must not be a success.
    fn load_error(dir: &Path) -> String {
        match load_or_create(dir) {
            Ok(_) => panic!("loaded a bad certificate or key"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_corrupt_certificate_is_reported_by_name_with_how_to_start_over_and_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(CERT_FILE), "not a certificate").unwrap();
        fs::write(dir.path().join(KEY_FILE), "not a key").unwrap();
        let error = load_error(dir.path());
        assert!(error.starts_with(&dir.path().join(CERT_FILE).display().to_string()), "{error}");
        assert!(error.contains("holds no PEM certificate"), "{error}");
        assert!(error.contains("delete") && error.contains("key.pem"), "{error}");
        assert_eq!(fs::read_to_string(dir.path().join(CERT_FILE)).unwrap(), "not a certificate");
    }

    #[test]
    fn a_corrupt_key_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        fs::write(dir.path().join(KEY_FILE), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap();
        let error = load_error(dir.path());
        assert!(error.starts_with(&dir.path().join(KEY_FILE).display().to_string()), "{error}");
    }

    #[test]
    fn a_key_of_another_certificate_is_reported_as_such() {
        let (one, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        load_or_create(one.path()).unwrap();
        load_or_create(other.path()).unwrap();
        fs::copy(other.path().join(KEY_FILE), one.path().join(KEY_FILE)).unwrap();
        let error = load_error(one.path());
        assert!(error.contains("is not the key of"), "{error}");
    }

    #[test]
    fn a_garbled_certificate_body_is_reported_not_parsed() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let garbled = "-----BEGIN CERTIFICATE-----\nMIIBAAAAAAAA\n-----END CERTIFICATE-----\n";
        fs::write(dir.path().join(CERT_FILE), garbled).unwrap();
        let error = load_error(dir.path());
        assert!(error.contains("is not an X.509 certificate"), "{error}");
    }

    #[test]
    fn an_unreadable_file_is_reported_by_name() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        // A folder in the certificate's place cannot be read, even by root.
        fs::remove_file(dir.path().join(CERT_FILE)).unwrap();
        fs::create_dir(dir.path().join(CERT_FILE)).unwrap();
        let error = load_error(dir.path());
        assert!(error.contains("cert.pem: cannot be read"), "{error}");
    }

    #[test]
    fn expiry_is_read_from_the_certificate_and_warned_about_in_its_last_30_days() {
        let dir = tempfile::tempdir().unwrap();
        create(dir.path(), 10).unwrap();
        let (_, info) = load_or_create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        assert!((info.not_after - (now + time::Duration::days(10))).abs() < time::Duration::minutes(5));
        assert!(matches!(info.expiry(now), Expiry::Soon { days_left: 9 | 10 }), "{:?}", info.expiry(now));
        let later = now + time::Duration::days(12);
        assert!(matches!(info.expiry(later), Expiry::Expired { days_ago: 1 | 2 }), "{:?}", info.expiry(later));
        let earlier = now - time::Duration::days(100);
        assert!(matches!(info.expiry(earlier), Expiry::Valid { days_left: 109 | 110 }), "{:?}", info.expiry(earlier));
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
