//! TLS for the device MQTT listener (rustls with the ring provider), and X.509 thumbprint
//! authentication.
//!
//! The listener offers (but does not require) client certificates and accepts any
//! certificate whose handshake signature is valid: like IoT Hub with self-signed device
//! certificates, the device is authenticated afterwards by comparing the certificate's
//! thumbprint with the one registered for the device (see [`thumbprint_matches`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, ServerConfig, SignatureScheme};

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// The key file holds no private key.
    #[error("{0}: no PEM private key (PKCS#8, PKCS#1 or SEC1) found")]
    NoKey(PathBuf),
    /// The key file grants access to its group or to others.
    #[error(
        "refusing TLS key {path}: mode {mode:04o} lets group or others access it; \
         restrict it with `chmod 600 {path}`"
    )]
    KeyNotPrivate {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// rustls refused the certificate/key pair.
    #[error("building the TLS server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration from PEM files: a certificate chain and its private key. A key file
/// that its group or others may access (any of mode `0o077`) is refused, as ssh does.
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    check_key_is_private(key)?;
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            path: cert.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_owned()));
    }
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::NoKey(key.to_owned()))?;
    server_config(certs, key_der)
}

/// Refuses a key file whose mode grants its group or others any access.
fn check_key_is_private(key: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(key)
        .map_err(|source| TlsError::Read {
            path: key.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyNotPrivate {
            path: key.to_owned(),
            mode,
        });
    }
    Ok(())
}

/// A server configuration from DER certificate chain and key. Client certificates are
/// optional and checked only for a valid handshake signature (authentication is by
/// thumbprint, after the handshake).
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AnyClientCert {
        algorithms: provider.signature_verification_algorithms,
    });
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

/// Whether `thumbprint` (hex, case-insensitive; `:` and spaces ignored) is the SHA-1 or the
/// SHA-256 digest of the DER certificate `cert`, the two forms IoT Hub accepts.
pub fn thumbprint_matches(cert: &[u8], thumbprint: &str) -> bool {
    let wanted: String = thumbprint
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let hex = |d: &[u8]| {
        d.iter()
            .fold(String::with_capacity(2 * d.len()), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    };
    let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, cert);
    let sha256 = ring::digest::digest(&ring::digest::SHA256, cert);
    !wanted.is_empty() && (wanted == hex(sha1.as_ref()) || wanted == hex(sha256.as_ref()))
}

/// Accepts any client certificate with a valid handshake signature; authentication happens
/// later by thumbprint.
#[derive(Debug)]
struct AnyClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        // SAS devices connect over TLS without a certificate.
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbprints_sha1_and_sha256() {
        // Digests of the three bytes "abc" (FIPS 180 test vectors).
        let sha1 = "a9993e364706816aba3e25717850c26c9cd0d89d";
        let sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(thumbprint_matches(b"abc", sha1));
        assert!(thumbprint_matches(b"abc", &sha1.to_uppercase()));
        assert!(thumbprint_matches(b"abc", sha256));
        assert!(thumbprint_matches(
            b"abc",
            "A9:99:3E:36:47:06:81:6A:BA:3E:25:71:78:50:C2:6C:9C:D0:D8:9D"
        ));
        assert!(!thumbprint_matches(b"abd", sha1));
        assert!(!thumbprint_matches(b"abc", ""));
    }
}
