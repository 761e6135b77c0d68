//! `wss://`: a rustls acceptor from the PEM files named by `WS_TLS_CERT` and `WS_TLS_KEY`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use ws_protocol::WebSocketConfig;

use crate::error::{Result, ServerError};

/// The acceptor the configuration asks for; `None` without `WS_TLS_CERT`.
pub(crate) fn acceptor_from_config(config: &WebSocketConfig) -> Result<Option<TlsAcceptor>> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        _ => {
            return Err(ServerError::Tls(
                "set both WS_TLS_CERT and WS_TLS_KEY, or neither".to_owned(),
            ));
        }
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect())
        .map_err(|e| ServerError::Tls(format!("WS_TLS_CERT={cert}: {e}")))?;
    if chain.is_empty() {
        return Err(ServerError::Tls(format!(
            "WS_TLS_CERT={cert}: no certificate in the file"
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| ServerError::Tls(format!("WS_TLS_KEY={key}: {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    Ok(Some(TlsAcceptor::from(Arc::new(tls))))
}
