//! HTTPS: a local CA made at start-up, and a certificate issued on the fly for whatever
//! name the client sends in SNI (or for 127.0.0.1/localhost without SNI), so any
//! portal domain validates for a client that trusts `ca.pem`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::EmuError;

fn tls_err(e: impl std::fmt::Display) -> EmuError {
    EmuError::Tls(e.to_string())
}

/// The local certificate authority and the cache of issued leaf certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// PEM of the CA certificate (what `ca.pem` holds).
    pub pem: String,
    key_pem: String,
    cache: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a fresh CA.
    pub fn generate() -> Result<Ca, EmuError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "b24emu local CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params.self_signed(&key).map_err(tls_err)?;
        let pem = cert.pem();
        let key_pem = key.serialize_pem();
        Ok(Ca {
            issuer: Issuer::new(params, key),
            ca_der: cert.der().clone(),
            pem,
            key_pem,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Writes `ca.pem` (and `ca.key`) into `dir`, creating it.
    pub fn write_to(&self, dir: &Path) -> Result<(), EmuError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), &self.pem)?;
        std::fs::write(dir.join("ca.key"), &self.key_pem)?;
        Ok(())
    }

    /// The certificate for `name` (a DNS name or an IP), issued once and cached.
    pub fn certified_key(&self, name: &str) -> Result<Arc<CertifiedKey>, EmuError> {
        let name = name.to_ascii_lowercase();
        if let Some(k) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
        {
            return Ok(k.clone());
        }
        let sans = if name == "127.0.0.1" {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            vec![name.clone()]
        };
        let mut params = CertificateParams::new(sans).map_err(tls_err)?;
        params
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(tls_err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signer = rustls::crypto::ring::sign::any_supported_type(&der).map_err(tls_err)?;
        let ck = Arc::new(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            signer,
        ));
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name, ck.clone());
        Ok(ck)
    }
}

/// rustls resolver issuing per-SNI certificates from the [`Ca`].
#[derive(Debug)]
pub struct SniResolver(pub Arc<Ca>);

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name().unwrap_or("127.0.0.1");
        match self.0.certified_key(name) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!(%name, error = %e, "cannot issue certificate");
                None
            }
        }
    }
}

/// The server TLS configuration (HTTP/1.1 only).
pub fn server_config(ca: Arc<Ca>) -> Result<rustls::ServerConfig, EmuError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver(ca)));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
