//! TLS client configuration (rustls, ring provider). Server verification is always on:
//! there is deliberately no switch to turn it off.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::LinkError;

/// The trusted roots: the system's (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`) plus
/// the certificates of `ca_file`. A system without roots is fine when a CA file is given.
pub fn root_store(ca_file: Option<&Path>) -> Result<RootCertStore, LinkError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::debug!(error = %err, "skipping unreadable system root certificates");
    }
    // Unparseable system roots are skipped (one bad file must not stop the gateway).
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates");
    if let Some(path) = ca_file {
        let certs = read_certs(path, "CA file")?;
        for cert in certs {
            roots.add(cert).map_err(|e| {
                LinkError::Tls(format!(
                    "CA file {}: certificate not usable as a trust anchor: {e}",
                    path.display()
                ))
            })?;
        }
    }
    if roots.is_empty() {
        return Err(LinkError::Tls(
            "no trusted root certificates: the system has none (install ca-certificates) \
             and no ca_file is configured"
                .into(),
        ));
    }
    Ok(roots)
}

/// A client configuration trusting `roots`, without a client certificate (SAS devices).
pub fn client_config(roots: Arc<RootCertStore>) -> Result<Arc<ClientConfig>, LinkError> {
    Ok(Arc::new(builder(roots)?.with_no_client_auth()))
}

/// A client configuration trusting `roots` and presenting the certificate chain in
/// `cert_file` with the key in `key_file` (X.509 devices).
pub fn client_config_with_cert(
    roots: Arc<RootCertStore>,
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ClientConfig>, LinkError> {
    let chain = read_certs(cert_file, "client certificate file")?;
    let key = read_key(key_file)?;
    let config = builder(roots)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            LinkError::Tls(format!(
                "client certificate {} with key {}: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    Ok(Arc::new(config))
}

fn builder(
    roots: Arc<RootCertStore>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, LinkError> {
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| LinkError::Tls(format!("TLS protocol versions: {e}")))?
            .with_root_certificates(roots),
    )
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, LinkError> {
    let pem = std::fs::read(path)
        .map_err(|e| LinkError::Tls(format!("reading {what} {}: {e}", path.display())))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| LinkError::Tls(format!("parsing {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(LinkError::Tls(format!(
            "{what} {}: no PEM certificate found",
            path.display()
        )));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, LinkError> {
    let pem = std::fs::read(path)
        .map_err(|e| LinkError::Tls(format!("reading client key file {}: {e}", path.display())))?;
    // The parser's error is about the PEM structure; it never echoes key material.
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| LinkError::Tls(format!("parsing client key file {}: {e}", path.display())))?
        .ok_or_else(|| {
            LinkError::Tls(format!(
                "client key file {}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found",
                path.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ca_file_is_named() {
        let err = root_store(Some(Path::new("/nonexistent/ca.pem"))).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
        assert!(msg.contains("CA file"), "{msg}");
    }

    #[test]
    fn ca_file_without_certificates_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let msg = root_store(Some(&path)).unwrap_err().to_string();
        assert!(
            msg.contains("empty.pem") && msg.contains("no PEM certificate"),
            "{msg}"
        );
    }

    #[test]
    fn missing_client_key_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["dev".to_owned()]).unwrap();
        let cert = dir.path().join("dev.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        let roots = Arc::new(root_store(Some(&cert)).unwrap());
        let msg = client_config_with_cert(roots, &cert, &dir.path().join("dev.key"))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("dev.key"), "{msg}");
    }
}
