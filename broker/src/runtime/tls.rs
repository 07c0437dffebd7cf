//! TLS listeners (`[[listener]]`, `docs/tls.md`): the rustls server configuration built
//! from PEM files, swapped on reload, and the TLS handshake of one connection.
//!
//! Invariants:
//! - A configuration in force was built from files that all parsed and whose key matches
//!   the certificate; a reload that fails leaves the one in force untouched. The CRLs
//!   (`crl_file`) are part of it: they are checked and swapped with the certificates.
//! - With CRLs, a client certificate is refused when it is revoked, when no CRL of its
//!   issuer is loaded, or when that CRL is past its `nextUpdate` (fail closed; an expired
//!   CRL is logged as a warning when it is loaded). Only the client's own certificate is
//!   checked, not the intermediates above it (as mosquitto does).
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
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
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
    files.extend(config.crl_file.as_deref());
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
    // CRLs past their `nextUpdate`: warned about once the configuration is built (a file
    // that is refused logs its one refusal line, nothing more).
    let mut expired = Vec::new();
    let builder = match &config.client_ca_file {
        Some(ca_file) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca_file)? {
                roots
                    .add(cert)
                    .with_context(|| format!("bad CA certificate in {}", ca_file.display()))?;
            }
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl_file) = &config.crl_file {
                let crls = read_crls(crl_file)?;
                expired = expired_crls(&crls, SystemTime::now());
                // Unknown revocation status (no CRL from the issuer) stays an error, as it
                // is by default.
                verifier = verifier
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .enforce_revocation_expiration();
            }
            let verifier = if config.require_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(verifier.build().with_context(|| {
                match &config.crl_file {
                    Some(crl) => format!(
                        "client CA {} with the CRLs of {}",
                        ca_file.display(),
                        crl.display()
                    ),
                    None => format!("client CA {}", ca_file.display()),
                }
            })?)
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
    for (index, ago) in expired {
        tracing::warn!(
            address = %config.address,
            crl = %config.crl_file.as_deref().unwrap_or(Path::new("")).display(),
            index,
            "CRL expired {ago} s ago (nextUpdate passed): client certificates of its \
             issuer are refused until a fresh CRL is loaded"
        );
    }
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

/// Every CRL of a PEM file; at least one. Their DER is parsed when the verifier is built.
fn read_crls(file: &Path) -> anyhow::Result<Vec<CertificateRevocationListDer<'static>>> {
    let pem = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad PEM in {}", file.display()))?;
    if crls.is_empty() {
        bail!("no CRL (-----BEGIN X509 CRL-----) in {}", file.display());
    }
    Ok(crls)
}

