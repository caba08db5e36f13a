//! TLS: building the rustls server configuration from PEM files, and development certificates.
//!
//! rustls offers only TLS 1.2 and 1.3 with AEAD cipher suites (no CBC, no RC4, no TLS 1.0/1.1),
//! and with aws-lc-rs, the single crypto provider in the tree, it prefers the post-quantum
//! hybrid group X25519MLKEM768. PEM files are read with `rustls::pki_types::pem::PemObject`;
//! rustls-pemfile is unmaintained (RUSTSEC-2025-0134) and is not used.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Load a certificate chain and its private key into a server config offering HTTP/1.1.
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
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
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| format!("tls: certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A self-signed certificate and key for `hosts`, in PEM.
pub fn self_signed(hosts: &[String]) -> Result<(String, String), String> {
    let ck = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("cannot generate a certificate: {e}"))?;
    Ok((ck.cert.pem(), ck.signing_key.serialize_pem()))
}

/// Write a development pair; the key file is created readable by its owner only.
pub fn write_self_signed(cert: &Path, key: &Path, hosts: &[String]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let (cert_pem, key_pem) = self_signed(hosts)?;
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = (dir.path().join("c1.pem"), dir.path().join("k1.pem"));
        let (c2, k2) = (dir.path().join("c2.pem"), dir.path().join("k2.pem"));
        write_self_signed(&c1, &k1, &["localhost".into()]).unwrap();
        write_self_signed(&c2, &k2, &["localhost".into()]).unwrap();
        assert!(load_server_config(&c1, &k1).is_ok());
        let e = load_server_config(&c1, &k2).unwrap_err();
        assert!(e.starts_with("tls:"), "{e}");
        let e = load_server_config(&c1, &dir.path().join("missing")).unwrap_err();
        assert!(e.starts_with("tls.key:"), "{e}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k1).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
