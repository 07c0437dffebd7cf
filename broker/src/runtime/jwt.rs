//! JSON Web Tokens as CONNECT passwords (`docs/security.md`): the key they are checked
//! with, and what a valid token says (its user, its rules, when it expires).
//!
//! A token is accepted when, in this order:
//! - it is at most [`MAX_TOKEN_BYTES`] long and shaped as a JWS compact token;
//! - its header names the configured algorithm (no other, `none` least of all: the
//!   key's algorithm is fixed by the configuration, never by the token) and its
//!   signature verifies with the configured key (`jsonwebtoken` over `ring`);
//! - `iss` and `aud` are what the configuration asks, when it asks;
//! - `exp` is present and later than now, and `nbf`, when present, is not later than
//!   now (both with `auth.jwt_leeway_secs` of slack);
//! - the user claim (`sub` by default) is a non-empty string;
//! - the rules claim (`acl` by default), when present, is an object whose `pub`, `sub`
//!   and `all` keys (each optional) are lists of topic filters.
//!
//! Time is an argument (milliseconds since the epoch), so every rule is tested without
//! a clock. Nothing here logs a token or a secret; a [`Refused`] says why without them.

use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use serde_json::{Map, Value};

use crate::config::{AuthConfig, JwtAlgorithm};
use crate::proto::acl::Grant;

/// Longest token looked at, in bytes: a longer one is refused unread.
pub(crate) const MAX_TOKEN_BYTES: usize = 8192;

/// Shortest HS256 secret, in bytes (RFC 7518 §3.2: at least the hash's size).
pub(crate) const MIN_SECRET_BYTES: usize = 32;

/// Why a token is refused. Never holds the token or any part of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Refused {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("token too long")]
    TooLong,
    /// Not a JWS compact token, or its JSON is not an object.
    #[error("malformed token")]
    Malformed,
    /// The header names another algorithm than the configured one.
    #[error("token signed with another algorithm")]
    Algorithm,
    /// The signature does not verify with the key.
    #[error("bad signature")]
    Signature,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// `aud` does not name the configured audience.
    #[error("wrong audience")]
    Audience,
    /// A claim that must be there is not (`exp`, or `iss`/`aud` when configured).
    #[error("no {0} claim")]
    Missing(&'static str),
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not yet valid")]
    NotYetValid,
    /// The user claim is missing, empty or not a string.
    #[error("no user name in the token")]
    NoUser,
    /// The rules claim is not `{"pub": [...], "sub": [...], "all": [...]}` of filters.
    #[error("bad rules claim: {0}")]
    Rules(String),
}

/// What a valid token says.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    /// The user name (the user claim).
    pub(crate) user: Arc<str>,
    /// Its rules (the rules claim), if it has them.
    pub(crate) grant: Option<Arc<Grant>>,
    /// Until when it is valid: `exp` plus the leeway, in milliseconds since the epoch.
    pub(crate) valid_until_ms: u64,
}

/// Checks tokens against the configured key and claims.
pub(crate) struct Verifier {
    key: DecodingKey,
    validation: Validation,
    user_claim: String,
    rules_claim: String,
    leeway_ms: u64,
}

impl std::fmt::Debug for Verifier {
    // The key stays out of logs and panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("user_claim", &self.user_claim)
            .field("rules_claim", &self.rules_claim)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// The verifier `config` asks for, reading its key file; `None` when JWT logins are
    /// off.
    ///
    /// # Errors
    /// A key file that cannot be read or holds no usable key, naming it.
    pub(crate) fn load(config: &AuthConfig) -> anyhow::Result<Option<Verifier>> {
        let (Some(algorithm), Some(path)) = (config.jwt_algorithm, &config.jwt_key_file) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read the JWT key file {}: {e}", path.display()))?;
        let key = decoding_key(algorithm, &bytes)
            .map_err(|e| anyhow::anyhow!("JWT key file {}: {e}", path.display()))?;
        Ok(Some(Verifier::new(algorithm, key, config)))
    }

