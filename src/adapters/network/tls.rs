//! Inter-node TLS (`raft.tls-enabled yes`), both sides of peer connections.
//!
//! The server sides are Redis' own TLS port (joins, proxied commands, snapshots, and
//! peers without a peer listener) and the raft thread's peer listener, which presents
//! the server's `tls-cert-file`/`tls-key-file` and checks peers' certificates as Redis
//! does per `tls-auth-clients`. This node connects to its peers with the server's
//! settings, read once when the transport starts:
//! - trust: `tls-ca-cert-file` and/or every certificate in `tls-ca-cert-dir`;
//! - our certificate: `tls-client-cert-file`/`tls-client-key-file` when set, else
//!   `tls-cert-file`/`tls-key-file` (as Redis does for its own outgoing connections).
//!
//! A peer's certificate must chain to a trusted CA; its names are not compared with the
//! address dialled, like Redis' replication and the original RedisRaft (node addresses
//! are often bare IPs that certificates do not list). Peers verify our certificate the
//! same way when `tls-auth-clients` is on (Redis' default).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig};

/// The server's TLS file settings (paths; empty when unset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca_cert_file: String,
    pub ca_cert_dir: String,
    pub cert_file: String,
    pub key_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

/// The client configuration every peer connection of this node uses.
pub type PeerTls = Arc<ClientConfig>;
/// The server configuration of this node's peer listener.
pub type PeerTlsServer = Arc<ServerConfig>;

/// Redis' `tls-auth-clients`: whether a connecting peer must present a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Required,
    Optional,
    None,
}

impl ClientAuth {
    /// Redis' spelling (`yes`, `optional`, `no`); anything else is Redis' default, yes.
    pub fn from_setting(value: &str) -> ClientAuth {
        match value.to_ascii_lowercase().as_str() {
            "no" => ClientAuth::None,
            "optional" => ClientAuth::Optional,
            _ => ClientAuth::Required,
        }
    }
}

/// Builds the client configuration, or says which setting is missing or unreadable.
pub fn client_config(files: &TlsFiles) -> Result<PeerTls, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = trusted_roots(files)?;
    let (cert_file, key_file) = if files.client_cert_file.is_empty() {
        (&files.cert_file, &files.key_file)
    } else {
        (&files.client_cert_file, &files.client_key_file)
    };
    if cert_file.is_empty() || key_file.is_empty() {
        return Err("TLS needs tls-cert-file and tls-key-file (or the tls-client-* pair)".into());
    }
    let chain = read_certs(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("cannot read a private key from {key_file}: {e}"))?;
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS trust settings: {e}"))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ChainOnly(verifier)))
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("{cert_file} / {key_file}: {e}"))?;
    Ok(Arc::new(config))
}

/// Builds the peer listener's configuration: the server's own certificate, peers'
/// certificates chained to the trusted CAs as `client_auth` asks.
pub fn server_config(files: &TlsFiles, client_auth: ClientAuth) -> Result<PeerTlsServer, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    if files.cert_file.is_empty() || files.key_file.is_empty() {
        return Err("TLS needs tls-cert-file and tls-key-file".into());
    }
    let chain = read_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| format!("cannot read a private key from {}: {e}", files.key_file))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS protocol versions: {e}"))?;
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Required | ClientAuth::Optional => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                Arc::new(trusted_roots(files)?),
                provider,
            );
            let verifier = if client_auth == ClientAuth::Optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            let verifier = verifier
                .build()
                .map_err(|e| format!("TLS trust settings: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} / {}: {e}", files.cert_file, files.key_file))?;
    Ok(Arc::new(config))
}

/// The CAs of `tls-ca-cert-file` and `tls-ca-cert-dir`; at least one is required.
fn trusted_roots(files: &TlsFiles) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    if !files.ca_cert_file.is_empty() {
        for cert in read_certs(&files.ca_cert_file)? {
            roots
                .add(cert)
                .map_err(|e| format!("tls-ca-cert-file {}: {e}", files.ca_cert_file))?;
        }
    }
    if !files.ca_cert_dir.is_empty() {
        add_dir(&mut roots, &files.ca_cert_dir)?;
    }
    if roots.is_empty() {
        return Err("TLS needs tls-ca-cert-file or tls-ca-cert-dir with a CA certificate".into());
    }
    Ok(roots)
}

/// The name sent in the handshake (SNI) for `addr` (`host:port`).
pub fn server_name(addr: &str) -> ServerName<'static> {
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(host, _)| host)
        .trim_matches(['[', ']']);
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::try_from("redisraft-peer").expect("a valid DNS name"))
}

fn read_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot read certificates from {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("no certificate in {path}"));
    }
    Ok(certs)
}

/// Every certificate file in `dir` (OpenSSL's hashed links included); other files are
/// skipped.
fn add_dir(roots: &mut RootCertStore, dir: &str) -> Result<(), String> {
    let entries =
        std::fs::read_dir(Path::new(dir)).map_err(|e| format!("tls-ca-cert-dir {dir}: {e}"))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(path) = path.to_str() else { continue };
        if let Ok(certs) = read_certs(path) {
            for cert in certs {
                let _ = roots.add(cert);
            }
        }
    }
    Ok(())
}

/// WebPKI verification of the chain, validity dates and signatures, without the name
/// check (see the module comment).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The name is checked last, after the chain: a name error means the chain passed.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Both sides of peer TLS, built from the server's settings.
#[derive(Clone)]
pub struct PeerTlsConfigs {
    pub client: PeerTls,
    pub server: PeerTlsServer,
}

/// Both sides of peer TLS from the server's `tls-*` files.
pub fn peer_configs(files: &TlsFiles, client_auth: ClientAuth) -> Result<PeerTlsConfigs, String> {
    Ok(PeerTlsConfigs {
        client: client_config(files)?,
        server: server_config(files, client_auth)?,
    })
}
