//! TLS for the generator's connections (`--tls`): the rustls client configuration built
//! from the command line, and the byte stream a [`crate::mqtt::Conn`] reads and writes.
//!
//! Invariants:
//! - The plain path is what it was before TLS: [`Stream::Tcp`] holds the socket itself
//!   and costs one `match` per read or write; only the TLS session is boxed.
//! - Every handshake is a full one unless `--tls-resume` is given: a benchmark of the
//!   handshake rate must not measure resumed sessions by accident.
//! - The server's certificate is always verified against `--cafile` and the handshake
//!   signature on every handshake. With `--tls-verify cached` the certificate chain is
//!   verified once per distinct chain and name, and a later handshake that presents the
//!   same bytes skips the chain check (it still checks the handshake signature): less
//!   client CPU per handshake, so that the broker, not the generator, is what a
//!   handshake-rate run measures. There is no mode that trusts an unverified server.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The TLS options of the command line.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TlsArgs {
    /// Speak MQTT over TLS (rustls on ring); needs --cafile.
    #[arg(long, requires = "cafile")]
    pub(crate) tls: bool,
    /// CA certificates (PEM) the broker's certificate is verified against.
    #[arg(long, requires = "tls")]
    pub(crate) cafile: Option<PathBuf>,
    /// Client certificate chain (PEM) for mutual TLS; needs --key.
    #[arg(long, requires_all = ["tls", "key"])]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of --cert.
    #[arg(long, requires = "cert")]
    pub(crate) key: Option<PathBuf>,
    /// Name the broker's certificate must carry, a DNS name or an IP address (an IP
    /// address sends no SNI) [default: the IP address of --broker].
    #[arg(long, requires = "tls")]
    pub(crate) server_name: Option<String>,
    /// TLS versions offered.
    #[arg(long, value_enum, default_value_t = TlsVersion::Any, requires = "tls")]
    pub(crate) tls_version: TlsVersion,
    /// Keep TLS sessions and resume them on later connections (default: every handshake
    /// is a full one).
    #[arg(long, requires = "tls")]
    pub(crate) tls_resume: bool,
    /// How the broker's certificate chain is verified: on every handshake, or once per
    /// distinct chain (the handshake signature is verified every time either way).
    #[arg(long, value_enum, default_value_t = TlsVerify::Full, requires = "tls")]
    pub(crate) tls_verify: TlsVerify,
}

/// How often the broker's certificate chain is verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TlsVerify {
    /// Chain and handshake signature on every handshake, as any client does.
    Full,
    /// The chain once per distinct chain and server name; the handshake signature on
    /// every handshake.
    Cached,
}

/// Which TLS versions the client offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TlsVersion {
    /// TLS 1.2 only.
    #[value(name = "1.2")]
    V12,
    /// TLS 1.3 only.
    #[value(name = "1.3")]
    V13,
    /// TLS 1.3 and 1.2; the server chooses.
    Any,
}

/// A TLS client: the configuration and the name the server must prove. Cheap to clone.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    /// Builds the client of `args`, or `None` without `--tls`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a CA certificate rustls refuses, a bad
    /// server name, a key that does not match the client certificate.
    pub(crate) fn from_args(args: &TlsArgs, broker: SocketAddr) -> anyhow::Result<Option<Self>> {
        if !args.tls {
            return Ok(None);
        }
        let Some(cafile) = &args.cafile else {
            bail!("--tls needs --cafile");
        };
        let versions: &[&SupportedProtocolVersion] = match args.tls_version {
            TlsVersion::V12 => &[&rustls::version::TLS12],
            TlsVersion::V13 => &[&rustls::version::TLS13],
            TlsVersion::Any => rustls::ALL_VERSIONS,
        };
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cafile)
            .with_context(|| format!("cannot read {}", cafile.display()))?
        {
            let cert = cert.with_context(|| format!("cannot parse {}", cafile.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("CA certificate refused: {}", cafile.display()))?;
        }
        if roots.is_empty() {
            bail!("no certificate in {}", cafile.display());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .context("TLS versions")?;
        let builder = match args.tls_verify {
            TlsVerify::Full => builder.with_root_certificates(roots),
            TlsVerify::Cached => {
                let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .context("certificate verifier")?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(ChainCache {
                        webpki,
                        verified: Mutex::new(Vec::new()),
                    }))
            }
        };
        let mut config = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => {
                let chain = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("cannot read {}", cert.display()))?
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("cannot parse {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("cannot read a private key from {}", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .context("client certificate and key")?
            }
            _ => builder.with_no_client_auth(),
        };
        if !args.tls_resume {
            config.resumption = Resumption::disabled();
        }
        let name = args
            .server_name
            .clone()
            .unwrap_or_else(|| broker.ip().to_string());
        let server_name =
            ServerName::try_from(name.clone()).with_context(|| format!("server name {name:?}"))?;
        Ok(Some(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        }))
    }

    /// Runs the TLS handshake over a connected socket.
    ///
    /// # Errors
    /// The handshake failed (certificate refused, no common version, socket closed).
    pub(crate) async fn handshake(&self, tcp: TcpStream) -> anyhow::Result<Stream> {
        let tls = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await
            .context("TLS handshake")?;
        Ok(Stream::Tls(Box::new(tls)))
    }
}

