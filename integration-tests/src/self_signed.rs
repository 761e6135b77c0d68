//! [`SelfSignedTls`]: a certificate for `localhost` made by the test, written where a hub's
//! `WS_TLS_CERT` / `WS_TLS_KEY` can read it, and removed when dropped.

use std::path::PathBuf;

use anyhow::Result;
use ws_protocol::WebSocketConfig;

/// See the module documentation.
#[derive(Debug)]
pub struct SelfSignedTls {
    /// A configuration serving `wss://` with the certificate.
    pub config: WebSocketConfig,
    /// The certificate in PEM, for a client to trust as its root.
    pub root_pem: String,
    dir: PathBuf,
}

impl SelfSignedTls {
    /// Makes the certificate and its files in a directory named after `name`.
    ///
    /// # Errors
    /// If the files cannot be written.
    pub fn new(name: &str) -> Result<Self> {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem())?;
        std::fs::write(&key, certified.signing_key.serialize_pem())?;
        let config = WebSocketConfig::from_vars([
            ("WS_TLS_CERT", cert.to_string_lossy().into_owned()),
            ("WS_TLS_KEY", key.to_string_lossy().into_owned()),
        ])?;
        Ok(Self {
            config,
            root_pem: certified.cert.pem(),
            dir,
        })
    }
}

impl Drop for SelfSignedTls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