    fn new(algorithm: JwtAlgorithm, key: DecodingKey, config: &AuthConfig) -> Verifier {
        let mut validation = Validation::new(match algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        });
        // `exp` and `nbf` are checked here against the time given (see `verify`).
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        match &config.jwt_audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &config.jwt_issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        Verifier {
            key,
            validation,
            user_claim: config.jwt_user_claim.clone(),
            rules_claim: config.jwt_acl_claim.clone(),
            leeway_ms: u64::from(config.jwt_leeway_secs) * 1000,
        }
    }

    /// Checks `token` at `now_ms` (milliseconds since the epoch).
    ///
    /// # Errors
    /// Why it is refused (module documentation).
    pub(crate) fn verify(&self, token: &[u8], now_ms: u64) -> Result<Token, Refused> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Refused::TooLong);
        }
        let text = std::str::from_utf8(token).map_err(|_| Refused::Malformed)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(text, &self.key, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Refused::Signature,
                ErrorKind::InvalidAlgorithm => Refused::Algorithm,
                ErrorKind::InvalidIssuer => Refused::Issuer,
                ErrorKind::InvalidAudience => Refused::Audience,
                ErrorKind::MissingRequiredClaim(c) if c == "aud" => Refused::Missing("aud"),
                ErrorKind::MissingRequiredClaim(c) if c == "iss" => Refused::Missing("iss"),
                _ => Refused::Malformed,
            })?;
        let claims = data.claims;
        let exp = claims
            .get("exp")
            .ok_or(Refused::Missing("exp"))
            .and_then(seconds_ms)?;
        let valid_until_ms = exp.saturating_add(self.leeway_ms);
        if now_ms >= valid_until_ms {
            return Err(Refused::Expired);
        }
        if let Some(nbf) = claims.get("nbf") {
            if seconds_ms(nbf)? > now_ms.saturating_add(self.leeway_ms) {
                return Err(Refused::NotYetValid);
            }
        }
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(u)) if !u.is_empty() => Arc::from(u.as_str()),
            _ => return Err(Refused::NoUser),
        };
        let grant = match claims.get(&self.rules_claim) {
            None => None,
            Some(rules) => Some(Arc::new(grant(rules).map_err(Refused::Rules)?)),
        };
        Ok(Token {
            user,
            grant,
            valid_until_ms,
        })
    }
}

/// True when `password` is shaped as a JWS compact token (three base64url parts, the
/// first a JSON object): it is then checked as a token, never as a password.
pub(crate) fn looks_like_token(password: &[u8]) -> bool {
    let mut parts = password.split(|&b| b == b'.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let base64url = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_' || *b == b'.';
    if !password.iter().all(base64url) {
        return false;
    }
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .is_ok_and(|h| h.trim_ascii_start().first() == Some(&b'{'))
}

/// A NumericDate claim (seconds since the epoch, possibly fractional) in milliseconds.
fn seconds_ms(v: &Value) -> Result<u64, Refused> {
    match v.as_f64() {
        // `as` saturates: a date before the epoch is 0, one past u64 is u64::MAX.
        Some(s) if s.is_finite() => Ok((s * 1000.0) as u64),
        _ => Err(Refused::Malformed),
    }
}

/// The rules of a rules claim: `{"pub": [...], "sub": [...], "all": [...]}`, each list
/// optional, of topic filters (`%u` and `%c` allowed as whole levels).
fn grant(rules: &Value) -> Result<Grant, String> {
    let Value::Object(map) = rules else {
        return Err("not an object".into());
    };
    let mut lists: [Vec<&str>; 3] = Default::default();
    for (key, value) in map {
        let slot = match key.as_str() {
            "sub" => 0,
            "pub" => 1,
            "all" => 2,
            other => return Err(format!("unknown key {other:?} (pub, sub or all)")),
        };
        let Value::Array(items) = value else {
            return Err(format!("{key} is not a list"));
        };
        for item in items {
            let Value::String(f) = item else {
                return Err(format!("{key} holds a non-string"));
            };
            lists[slot].push(f);
        }
    }
    let [read, write, both] = &lists;
    Grant::new(read, write, both)
}

/// The key of `algorithm` in the bytes of a key file.
fn decoding_key(algorithm: JwtAlgorithm, file: &[u8]) -> Result<DecodingKey, String> {
    match algorithm {
        JwtAlgorithm::Hs256 => {
            // `echo secret > file` adds a line break: it is not part of the secret.
            let secret = file
                .strip_suffix(b"\n")
                .map(|s| s.strip_suffix(b"\r").unwrap_or(s))
                .unwrap_or(file);
            if secret.len() < MIN_SECRET_BYTES {
                return Err(format!(
                    "an HS256 secret must be at least {MIN_SECRET_BYTES} bytes (got {})",
                    secret.len()
                ));
            }
            Ok(DecodingKey::from_secret(secret))
        }
        JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
            let spki = SubjectPublicKeyInfoDer::from_pem_slice(file).map_err(|e| {
                format!("expected a PEM public key (-----BEGIN PUBLIC KEY-----): {e}")
            })?;
            public_key(algorithm, &spki)
        }
    }
}

