//! Helpers of `jwt.rs`: keys made and tokens signed with the `openssl` CLI (never with
//! the broker's own code), so the broker is checked against an independent signer.
//!
//! A token is `BASE64URL(header).BASE64URL(claims).BASE64URL(signature)`: the signing
//! input is written to a file, `openssl dgst -sha256` signs it (HMAC for HS256, the
//! private key for RS256 and ES256), and an ES256 signature is turned from the DER that
//! openssl writes into the 64 bytes `r || s` that JWS wants (RFC 7518 §3.4).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use mote_tests::TempDir;
use serde_json::Value;

/// `openssl` (the tool, run in a directory) is the TLS tests' one.
pub(crate) use crate::common::certs::{openssl, OPENSSL};

/// Seconds since the epoch, now.
pub(crate) fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How a token is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    /// Its name, in a JWS header and in `auth.jwt_algorithm`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// A signing key and the file the broker checks with (its public key, or for HS256
/// the secret itself).
#[derive(Debug)]
pub(crate) struct Key {
    pub(crate) alg: Alg,
    /// The private key (PEM), or the HS256 secret's file.
    private: PathBuf,
    /// What `auth.jwt_key_file` names: the public key (PEM), or the secret's file.
    pub(crate) public: PathBuf,
    dir: PathBuf,
}

/// Unique names for the files of several keys in one directory.
static SEQ: AtomicU32 = AtomicU32::new(0);

impl Key {
    /// A new key of `alg` with its files in `dir`: RSA 2048 bits, EC P-256, or a secret
    /// of 64 hex characters (written with a final line break, as `echo` does).
    pub(crate) fn new(dir: &TempDir, alg: Alg) -> Key {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let private = dir.join(&format!("key-{n}.pem"));
        let public = dir.join(&format!("key-{n}.pub.pem"));
        let (p, q) = (
            private.to_str().unwrap().to_owned(),
            public.to_str().unwrap().to_owned(),
        );
        match alg {
            Alg::Hs256 => {
                openssl(&dir.path, &["rand", "-hex", "-out", &p, "32"]);
                std::fs::copy(&private, &public).unwrap();
            }
            Alg::Rs256 | Alg::Es256 => {
                let opt = if alg == Alg::Rs256 {
                    ["RSA", "rsa_keygen_bits:2048"]
                } else {
                    ["EC", "ec_paramgen_curve:P-256"]
                };
                openssl(
                    &dir.path,
                    &[
                        "genpkey",
                        "-algorithm",
                        opt[0],
                        "-pkeyopt",
                        opt[1],
                        "-out",
                        &p,
                    ],
                );
                openssl(&dir.path, &["pkey", "-in", &p, "-pubout", "-out", &q]);
            }
        }
        Key {
            alg,
            private,
            public,
            dir: dir.path.clone(),
        }
    }

    /// A token of this key's algorithm over `claims`.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_as(self.alg.name(), claims)
    }

    /// A token whose header names `alg` (whatever this key is), signed with this key.
    pub(crate) fn sign_as(&self, alg: &str, claims: &Value) -> String {
        let input = signing_input(alg, claims);
        let sig = match self.alg {
            Alg::Hs256 => {
                // The secret is the file less its final line break, as the broker reads it.
                let secret = std::fs::read(&self.private).unwrap();
                let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
                hmac(&self.dir, &secret, &input)
            }
            Alg::Rs256 | Alg::Es256 => {
                let key = self.private.to_str().unwrap().to_owned();
                let sig = dgst(&self.dir, &["-sign", &key], &input);
                if self.alg == Alg::Es256 {
                    der_to_jose(&sig)
                } else {
                    sig
                }
            }
        };
        format!("{input}.{}", b64url(&sig))
    }
}

/// An HS256 token over `claims` with `secret` (any bytes) as the HMAC key.
pub(crate) fn sign_hs256(dir: &Path, secret: &[u8], claims: &Value) -> String {
    let input = signing_input("HS256", claims);
    format!("{input}.{}", b64url(&hmac(dir, secret, &input)))
}

/// `BASE64URL(header).BASE64URL(claims)` for a header naming `alg`.
fn signing_input(alg: &str, claims: &Value) -> String {
    let header = serde_json::json!({"alg": alg, "typ": "JWT"});
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// HMAC-SHA256 of `input` with `secret`, by openssl (the key given in hex).
fn hmac(dir: &Path, secret: &[u8], input: &str) -> Vec<u8> {
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let macopt = format!("hexkey:{hex}");
    dgst(dir, &["-mac", "HMAC", "-macopt", &macopt], input)
}

/// `openssl dgst -sha256 ARGS -binary` over `input` (through files in `dir`).
fn dgst(dir: &Path, args: &[&str], input: &str) -> Vec<u8> {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let input_file = dir.join(format!("input-{n}"));
    let sig_file = dir.join(format!("sig-{n}"));
    std::fs::write(&input_file, input).unwrap();
    let (i, o) = (input_file.to_str().unwrap(), sig_file.to_str().unwrap());
    let mut all = vec!["dgst", "-sha256"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-binary", "-out", o, i]);
    openssl(dir, &all);
    let sig = std::fs::read(&sig_file).unwrap();
    let _ = std::fs::remove_file(&input_file);
    let _ = std::fs::remove_file(&sig_file);
    sig
}

/// An ECDSA signature as DER (`SEQUENCE { INTEGER r, INTEGER s }`) to JWS's fixed 64
/// bytes, each integer as 32 big-endian bytes.
fn der_to_jose(der: &[u8]) -> Vec<u8> {
    assert_eq!(der[0], 0x30, "not a DER SEQUENCE: {der:02x?}");
    // P-256 signatures are under 128 bytes: short lengths only.
    let mut at = 2;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[at], 0x02, "not a DER INTEGER: {der:02x?}");
        let len = usize::from(der[at + 1]);
        let int = &der[at + 2..at + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat(0).take(32 - int.len()));
        out.extend_from_slice(int);
        at += 2 + len;
    }
    out
}

/// The parts of `token` that must never appear in a log: its claims and its signature
/// (the header is the same for every token of an algorithm).
pub(crate) fn secret_parts(token: &str) -> Vec<&str> {
    token.split('.').skip(1).filter(|p| p.len() >= 8).collect()
}
