//! TLS for the rendezvous, with rustls and its ring provider (already built for WebRTC's
//! DTLS, so no second crypto library): the daemon's [`Endpoint`] (a URL and the roots it
//! trusts) and the server's [`ServerTls`] (certificate files, reloaded on request).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio_tungstenite::Connector;
use tokio_tungstenite::tungstenite;
use zeroize::Zeroizing;

/// Messages leave the cause to `source()`: the binaries print the whole chain on one line.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a PEM {what} file", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{} holds no PEM {what}", path.display())]
    Empty { what: &'static str, path: PathBuf },
    #[error("the certificates in {} are not usable", path.display())]
    Rejected {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "a rendezvous CA only applies to a wss:// rendezvous, and {url} is not one: use wss://"
    )]
    CaWithoutTls { url: String },
    #[error("no system root certificates were found: pass --rendezvous-ca FILE")]
    NoSystemRoots,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn is_tls_url(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss://"))
}

fn read(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    const WHAT: &str = "certificate";
    let pem = read(WHAT, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: WHAT,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what: WHAT,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    const WHAT: &str = "private key";
    let pem = read(WHAT, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|source| match source {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: WHAT,
            path: path.to_owned(),
        },
        source => TlsError::Pem {
            what: WHAT,
            path: path.to_owned(),
            source,
        },
    })
}

fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn system_roots() -> Result<RootCertStore, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(found.certs);
    if roots.is_empty() {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(roots)
}

/// Where a daemon finds the rendezvous: its URL and, for `wss://`, the roots it trusts
/// (the system's, or only the private CA it was given).
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    tls: Option<Arc<ClientConfig>>,
}

impl Endpoint {
    /// Builds the trust roots once, so a missing or broken CA file fails at start rather
    /// than at the first transfer.
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Endpoint, TlsError> {
        let tls = match (is_tls_url(url), ca) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(TlsError::CaWithoutTls {
                    url: url.to_owned(),
                });
            }
            (true, None) => Some(client_config(system_roots()?)),
            (true, Some(path)) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|source| TlsError::Rejected {
                        path: path.to_owned(),
                        source,
                    })?;
                }
                Some(client_config(roots))
            }
        };
        Ok(Endpoint {
            url: url.to_owned(),
            tls,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// How tokio-tungstenite should wrap the TCP stream. Never `None`: its own default
    /// would pick a process-wide crypto provider, which this crate does not install.
    pub(crate) fn connector(&self) -> Result<Connector, TlsError> {
        match &self.tls {
            Some(config) => Ok(Connector::Rustls(config.clone())),
            None if is_tls_url(&self.url) => Ok(Connector::Rustls(client_config(system_roots()?))),
            None => Ok(Connector::Plain),
        }
    }
}

/// A plain URL: `ws://` as is, `wss://` trusting the system's roots (loaded at connect).
impl From<&str> for Endpoint {
    fn from(url: &str) -> Endpoint {
        Endpoint {
            url: url.to_owned(),
            tls: None,
        }
    }
}

impl From<&String> for Endpoint {
    fn from(url: &String) -> Endpoint {
        Endpoint::from(url.as_str())
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(endpoint: &Endpoint) -> Endpoint {
        endpoint.clone()
    }
}

/// Why the server's certificate did not verify, as far as the user can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertificateProblem {
    /// Not issued for the host in the address: the address is wrong, not the trust.
    WrongName,
    /// Any other verification failure: an unknown issuer, expired, revoked…
    Untrusted,
}

/// Whether a failed connection was refused because the server's certificate did not
/// verify (rather than the server being unreachable), and why: by type, at either layer
/// the rustls error may arrive through.
pub(crate) fn certificate_problem(error: &tungstenite::Error) -> Option<CertificateProblem> {
    let rustls_error = match error {
        tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(inner)) => Some(inner),
        tungstenite::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        _ => None,
    };
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        )) => Some(CertificateProblem::WrongName),
        Some(rustls::Error::InvalidCertificate(_)) => Some(CertificateProblem::Untrusted),
        _ => None,
    }
}

/// The server's certificate and key, read from files. [`ServerTls::reload`] swaps them
/// (SIGHUP in `p2pd rendezvous`); connections already open keep the old ones.
#[derive(Debug)]
pub struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        Ok(ServerTls {
            current: RwLock::new(server_config(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// Reads both files again; on any error the previous certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = server_config(&self.cert, &self.key)?;
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        Ok(())
    }

    pub(crate) fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring's default provider supports the default protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Rejected {
            path: cert.to_owned(),
            source,
        })?;
    Ok(Arc::new(config))
}
