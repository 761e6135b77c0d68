//! TLS for `wss://`: rustls with the platform's root certificates, plus any the application adds.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tracing::warn;

use crate::error::{Error, Result};

/// Parses every certificate of a PEM text (or a single DER certificate).
pub(crate) fn parse_certificates(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    if bytes.starts_with(b"-----BEGIN") {
        CertificateDer::pem_slice_iter(bytes)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::InvalidConfig(format!("bad PEM certificate: {e}")))
    } else {
        Ok(vec![CertificateDer::from(bytes.to_vec())])
    }
}

/// A rustls client configuration trusting the platform's roots and `extra` roots.
pub(crate) fn client_config(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        warn!(%error, "could not load some platform root certificates");
    }
    let (_, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        warn!(ignored, "ignored unparsable platform root certificates");
    }
    for cert in extra {
        roots
            .add(cert.clone())
            .map_err(|e| Error::InvalidConfig(format!("bad root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