/// `rsaEncryption` (1.2.840.113549.1.1.1).
const OID_RSA: &[u8] = &[0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x01, 0x01];
/// `id-ecPublicKey` (1.2.840.10045.2.1).
const OID_EC: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
/// `prime256v1`, P-256 (1.2.840.10045.3.1.7).
const OID_P256: &[u8] = &[0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// The key in a SubjectPublicKeyInfo (RFC 5280 §4.1), which must be of `algorithm`'s
/// kind: RSA of 2048 bits or more, or EC on P-256.
fn public_key(algorithm: JwtAlgorithm, spki: &[u8]) -> Result<DecodingKey, String> {
    let bad = |why: &str| format!("not a usable public key: {why}");
    let (info, _) = der(spki, 0x30).ok_or_else(|| bad("no SEQUENCE"))?;
    let (alg_id, rest) = der(info, 0x30).ok_or_else(|| bad("no AlgorithmIdentifier"))?;
    let (bits, _) = der(rest, 0x03).ok_or_else(|| bad("no BIT STRING"))?;
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(bad("the key's BIT STRING has unused bits")),
    };
    let (oid, params) = der(alg_id, 0x06).ok_or_else(|| bad("no algorithm OID"))?;
    match algorithm {
        JwtAlgorithm::Rs256 => {
            if oid != OID_RSA {
                return Err("RS256 needs an RSA public key".into());
            }
            let (pkcs1, _) = der(key, 0x30).ok_or_else(|| bad("no RSAPublicKey"))?;
            let (n, _) = der(pkcs1, 0x02).ok_or_else(|| bad("no modulus"))?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err(format!(
                    "an RSA key must have 2048 bits or more (got about {bits})"
                ));
            }
            Ok(DecodingKey::from_rsa_der(key))
        }
        JwtAlgorithm::Es256 => {
            let curve = der(params, 0x06).map(|(c, _)| c);
            if oid != OID_EC || curve != Some(OID_P256) {
                return Err("ES256 needs an EC public key on the P-256 curve".into());
            }
            if key.len() != 65 || key[0] != 4 {
                return Err(bad("not an uncompressed P-256 point"));
            }
            Ok(DecodingKey::from_ec_der(key))
        }
        JwtAlgorithm::Hs256 => Err("HS256 takes a secret, not a public key".into()),
    }
}