/// `--tls-verify cached`: webpki verifies a chain the first time it is seen; the same
/// chain for the same name is then trusted without verifying it again (for the rest of
/// the run: expiry is not checked again). Handshake signatures always go to webpki.
#[derive(Debug)]
struct ChainCache {
    webpki: Arc<WebPkiServerVerifier>,
    // `std::sync::Mutex`: held to look up or add one entry, never across an await; the
    // list holds one entry per broker certificate, so a linear search is enough.
    verified: Mutex<Vec<Vec<u8>>>,
}

impl ChainCache {
    /// The bytes that identify a chain for a name: every certificate, length-prefixed,
    /// then the name.
    fn key(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
    ) -> Vec<u8> {
        let mut key = Vec::new();
        for c in std::iter::once(end_entity).chain(intermediates) {
            key.extend_from_slice(&(c.len() as u64).to_be_bytes());
            key.extend_from_slice(c);
        }
        key.extend_from_slice(server_name.to_str().as_bytes());
        key
    }
}

impl ServerCertVerifier for ChainCache {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = ChainCache::key(end_entity, intermediates, server_name);
        let lock = || self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if lock().contains(&key) {
            return Ok(ServerCertVerified::assertion());
        }
        let ok = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        lock().push(key);
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What a TLS handshake settled on.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TlsInfo {
    /// `TLSv1_3` or `TLSv1_2`.
    pub(crate) version: String,
    /// For example `TLS13_AES_256_GCM_SHA384`.
    pub(crate) cipher_suite: String,
    /// Key exchange group, for example `X25519`.
    pub(crate) kx_group: String,
}

/// The bytes under a connection: a TCP socket, or a TLS session over one.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS over TCP (boxed: rustls's state is large and only this path carries it).
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// What the handshake settled on; `None` for plain TCP.
    pub(crate) fn tls_info(&self) -> Option<TlsInfo> {
        let Stream::Tls(s) = self else {
            return None;
        };
        let c = s.get_ref().1;
        let name = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
        Some(TlsInfo {
            version: name(c.protocol_version().map(|v| format!("{v:?}"))),
            cipher_suite: name(
                c.negotiated_cipher_suite()
                    .map(|s| format!("{:?}", s.suite())),
            ),
            kx_group: name(
                c.negotiated_key_exchange_group()
                    .map(|g| format!("{:?}", g.name())),
            ),
        })
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            // A TCP socket buffers nothing in user space.
            Stream::Tcp(_) => Poll::Ready(Ok(())),
            // rustls may hold encrypted records the socket did not take yet.
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The TLS options alone, as the command line parses them.
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        tls: TlsArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mqtt-load").chain(args.iter().copied()))
    }

    #[test]
    fn tls_options_need_tls_a_cafile_and_both_halves_of_a_client_identity() {
        assert!(parse(&["--tls"]).is_err());
        assert!(parse(&["--cafile", "ca.pem"]).is_err());
        assert!(parse(&["--tls", "--cafile", "ca.pem", "--cert", "c.pem"]).is_err());
        assert!(parse(&["--tls", "--cafile", "ca.pem", "--key", "c.key"]).is_err());
        assert!(parse(&["--tls-version", "1.2"]).is_err());
        let ok = parse(&[
            "--tls",
            "--cafile",
            "ca.pem",
            "--cert",
            "c.pem",
            "--key",
            "c.key",
            "--tls-version",
            "1.3",
            "--tls-verify",
            "cached",
        ])
        .unwrap();
        assert_eq!(ok.tls.tls_version, TlsVersion::V13);
        assert_eq!(ok.tls.tls_verify, TlsVerify::Cached);
        assert!(!parse(&[]).unwrap().tls.tls);
    }

    #[test]
    fn no_tls_client_without_tls() {
        let cli = parse(&[]).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 8883));
        assert!(TlsClient::from_args(&cli.tls, addr).unwrap().is_none());
    }

    #[test]
    fn unreadable_cafile_is_an_error_naming_it() {
        let cli = parse(&["--tls", "--cafile", "/nonexistent/ca.pem"]).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], 8883));
        let err = TlsClient::from_args(&cli.tls, addr).unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/ca.pem"),
            "{err:#}"
        );
    }

    #[test]
    fn chain_cache_key_separates_chains_and_names() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![1u8, 2]);
        let c = CertificateDer::from(vec![3u8]);
        let ip = ServerName::try_from("127.0.0.1").unwrap();
        let dns = ServerName::try_from("localhost").unwrap();
        let k = |ee: &CertificateDer<'_>, im: &[CertificateDer<'_>], n: &ServerName<'_>| {
            ChainCache::key(ee, im, n)
        };
        assert_eq!(k(&a, &[], &ip), k(&a, &[], &ip));
        assert_ne!(k(&a, &[], &ip), k(&a, &[], &dns));
        // The same bytes split differently between certificates are another chain.
        assert_ne!(k(&a, &[], &ip), k(&b, std::slice::from_ref(&c), &ip));
        assert_ne!(k(&a, &[], &ip), k(&a, &[c], &ip));
    }
}
