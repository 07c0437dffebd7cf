//! TLS listeners (`[[listener]]`, `docs/tls.md`): the rustls server configuration built
//! from PEM files, swapped on reload, and the TLS handshake of one connection.
//!
//! Invariants:
//! - A configuration in force was built from files that all parsed and whose key matches
//!   the certificate; a reload that fails leaves the one in force untouched.
//! - A handshake reads the configuration in force when it starts: a reload changes what
//!   new handshakes present, never a connection already established.
//! - The handshake happens in the connection's own task, bounded by the connect timeout,
//!   before any MQTT byte; its failure closes that socket only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::ListenerConfig;

/// The ALPN protocol offered (IANA "mqtt"); clients that offer none are accepted too.
const ALPN_MQTT: &[u8] = b"mqtt";

/// One TLS listener's certificates: the configuration in force and what its files looked
/// like when last read.
#[derive(Debug)]
pub(crate) struct Certs {
    config: ListenerConfig,
    // `std::sync::Mutex`: held only to clone or replace an `Arc`, never across an await.
    current: Mutex<Arc<ServerConfig>>,
    // The files' stamp at the last load attempt (good or bad), so that a watcher does not
    // retry (and log) the same bad files again; held only to read or write the stamp.
    attempted: Mutex<Stamp>,
}

/// Modification time and length of each file of a listener (`None`: unreadable).
type Stamp = Vec<Option<(SystemTime, u64)>>;

impl Certs {
    /// Reads the listener's files and builds its configuration.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, a key that does not match the certificate.
    pub(crate) fn load(config: &ListenerConfig) -> anyhow::Result<Certs> {
        let stamp = stamp(config);
        let server = build(config)?;
        Ok(Certs {
            config: config.clone(),
            current: Mutex::new(Arc::new(server)),
            attempted: Mutex::new(stamp),
        })
    }

    /// The listener's configuration.
    pub(crate) fn config(&self) -> &ListenerConfig {
        &self.config
    }

    /// An acceptor with the configuration in force.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }

    /// Reads the files again; on success new handshakes use them, on failure the
    /// configuration in force stays.
    ///
    /// # Errors
    /// As [`Certs::load`].
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        *self.attempted.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.config);
        let server = Arc::new(build(&self.config)?);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = server;
        Ok(())
    }

    /// True when the files changed since the last load attempt and look the same as at
    /// the previous call (`last`, updated here): files still being written are left
    /// until they settle.
    pub(crate) fn settled_change(&self, last: &mut Stamp) -> bool {
        let now = stamp(&self.config);
        let settled = now == *last;
        *last = now;
        settled && *last != *self.attempted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reloads and logs the outcome in one line.
    pub(crate) fn reload_logged(&self, why: &str) {
        let address = self.config.address;
        match self.reload() {
            Ok(()) => tracing::info!(%address, why, "TLS certificates reloaded"),
            Err(e) => tracing::error!(
                %address,
                why,
                "TLS certificates not reloaded, the ones in force stay: {e:#}"
            ),
        }
    }
}

/// The stamp of a listener's files now.
fn stamp(config: &ListenerConfig) -> Stamp {
    let mut files: Vec<&Path> = vec![&config.cert_file, &config.key_file];
    files.extend(config.client_ca_file.as_deref());
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(f).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Builds the rustls server configuration from the listener's files.
fn build(config: &ListenerConfig) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match config.min_tls_version.as_str() {
        "1.3" => &[&rustls::version::TLS13],
        _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .context("TLS versions")?;
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots
                    .add(cert)
                    .with_context(|| format!("bad CA certificate in {}", ca_file.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if config.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .with_context(|| format!("client CA {}", ca_file.display()))?,
            )
        }
        None => builder.with_no_client_auth(),
    };
    let chain = read_certs(&config.cert_file)?;
    let key = read_key(&config.key_file)?;
    let mut server = builder.with_single_cert(chain, key).with_context(|| {
        format!(
            "certificate {} with key {}",
            config.cert_file.display(),
            config.key_file.display()
        )
    })?;
    server.alpn_protocols = vec![ALPN_MQTT.to_vec()];
    Ok(server)
}

/// Every certificate of a PEM file; at least one.
fn read_certs(file: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", file.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", file.display());
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn read_key(file: &PathBuf) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("no usable private key in {}", file.display()))
}

/// How a handshake ended without a TLS stream.
#[derive(Debug)]
pub(crate) enum Handshake {
    /// The client failed it (bad ClientHello, untrusted certificate, no shared version).
    Failed(std::io::Error),
    /// The connect timeout passed first.
    TimedOut,
    /// Eviction or shutdown came first.
    Abandoned,
}

/// The TLS handshake of an accepted socket, before any MQTT byte.
///
/// # Cancel safety
/// Not cancel-safe (a partial handshake is lost), and not raced by its callers: the
/// deadline, eviction and shutdown are raced inside.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    deadline: tokio::time::Instant,
    evicted: impl std::future::Future<Output = ()>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<TlsStream<TcpStream>, Handshake> {
    tokio::select! {
        r = acceptor.accept(stream) => r.map_err(Handshake::Failed),
        _ = tokio::time::sleep_until(deadline) => Err(Handshake::TimedOut),
        _ = evicted => Err(Handshake::Abandoned),
        _ = shutdown => Err(Handshake::Abandoned),
    }
}

