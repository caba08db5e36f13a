//! TLS: the rustls server configuration, the certificate it serves (reloadable), and
//! development certificates.
//!
//! rustls offers only TLS 1.2 and 1.3 with AEAD cipher suites (no CBC, no RC4, no TLS 1.0/1.1),
//! and with aws-lc-rs, the single crypto provider in the tree, it prefers the post-quantum
//! hybrid group X25519MLKEM768. The certificate sits behind [`CertStore`] so SIGHUP can swap
//! it: new handshakes get the new pair, live connections keep theirs, and a broken pair is
//! refused while the old one stays in use. PEM files are read with
//! `rustls::pki_types::pem::PemObject`; rustls-pemfile is unmaintained (RUSTSEC-2025-0134).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, SignatureAlgorithm};

use crate::config::TlsProfile;

/// The certificate and key served to new handshakes, replaceable while running.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
    cert_path: PathBuf,
    key_path: PathBuf,
    profile: TlsProfile,
    provider: Arc<CryptoProvider>,
}

impl CertStore {
    /// Load the pair at these paths; fails with the config key at fault.
    pub fn load(cert: &Path, key: &Path, profile: TlsProfile) -> Result<Arc<CertStore>, String> {
        let provider = Arc::new(crate::hkdf::provider());
        let ck = load_pair(cert, key, profile, &provider)?;
        Ok(Arc::new(CertStore {
            current: RwLock::new(Arc::new(ck)),
            cert_path: cert.to_path_buf(),
            key_path: key.to_path_buf(),
            profile,
            provider,
        }))
    }

    /// Read the files again and, if they form a usable pair, serve them from now on.
    /// On error the current pair stays in use.
    pub fn reload(&self) -> Result<(), String> {
        let ck = load_pair(
            &self.cert_path,
            &self.key_path,
            self.profile,
            &self.provider,
        )?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(ck);
        Ok(())
    }

    /// A server config that asks this store for its certificate on every handshake.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, String> {
        let versions: &[&rustls::SupportedProtocolVersion] = match self.profile {
            TlsProfile::Intermediate => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsProfile::Modern => &[&rustls::version::TLS13],
        };
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| format!("tls: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn load_pair(
    cert: &Path,
    key: &Path,
    profile: TlsProfile,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, String> {
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("tls.cert: cannot read {}: {e}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "tls.cert: {} is not a PEM certificate chain: {e}",
                cert.display()
            )
        })?;
    if chain.is_empty() {
        return Err(format!("tls.cert: {} holds no certificate", cert.display()));
    }
    // The key's path is named, its content never: an error here must not echo key material.
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|_| {
        format!(
            "tls.key: {} holds no readable PEM private key",
            key.display()
        )
    })?;
    let ck = CertifiedKey::from_der(chain, key_der, provider)
        .map_err(|e| format!("tls: certificate and key do not form a usable pair: {e}"))?;
    if profile == TlsProfile::Modern
        && !matches!(
            ck.key.algorithm(),
            SignatureAlgorithm::ECDSA | SignatureAlgorithm::ED25519
        )
    {
        return Err(
            "tls.profile = \"modern\" needs an ECDSA (or Ed25519) certificate; this key is RSA"
                .into(),
        );
    }
    Ok(ck)
}

/// A self-signed certificate and key for `hosts`, in PEM.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), String> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Whether `host` can go in a certificate's subject alternative names: an IP address, or a
/// DNS name of letters, digits and hyphens in dot-separated labels of 1 to 63 (a leading
/// `*.` allowed), 253 characters at most.
pub fn valid_host(host: &str) -> bool {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && host.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Write a development pair; the key file is created readable by its owner only. Existing
/// files are kept unless `force`; returns what was created, for the operator to read.
pub fn write_self_signed(
    cert: &Path,
    key: &Path,
    hosts: &[String],
    force: bool,
) -> Result<Vec<String>, String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(bad) = hosts.iter().find(|h| !valid_host(h)) {
        return Err(format!(
            "{bad:?} is not a host name or IP address (such as localhost, chat.example.com, 127.0.0.1)"
        ));
    }
    if !force {
        if let Some(p) = [cert, key].into_iter().find(|p| p.exists()) {
            return Err(format!(
                "{} exists; not overwriting it (use --force to replace it)",
                p.display()
            ));
        }
    }
    let (cert_pem, key_pem) = self_signed(hosts)?;
    let mut created = Vec::new();
    for p in [cert, key] {
        if let Some(dir) = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            created.push(format!("directory {}", dir.display()));
        }
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(key)
        .and_then(|mut f| f.write_all(key_pem.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", key.display()))?;
    std::fs::write(cert, cert_pem).map_err(|e| format!("cannot write {}: {e}", cert.display()))?;
    created.push(format!(
        "certificate {} for {}",
        cert.display(),
        hosts.join(", ")
    ));
    created.push(format!("private key {} (mode 600)", key.display()));
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_mismatch_is_refused_and_reload_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("c1.pem"), dir.path().join("k1.pem"));
        let (c2, k2) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
        write_self_signed(&c1, &k1, &["localhost".into()], false).unwrap();
        write_self_signed(&c2, &k2, &["localhost".into()], false).unwrap();
        let store = CertStore::load(&c1, &k1, TlsProfile::Modern).unwrap();
        assert!(store.server_config().is_ok());
        let e = CertStore::load(&c1, &k2, TlsProfile::Intermediate).unwrap_err();
        assert!(e.starts_with("tls:"), "{e}");
        let e = CertStore::load(&c1, &dir.path().join("missing"), TlsProfile::Intermediate)
            .unwrap_err();
        assert!(e.starts_with("tls.key:"), "{e}");

        let before = store.current.read().unwrap().cert[0].clone();
        std::fs::copy(&k2, &k1).unwrap();
        assert!(store.reload().is_err());
        assert_eq!(store.current.read().unwrap().cert[0], before);
        std::fs::copy(&c2, &c1).unwrap();
        store.reload().unwrap();
        assert_ne!(store.current.read().unwrap().cert[0], before);

        // Never overwritten without force; a bad host name is refused.
        let e = write_self_signed(&c1, &k1, &["localhost".into()], false).unwrap_err();
        assert!(e.contains("exists") && e.contains("--force"), "{e}");
        for bad in ["", "a b", "-x.com", "x..com", "x/y", "\u{e9}.com"] {
            assert!(!valid_host(bad), "{bad:?}");
        }
        for good in [
            "localhost",
            "127.0.0.1",
            "::1",
            "chat.example.com",
            "*.example.com",
        ] {
            assert!(valid_host(good), "{good:?}");
        }

        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k2).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
