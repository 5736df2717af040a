//! Client authentication without a shared secret: `private_key_jwt`
//! assertions (RFC 7523) checked against a registered public key, and mutual
//! TLS (RFC 8705) with the client certificate's fingerprint registered.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::IncomingStream;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    self,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::error::OAuthError;
use crate::lost::{Line, Severable};

/// The `client_assertion_type` of RFC 7523 §2.2.
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Checks client assertions: signature, `iss` = `sub` = the client, `aud`
/// the token endpoint, not expired, and each `jti` used once.
pub(crate) struct AssertionVerifier {
    key: DecodingKey,
    algorithm: Algorithm,
    seen: Mutex<HashSet<String>>,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
}

impl AssertionVerifier {
    pub(crate) fn new(key: &crate::AssertionKey) -> std::io::Result<Self> {
        let invalid = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, m.to_owned());
        let algorithm: Algorithm = key
            .algorithm
            .parse()
            .map_err(|_| invalid("unknown client assertion algorithm"))?;
        let pem = key.public_key_pem.as_bytes();
        let decoding = match algorithm {
            Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(pem),
            Algorithm::EdDSA => DecodingKey::from_ed_pem(pem),
            _ => DecodingKey::from_rsa_pem(pem),
        }
        .map_err(|_| invalid("the client assertion key is not a PEM public key"))?;
        Ok(Self {
            key: decoding,
            algorithm,
            seen: Mutex::new(HashSet::new()),
        })
    }

    pub(crate) fn verify(
        &self,
        assertion: &str,
        client_id: &str,
        audience: &str,
    ) -> Result<(), OAuthError> {
        let mut validation = Validation::new(self.algorithm);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[client_id]);
        validation.sub = Some(client_id.to_owned());
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(assertion, &self.key, &validation)
            .map_err(|e| {
                tracing::debug!(error = %e, "sandbox: client assertion refused");
                OAuthError::invalid_client("the client assertion is not valid")
            })?
            .claims;
        let fresh = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(claims.jti);
        if !fresh {
            return Err(OAuthError::invalid_client(
                "the client assertion was used before",
            ));
        }
        Ok(())
    }
}

/// PEM material for [`crate::Sandbox::start_tls`].
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// The server's certificate chain.
    pub cert_chain_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// Roots that sign client certificates: asked for, not required (a
    /// client may authenticate otherwise).
    pub client_ca_pem: Option<String>,
}

/// The SHA-256 of the client certificate a connection presented, if any,
/// and the connection's kill switch (for the lost-answer fault's reset).
#[derive(Clone, Debug, Default)]
pub(crate) struct PeerCert(pub(crate) Option<[u8; 32]>, pub(crate) Line);

pub(crate) fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Accepts TCP connections and completes the TLS handshake before handing
/// them to axum. A failed or stalled handshake drops only that connection.
pub(crate) struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, settings: &TlsSettings) -> std::io::Result<Self> {
        let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(settings.cert_chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("server certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(settings.key_pem.as_bytes())
            .map_err(|e| invalid(format!("server key: {e}")))?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(e.to_string()))?;
        let builder = match &settings.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    let cert = cert.map_err(|e| invalid(format!("client CA: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| invalid(format!("client CA: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| invalid(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Severable<tokio_rustls::server::TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (stream, addr) = match self.tcp.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::debug!(%err, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            if let Err(err) = stream.set_nodelay(true) {
                tracing::trace!(%err, "sandbox: could not set TCP_NODELAY");
            }
            let handshake = self.acceptor.accept(stream);
            match tokio::time::timeout(Duration::from_secs(5), handshake).await {
                Ok(Ok(tls)) => return (Severable::new(tls), addr),
                Ok(Err(err)) => tracing::debug!(%err, "sandbox: TLS handshake failed"),
                Err(_) => tracing::debug!("sandbox: TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for PeerCert {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        let (_, session) = stream.io().get_ref().get_ref();
        PeerCert(
            session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|cert| fingerprint(cert.as_ref())),
            stream.io().line(),
        )
    }
}

/// Plain HTTP, with TCP_NODELAY on every accepted socket: token responses
/// are small, and without it a client that writes headers and body
/// separately meets Nagle and delayed ACKs (~40 ms a request).
pub(crate) struct PlainListener(pub(crate) TcpListener);

impl axum::serve::Listener for PlainListener {
    type Io = Severable<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::trace!(%err, "sandbox: could not set TCP_NODELAY");
                    }
                    return (Severable::new(stream), addr);
                }
                Err(err) => {
                    tracing::debug!(%err, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, PlainListener>> for PeerCert {
    fn connect_info(stream: IncomingStream<'_, PlainListener>) -> Self {
        PeerCert(None, stream.io().line())
    }
}