/// The subject common name (CN) of the client's verified certificate, if it sent one.
pub(crate) fn peer_common_name(stream: &TlsStream<TcpStream>) -> Option<String> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    der::subject_common_name(cert.as_ref())
}

/// Where a listener is bound, for its ready line.
pub(crate) fn ready_line(addr: SocketAddr) -> String {
    format!("listening tls={addr}")
}

/// Just enough DER to find an X.509 certificate's subject CN (RFC 5280 §4.1), without
/// an X.509 dependency. Every read is bounds-checked; anything unexpected is `None`.
mod der {
    /// OID 2.5.4.3 (id-at-commonName), DER-encoded with its tag and length.
    const CN_OID: &[u8] = &[0x06, 0x03, 0x55, 0x04, 0x03];

    /// One TLV: its tag, its content and what follows it.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The content of a TLV that must have tag `tag`, and what follows it.
    fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (t, content, rest) = tlv(input)?;
        (t == tag).then_some((content, rest))
    }

    /// The subject's first CN, as UTF-8 (UTF8String, PrintableString or IA5String).
    pub(super) fn subject_common_name(cert: &[u8]) -> Option<String> {
        const SEQUENCE: u8 = 0x30;
        const SET: u8 = 0x31;
        let (cert, _) = expect(cert, SEQUENCE)?;
        let (tbs, _) = expect(cert, SEQUENCE)?;
        let mut rest = tbs;
        // [0] EXPLICIT version, optional.
        if rest.first() == Some(&0xa0) {
            rest = tlv(rest)?.2;
        }
        // serialNumber, signature, issuer, validity, then subject.
        for _ in 0..4 {
            rest = tlv(rest)?.2;
        }
        let (mut rdns, _) = expect(rest, SEQUENCE)?;
        while !rdns.is_empty() {
            let (mut set, after) = expect(rdns, SET)?;
            rdns = after;
            while !set.is_empty() {
                let (attr, after) = expect(set, SEQUENCE)?;
                set = after;
                if let Some(value) = attr.strip_prefix(CN_OID) {
                    let (tag, text, _) = tlv(value)?;
                    return match tag {
                        0x0c | 0x13 | 0x16 => String::from_utf8(text.to_vec()).ok(),
                        _ => None,
                    };
                }
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A DER TLV with a short or long length.
        fn enc(tag: u8, content: &[u8]) -> Vec<u8> {
            let mut v = vec![tag];
            if content.len() < 0x80 {
                v.push(content.len() as u8);
            } else {
                v.push(0x82);
                v.extend_from_slice(&(content.len() as u16).to_be_bytes());
            }
            v.extend_from_slice(content);
            v
        }

        fn name(cn: Option<&[u8]>) -> Vec<u8> {
            let o = [&[0x06, 0x03, 0x55, 0x04, 0x0a][..], &enc(0x0c, b"org")].concat();
            let mut rdns = enc(0x31, &enc(0x30, &o));
            if let Some(cn) = cn {
                let a = [CN_OID, &enc(0x0c, cn)].concat();
                rdns.extend(enc(0x31, &enc(0x30, &a)));
            }
            enc(0x30, &rdns)
        }

        fn cert(subject: &[u8], version: bool) -> Vec<u8> {
            let mut tbs = Vec::new();
            if version {
                tbs.extend(enc(0xa0, &enc(0x02, &[2])));
            }
            tbs.extend(enc(0x02, &[1, 2, 3]));
            tbs.extend(enc(0x30, &[0x06, 0x01, 0x00]));
            tbs.extend(name(Some(b"the-ca")));
            tbs.extend(enc(0x30, &[0u8; 200]));
            tbs.extend_from_slice(subject);
            tbs.extend(enc(0x30, &[0u8; 10]));
            enc(
                0x30,
                &[enc(0x30, &tbs), enc(0x30, &[0x06, 0x01, 0x00])].concat(),
            )
        }

        #[test]
        fn finds_the_subject_cn_not_the_issuer_cn() {
            let c = cert(&name(Some(b"device-7")), true);
            assert_eq!(subject_common_name(&c).as_deref(), Some("device-7"));
            let c = cert(&name(Some(b"device-8")), false);
            assert_eq!(subject_common_name(&c).as_deref(), Some("device-8"));
        }

        #[test]
        fn no_cn_or_bad_input_is_none() {
            assert_eq!(subject_common_name(&cert(&name(None), true)), None);
            let c = cert(&name(Some(b"x")), true);
            for cut in 0..c.len() {
                assert_eq!(subject_common_name(&c[..cut]), None, "cut at {cut}");
            }
            assert_eq!(subject_common_name(&[]), None);
            assert_eq!(
                subject_common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]),
                None
            );
        }
    }
}