/// The CRLs whose `nextUpdate` is before `now`: their index in the file and how many
/// seconds ago they expired. Until a fresh one is loaded, the certificates their CA
/// issued are refused.
fn expired_crls(crls: &[CertificateRevocationListDer<'_>], now: SystemTime) -> Vec<(usize, u64)> {
    crls.iter()
        .enumerate()
        .filter_map(|(i, crl)| {
            let next = der::crl_next_update(crl.as_ref())?;
            let ago = now.duration_since(next).ok()?;
            Some((i, ago.as_secs()))
        })
        .collect()
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

/// Just enough DER to find an X.509 certificate's subject CN (RFC 5280 §4.1) and a CRL's
/// `nextUpdate` (§5.1), without an X.509 dependency. Every read is bounds-checked;
/// anything unexpected is `None`.
mod der {
    use std::time::{Duration, SystemTime};

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

    /// The CRL's `nextUpdate` (RFC 5280 §5.1.2.5), absent or unreadable: `None`.
    pub(super) fn crl_next_update(crl: &[u8]) -> Option<SystemTime> {
        const SEQUENCE: u8 = 0x30;
        const INTEGER: u8 = 0x02;
        let (crl, _) = expect(crl, SEQUENCE)?;
        let (tbs, _) = expect(crl, SEQUENCE)?;
        let mut rest = tbs;
        // version, optional.
        if rest.first() == Some(&INTEGER) {
            rest = tlv(rest)?.2;
        }
        // signature, issuer, thisUpdate, then nextUpdate if it is a time.
        for _ in 0..3 {
            rest = tlv(rest)?.2;
        }
        let (tag, time, _) = tlv(rest)?;
        parse_time(tag, time)
    }

    /// A UTCTime (0x17, `YYMMDDHHMMSSZ`) or GeneralizedTime (0x18, `YYYYMMDDHHMMSSZ`),
    /// the forms RFC 5280 §4.1.2.5 allows.
    fn parse_time(tag: u8, text: &[u8]) -> Option<SystemTime> {
        let digits = text.strip_suffix(b"Z")?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let num = |d: &[u8]| d.iter().fold(0i64, |n, &b| n * 10 + i64::from(b - b'0'));
        let (year, rest) = match (tag, digits.len()) {
            (0x17, 12) => {
                let yy = num(&digits[..2]);
                (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
            }
            (0x18, 14) => (num(&digits[..4]), &digits[4..]),
            _ => return None,
        };
        let field = |i: usize| num(&rest[i * 2..i * 2 + 2]);
        let (month, day) = (field(0), field(1));
        let (hour, minute, second) = (field(2), field(3), field(4));
        if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
            return None;
        }
        let secs = days_from_civil(year, month, day) * 86_400
            + hour * 3_600
            + minute * 60
            + second.min(60);
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
    }

    /// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
    fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
        let y = if month <= 2 { year - 1 } else { year };
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let mp = (month + 9) % 12;
        let doy = (153 * mp + 2) / 5 + day - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
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
        fn utc_and_generalized_times() {
            let at = |secs| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs));
            assert_eq!(days_from_civil(1970, 1, 1), 0);
            assert_eq!(days_from_civil(2000, 3, 1), 11_017);
            assert_eq!(parse_time(0x17, b"200102000000Z"), at(1_577_923_200));
            assert_eq!(parse_time(0x17, b"700101000000Z"), at(0));
            assert_eq!(parse_time(0x18, b"21261109093359Z"), at(4_949_890_439));
            for (tag, bad) in [
                (0x17, &b"200102000000"[..]),
                (0x17, b"2001020000Z"),
                (0x17, b"201302000000Z"),
                (0x17, b"20010200000aZ"),
                (0x18, b"200102000000Z"),
                (0x17, b"21261109093359Z"),
                (0x0c, b"200102000000Z"),
            ] {
                assert_eq!(parse_time(tag, bad), None, "{bad:?}");
            }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A self-signed P-256 CA (CN mote-unit-ca, valid until 2126), used as the server's
    /// certificate and as the client CA.
    const CA_PEM: &str = "-----BEGIN CERTIFICATE-----
MIIBlTCCATugAwIBAgIUK5pg40HeTwcfDq5/tvfBkltbJX0wCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMbW90ZS11bml0LWNhMCAXDTI2MTIwMzA5MzM1OVoYDzIxMjYx
MTA5MDkzMzU5WjAXMRUwEwYDVQQDDAxtb3RlLXVuaXQtY2EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAASlJaWd19cdadh6LGZCsbgquqZY/cLhHN8M6+75zngPasu5
LgbHFiuwN/0AAOYUYR43KZRAGL11UPdLpZecOeEFo2MwYTAdBgNVHQ4EFgQUP70Y
upaoVZ1Yu8K+Tp8n/GTYNeYwHwYDVR0jBBgwFoAUP70YupaoVZ1Yu8K+Tp8n/GTY
NeYwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAYYwCgYIKoZIzj0EAwID
SAAwRQIgNrh8JdO7xuGRweC8VRrVsayZsIEU1ihQ3MHJ5hUyt7cCIQCMeHmAeekU
iTzGC2X6QEQNcKeC7q8LT8rBiRBiHdlztA==
-----END CERTIFICATE-----
";
    /// Its key (a throwaway made for these tests).
    const CA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgBaXeb7mW9Kva9lju
k34ZG0Lvq4LC08paRvIF/4dhmKmhRANCAASlJaWd19cdadh6LGZCsbgquqZY/cLh
HN8M6+75zngPasu5LgbHFiuwN/0AAOYUYR43KZRAGL11UPdLpZecOeEF
-----END PRIVATE KEY-----
";
    /// Its empty CRL, nextUpdate 2126-11-09 09:33:59 UTC (GeneralizedTime).
    const CRL_FRESH: &str = "-----BEGIN X509 CRL-----
MIGwMFgCAQEwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMbW90ZS11bml0LWNhFw0y
NjEyMDMwOTMzNTlaGA8yMTI2MTEwOTA5MzM1OVqgDjAMMAoGA1UdFAQDAgEBMAoG
CCqGSM49BAMCA0gAMEUCIQDFGTHyIjORzffSQ92GLLZpmKNJq9q9S7Ri4mlXSJnJ
OQIgfJ1RNbQJcd25e1kx/PKQ/0WksGd+1Yq4Hz+mZCma4n8=
-----END X509 CRL-----
";
    /// Its empty CRL, nextUpdate 2020-01-02 00:00:00 UTC (UTCTime): expired.
    const CRL_EXPIRED: &str = "-----BEGIN X509 CRL-----
MIGtMFYCAQEwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMbW90ZS11bml0LWNhFw0y
MDAxMDEwMDAwMDBaFw0yMDAxMDIwMDAwMDBaoA4wDDAKBgNVHRQEAwIBAjAKBggq
hkjOPQQDAgNHADBEAiA1ZaL5iVYhfze/zDK5A6N2qK00uxfccGrWMSsY99DdWwIg
APVgfFA7Xo+v09rX3RITZEMKcKloaqlHMKGr18vmyPA=
-----END X509 CRL-----
";

    /// A directory of the test's own with `ca.pem`, `ca.key` and `ca.crl` (`crl`),
    /// removed on drop.
    struct Files(PathBuf);

    impl Files {
        fn new(name: &str, crl: &str) -> Files {
            let dir = std::env::temp_dir().join(format!("mote-tls-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("ca.pem"), CA_PEM).unwrap();
            std::fs::write(dir.join("ca.key"), CA_KEY).unwrap();
            std::fs::write(dir.join("ca.crl"), crl).unwrap();
            Files(dir)
        }

        /// A listener serving the CA's certificate, verifying clients against it and
        /// its CRL file.
        fn listener(&self) -> ListenerConfig {
            ListenerConfig {
                transport: "tls".to_owned(),
                address: "127.0.0.1:0".parse().unwrap(),
                cert_file: self.0.join("ca.pem"),
                key_file: self.0.join("ca.key"),
                client_ca_file: Some(self.0.join("ca.pem")),
                crl_file: Some(self.0.join("ca.crl")),
                require_certificate: true,
                min_tls_version: "1.2".to_owned(),
                use_identity_as_username: false,
            }
        }

        fn write_crl(&self, content: &[u8]) {
            std::fs::write(self.0.join("ca.crl"), content).unwrap();
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The configuration in force.
    fn in_force(certs: &Certs) -> Arc<ServerConfig> {
        certs.current.lock().unwrap().clone()
    }

    /// Base64 of `bytes` between `X509 CRL` PEM lines.
    fn crl_pem(bytes: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bytes);
        format!("-----BEGIN X509 CRL-----\n{b64}\n-----END X509 CRL-----\n")
    }

    #[test]
    fn good_crl_file_loads() {
        let files = Files::new("crl-good", CRL_FRESH);
        Certs::load(&files.listener()).unwrap();
        // Two CRLs in one file.
        files.write_crl(format!("{CRL_FRESH}{CRL_EXPIRED}").as_bytes());
        Certs::load(&files.listener()).unwrap();
    }

    #[test]
    fn bad_crl_file_at_start_is_an_error_naming_it() {
        let files = Files::new("crl-bad-start", CRL_FRESH);
        let config = files.listener();
        let name = config.crl_file.clone().unwrap().display().to_string();
        for (content, why) in [
            ("".to_owned(), "no CRL"),
            ("not a CRL at all\n".to_owned(), "no CRL"),
            (CA_PEM.to_owned(), "no CRL"),
            (
                "-----BEGIN X509 CRL-----\nnot base64 at all!\n".to_owned(),
                "bad PEM",
            ),
            (crl_pem(&[0x30, 0x03, 0x02, 0x01, 0x01]), "with the CRLs of"),
            (crl_pem(&CRL_FRESH.as_bytes()[..40]), "with the CRLs of"),
        ] {
            files.write_crl(content.as_bytes());
            let e = format!("{:#}", Certs::load(&config).unwrap_err());
            assert!(e.contains(why) && e.contains(&name), "{content:?}: {e}");
        }
        std::fs::remove_file(&name).unwrap();
        let e = format!("{:#}", Certs::load(&config).unwrap_err());
        assert!(e.contains("cannot read") && e.contains(&name), "{e}");
    }

    #[test]
    fn bad_crl_file_on_reload_keeps_the_verifier_in_force() {
        let files = Files::new("crl-bad-reload", CRL_FRESH);
        let certs = Certs::load(&files.listener()).unwrap();
        let first = in_force(&certs);
        files.write_crl(b"-----BEGIN X509 CRL-----\nMAMCAQE=\n-----END X509 CRL-----\n");
        let e = format!("{:#}", certs.reload().unwrap_err());
        assert!(e.contains("ca.crl"), "{e}");
        assert!(
            Arc::ptr_eq(&first, &in_force(&certs)),
            "replaced after a bad CRL"
        );
        files.write_crl(b"garbage");
        certs.reload().unwrap_err();
        assert!(
            Arc::ptr_eq(&first, &in_force(&certs)),
            "replaced after a bad CRL"
        );
        // A good file again: the next reload takes it.
        files.write_crl(CRL_EXPIRED.as_bytes());
        certs.reload().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &in_force(&certs)),
            "good CRL not taken"
        );
    }

    #[test]
    fn crl_file_is_watched_with_the_certificates() {
        let files = Files::new("crl-watch", CRL_FRESH);
        let certs = Certs::load(&files.listener()).unwrap();
        let mut seen = Vec::new();
        assert!(!certs.settled_change(&mut seen));
        assert!(!certs.settled_change(&mut seen), "nothing changed");
        files.write_crl(format!("{CRL_FRESH}{CRL_EXPIRED}").as_bytes());
        assert!(!certs.settled_change(&mut seen), "not settled yet");
        assert!(certs.settled_change(&mut seen), "CRL change not seen");
    }

    #[test]
    fn expired_crls_are_found_by_index() {
        let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(
            format!("{CRL_FRESH}{CRL_EXPIRED}").as_bytes(),
        )
        .collect::<Result<_, _>>()
        .unwrap();
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        assert_eq!(expired_crls(&crls, at(1_577_923_200 + 60)), vec![(1, 60)]);
        assert_eq!(expired_crls(&crls, at(1_577_923_200 - 1)), vec![]);
        assert_eq!(
            expired_crls(&crls, at(4_949_890_439 + 1)),
            vec![(0, 1), (1, 4_949_890_439 + 1 - 1_577_923_200)]
        );
    }

    #[test]
    fn crl_next_update_read_from_both_time_forms() {
        let at = |secs| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs));
        let body = |pem: &str| {
            CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec()
        };
        assert_eq!(der::crl_next_update(&body(CRL_FRESH)), at(4_949_890_439));
        assert_eq!(der::crl_next_update(&body(CRL_EXPIRED)), at(1_577_923_200));
        let crl = body(CRL_FRESH);
        for cut in 0..crl.len() {
            // Truncations are None or still find the time (the signature is not needed).
            let t = der::crl_next_update(&crl[..cut]);
            assert!(t.is_none() || t == at(4_949_890_439), "cut at {cut}");
        }
    }
}