/// The content of the DER element of type `tag` at the start of `input`, and what
/// follows it; `None` when there is no such complete element.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let (bytes, after) = rest.split_at(n);
        rest = after;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;
    const NOW_MS: u64 = NOW * 1000;

    fn config(alg: JwtAlgorithm) -> AuthConfig {
        AuthConfig {
            jwt_algorithm: Some(alg),
            ..AuthConfig::default()
        }
    }

    fn hs(config: &AuthConfig) -> Verifier {
        Verifier::new(
            JwtAlgorithm::Hs256,
            DecodingKey::from_secret(SECRET),
            config,
        )
    }

    fn hs_token(claims: &Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_token_gives_its_user_expiry_and_rules() {
        let v = hs(&config(JwtAlgorithm::Hs256));
        let t = hs_token(&json!({"sub": "dev1", "exp": NOW + 60,
            "acl": {"pub": ["sensors/%c/#"], "sub": ["cmd/%u/#"]}}));
        let token = v.verify(t.as_bytes(), NOW_MS).unwrap();
        assert_eq!(&*token.user, "dev1");
        assert_eq!(token.valid_until_ms, (NOW + 60) * 1000);
        assert_eq!(token.grant.unwrap().len(), 2);
        let plain = hs_token(&json!({"sub": "dev1", "exp": NOW + 1}));
        assert!(v.verify(plain.as_bytes(), NOW_MS).unwrap().grant.is_none());
    }

    #[test]
    fn time_claims_are_enforced_with_the_leeway() {
        let v = hs(&config(JwtAlgorithm::Hs256));
        let expired = hs_token(&json!({"sub": "u", "exp": NOW}));
        assert_eq!(
            v.verify(expired.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Expired
        );
        assert!(v.verify(expired.as_bytes(), NOW_MS - 1).is_ok());
        let early = hs_token(&json!({"sub": "u", "exp": NOW + 99, "nbf": NOW + 10}));
        assert_eq!(
            v.verify(early.as_bytes(), NOW_MS).unwrap_err(),
            Refused::NotYetValid
        );
        assert!(v.verify(early.as_bytes(), NOW_MS + 10_000).is_ok());
        let no_exp = hs_token(&json!({"sub": "u"}));
        assert_eq!(
            v.verify(no_exp.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Missing("exp")
        );
        let lenient = hs(&AuthConfig {
            jwt_leeway_secs: 30,
            ..config(JwtAlgorithm::Hs256)
        });
        let t = lenient.verify(expired.as_bytes(), NOW_MS + 29_000).unwrap();
        assert_eq!(t.valid_until_ms, NOW_MS + 30_000);
        assert!(lenient.verify(early.as_bytes(), NOW_MS - 20_000).is_ok());
        // Absurd dates do not overflow.
        let far = hs_token(&json!({"sub": "u", "exp": 1e300}));
        assert_eq!(
            v.verify(far.as_bytes(), NOW_MS).unwrap().valid_until_ms,
            u64::MAX
        );
        let past = hs_token(&json!({"sub": "u", "exp": -5}));
        assert_eq!(
            v.verify(past.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Expired
        );
    }

    #[test]
    fn issuer_audience_and_user_claims() {
        let strict = hs(&AuthConfig {
            jwt_issuer: Some("https://issuer".into()),
            jwt_audience: Some("mote".into()),
            jwt_user_claim: "device".into(),
            ..config(JwtAlgorithm::Hs256)
        });
        let ok =
            json!({"device": "d1", "exp": NOW + 9, "iss": "https://issuer", "aud": ["x", "mote"]});
        assert_eq!(
            &*strict
                .verify(hs_token(&ok).as_bytes(), NOW_MS)
                .unwrap()
                .user,
            "d1"
        );
        for (claims, why) in [
            (
                json!({"device": "d1", "exp": NOW + 9, "iss": "https://other", "aud": "mote"}),
                Refused::Issuer,
            ),
            (
                json!({"device": "d1", "exp": NOW + 9, "iss": "https://issuer", "aud": "other"}),
                Refused::Audience,
            ),
            (
                json!({"device": "d1", "exp": NOW + 9, "aud": "mote"}),
                Refused::Missing("iss"),
            ),
            (
                json!({"device": "d1", "exp": NOW + 9, "iss": "https://issuer"}),
                Refused::Missing("aud"),
            ),
            (
                json!({"sub": "d1", "exp": NOW + 9, "iss": "https://issuer", "aud": "mote"}),
                Refused::NoUser,
            ),
            (
                json!({"device": "", "exp": NOW + 9, "iss": "https://issuer", "aud": "mote"}),
                Refused::NoUser,
            ),
            (
                json!({"device": 7, "exp": NOW + 9, "iss": "https://issuer", "aud": "mote"}),
                Refused::NoUser,
            ),
        ] {
            assert_eq!(
                strict
                    .verify(hs_token(&claims).as_bytes(), NOW_MS)
                    .unwrap_err(),
                why,
                "{claims}"
            );
        }
        // Unset, the audience is not looked at.
        let open = hs(&config(JwtAlgorithm::Hs256));
        let t = hs_token(&json!({"sub": "u", "exp": NOW + 9, "aud": "anything"}));
        assert!(open.verify(t.as_bytes(), NOW_MS).is_ok());
    }

    #[test]
    fn signatures_and_algorithms() {
        let v = hs(&config(JwtAlgorithm::Hs256));
        let t = hs_token(&json!({"sub": "u", "exp": NOW + 9}));
        let other = encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": "u", "exp": NOW + 9}),
            &EncodingKey::from_secret(b"another secret of thirty-two bytes!"),
        )
        .unwrap();
        assert_eq!(
            v.verify(other.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Signature
        );
        // Another algorithm, `none` included, is refused before any signature check.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &json!({"sub": "u", "exp": NOW + 9}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(
            v.verify(hs512.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Algorithm
        );
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!(
            "{}.{}.",
            b64(r#"{"alg":"none"}"#),
            b64(&format!(r#"{{"sub":"u","exp":{}}}"#, NOW + 9))
        );
        assert!(v.verify(none.as_bytes(), NOW_MS).is_err());
        // A payload changed under a valid signature.
        let parts: Vec<&str> = t.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&format!(r#"{{"sub":"admin","exp":{}}}"#, NOW + 9)),
            parts[2]
        );
        assert_eq!(
            v.verify(forged.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Signature
        );
        assert_eq!(
            v.verify(b"not.a.token", NOW_MS).unwrap_err(),
            Refused::Malformed
        );
        let long = format!("{t}{}", "A".repeat(MAX_TOKEN_BYTES));
        assert_eq!(
            v.verify(long.as_bytes(), NOW_MS).unwrap_err(),
            Refused::TooLong
        );
    }

    #[test]
    fn bad_rules_claims_refuse_the_token() {
        let v = hs(&config(JwtAlgorithm::Hs256));
        for acl in [
            json!(["a/#"]),
            json!({"publish": ["a"]}),
            json!({"pub": "a/#"}),
            json!({"pub": [7]}),
            json!({"sub": ["a/#/b"]}),
        ] {
            let t = hs_token(&json!({"sub": "u", "exp": NOW + 9, "acl": acl}));
            assert!(
                matches!(v.verify(t.as_bytes(), NOW_MS), Err(Refused::Rules(_))),
                "{acl}"
            );
        }
        let t = hs_token(&json!({"sub": "u", "exp": NOW + 9, "acl": {}}));
        assert_eq!(
            v.verify(t.as_bytes(), NOW_MS).unwrap().grant.unwrap().len(),
            0
        );
    }

    #[test]
    fn token_shape_decides_token_or_password() {
        let t = hs_token(&json!({"sub": "u", "exp": NOW + 9}));
        assert!(looks_like_token(t.as_bytes()));
        for p in [
            &b"s3cret"[..],
            b"a.b.c",
            b"eyJ.x",
            b"e30.e30.e30.e30",
            b"e30.e30 .x",
            b"",
        ] {
            assert!(!looks_like_token(p), "{p:?}");
        }
        // `{}` is enough of a header to be taken as a token (and refused as one).
        assert!(looks_like_token(b"e30.e30.x"));
    }

    /// A P-256 key pair from ring: its PKCS#8 document and its public key as PEM.
    fn p256() -> (Vec<u8>, String) {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 0, point } }.
        let mut spki = vec![0x30, 0x59, 0x30, 0x13, 0x06, 0x07];
        spki.extend_from_slice(OID_EC);
        spki.extend_from_slice(&[0x06, 0x08]);
        spki.extend_from_slice(OID_P256);
        spki.extend_from_slice(&[0x03, 0x42, 0x00]);
        spki.extend_from_slice(pair.public_key().as_ref());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&spki)
        );
        (pkcs8.as_ref().to_vec(), pem)
    }

    #[test]
    fn es256_keys_from_pem_verify_their_tokens_only() {
        let (pkcs8, pem) = p256();
        let (other, _) = p256();
        let key = decoding_key(JwtAlgorithm::Es256, pem.as_bytes()).unwrap();
        let v = Verifier::new(JwtAlgorithm::Es256, key, &config(JwtAlgorithm::Es256));
        let claims = json!({"sub": "dev", "exp": NOW + 9});
        let sign = |der: &[u8]| {
            encode(
                &Header::new(Algorithm::ES256),
                &claims,
                &EncodingKey::from_ec_der(der),
            )
            .unwrap()
        };
        assert_eq!(
            &*v.verify(sign(&pkcs8).as_bytes(), NOW_MS).unwrap().user,
            "dev"
        );
        assert_eq!(
            v.verify(sign(&other).as_bytes(), NOW_MS).unwrap_err(),
            Refused::Signature
        );
        // An HS256 token made with the public key as its secret (the classic confusion)
        // is refused for its algorithm.
        let confused = encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(pem.as_bytes()),
        )
        .unwrap();
        assert_eq!(
            v.verify(confused.as_bytes(), NOW_MS).unwrap_err(),
            Refused::Algorithm
        );
        // The key's kind must be the algorithm's.
        assert!(decoding_key(JwtAlgorithm::Rs256, pem.as_bytes()).is_err());
    }

    #[test]
    fn bad_key_files_are_refused() {
        let short = decoding_key(JwtAlgorithm::Hs256, b"short\n").err();
        assert!(short.unwrap().contains("at least 32"));
        // One final line break is not part of the secret.
        assert!(decoding_key(JwtAlgorithm::Hs256, &[b'x'; 31]).is_err());
        let mut thirty_two = vec![b'x'; 32];
        thirty_two.extend_from_slice(b"\r\n");
        assert!(decoding_key(JwtAlgorithm::Hs256, &thirty_two).is_ok());
        for file in [
            &b""[..],
            b"not a pem",
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        ] {
            assert!(decoding_key(JwtAlgorithm::Es256, file).is_err());
            assert!(decoding_key(JwtAlgorithm::Rs256, file).is_err());
        }
        assert_eq!(der(&[0x30, 0x82, 0x01], 0x30), None);
        assert_eq!(der(&[0x30, 0x05, 0x00], 0x30), None);
        assert_eq!(der(&[0x30, 0x80], 0x30), None);
    }
}
