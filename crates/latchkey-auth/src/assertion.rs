//! `private_key_jwt` client authentication (RFC 7523 §2.2, OpenID Connect Core §9):
//! a short-lived JWT signed with the client's private key replaces the client secret
//! at the token endpoint. MCP uses it for machine-to-machine clients (SEP-1046).
//!
//! Signing is done with `ring`, already in the tree through rustls, rather than a JWT
//! crate: a client assertion is one fixed header and five claims, and the JWT crates
//! would bring a second crypto stack.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::json;

use crate::Secret;

/// RFC 7523 §2.2.
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Long enough for clock skew, short enough that a leaked assertion is soon useless.
const LIFETIME: Duration = Duration::from_secs(300);

/// The JWS algorithms latchkey signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Es256,
    Es384,
    Rs256,
    Ps256,
    EdDsa,
}

impl Algorithm {
    pub const NAMES: &[&str] = &["ES256", "ES384", "RS256", "PS256", "EdDSA"];

    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "RS256" => Self::Rs256,
            "PS256" => Self::Ps256,
            "EdDSA" => Self::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::Rs256 => "RS256",
            Self::Ps256 => "PS256",
            Self::EdDsa => "EdDSA",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "the private key is not PEM; give a PKCS#8 key (-----BEGIN PRIVATE KEY-----), for example from `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`"
    )]
    NotPem,
    #[error(
        "the private key is a {found} key, not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.p8`"
    )]
    NotPkcs8 { found: &'static str },
    #[error(
        "the private key cannot sign with {alg}: {cause}; set signing_alg to match the key (one of ES256, ES384, RS256, PS256, EdDSA)"
    )]
    Mismatch { alg: &'static str, cause: String },
    #[error(
        "the private key is none of P-256, P-384, RSA or Ed25519; latchkey signs with ES256, ES384, RS256, PS256 or EdDSA"
    )]
    Unsupported,
    #[error("signing the client assertion failed")]
    Sign,
}

enum KeyPair {
    Ecdsa(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A client's private key and the algorithm it signs with. `Debug` shows only the
/// algorithm.
pub struct SigningKey {
    alg: Algorithm,
    key: KeyPair,
    key_id: Option<String>,
    rng: SystemRandom,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg.name())
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Two keys are the same when they sign alike: same algorithm, same public key.
impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg
            && self.key_id == other.key_id
            && self.public_key() == other.public_key()
    }
}

impl Eq for SigningKey {}

impl SigningKey {
    fn public_key(&self) -> &[u8] {
        match &self.key {
            KeyPair::Ecdsa(key) => key.public_key().as_ref(),
            KeyPair::Rsa(key) => key.public_key().as_ref(),
            KeyPair::Ed25519(key) => key.public_key().as_ref(),
        }
    }

    /// Reads a PKCS#8 PEM key. Without `alg`, the algorithm follows from the key:
    /// ES256, ES384, RS256 or EdDSA.
    pub fn from_pem(
        pem: &str,
        alg: Option<Algorithm>,
        key_id: Option<String>,
    ) -> Result<Self, KeyError> {
        let der = match PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
            Ok(PrivateKeyDer::Pkcs8(der)) => der,
            Ok(PrivateKeyDer::Pkcs1(_)) => {
                return Err(KeyError::NotPkcs8 {
                    found: "PKCS#1 RSA",
                });
            }
            Ok(PrivateKeyDer::Sec1(_)) => return Err(KeyError::NotPkcs8 { found: "SEC1 EC" }),
            Ok(_) | Err(_) => return Err(KeyError::NotPem),
        };
        let der = der.secret_pkcs8_der();
        let rng = SystemRandom::new();
        let load = |alg: Algorithm| -> Result<KeyPair, ring::error::KeyRejected> {
            Ok(match alg {
                Algorithm::Es256 => KeyPair::Ecdsa(EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )?),
                Algorithm::Es384 => KeyPair::Ecdsa(EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der,
                    &rng,
                )?),
                Algorithm::Rs256 | Algorithm::Ps256 => KeyPair::Rsa(RsaKeyPair::from_pkcs8(der)?),
                Algorithm::EdDsa => {
                    KeyPair::Ed25519(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)?)
                }
            })
        };
        let (alg, key) = match alg {
            Some(alg) => load(alg)
                .map(|key| (alg, key))
                .map_err(|e| KeyError::Mismatch {
                    alg: alg.name(),
                    cause: e.to_string(),
                })?,
            None => [
                Algorithm::Es256,
                Algorithm::Es384,
                Algorithm::Rs256,
                Algorithm::EdDsa,
            ]
            .into_iter()
            .find_map(|alg| load(alg).ok().map(|key| (alg, key)))
            .ok_or(KeyError::Unsupported)?,
        };
        Ok(Self {
            alg,
            key,
            key_id,
            rng,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// A client assertion for `client_id` addressed to `audience` (the authorization
    /// server's issuer, RFC 7523 §3 as updated by draft-ietf-oauth-rfc7523bis).
    pub fn assertion(&self, client_id: &str, audience: &str) -> Result<Secret, KeyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).map_err(|_| KeyError::Sign)?;
        let mut header = json!({ "alg": self.alg.name(), "typ": "JWT" });
        if let Some(kid) = &self.key_id {
            header["kid"] = kid.as_str().into();
        }
        let claims = json!({
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "exp": now + LIFETIME.as_secs(),
            "jti": URL_SAFE_NO_PAD.encode(jti),
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(Secret::new(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        )))
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            KeyPair::Ecdsa(key) => key
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|_| KeyError::Sign),
            KeyPair::Rsa(key) => {
                let padding: &dyn signature::RsaEncoding = match self.alg {
                    Algorithm::Ps256 => &signature::RSA_PSS_SHA256,
                    _ => &signature::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; key.public().modulus_len()];
                key.sign(padding, &self.rng, message, &mut out)
                    .map_err(|_| KeyError::Sign)?;
                Ok(out)
            }
            KeyPair::Ed25519(key) => Ok(key.sign(message).as_ref().to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

    use super::*;

    fn pem(der: &[u8]) -> String {
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(der)
        )
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    /// Signs an assertion, then verifies it with the public key as a server would.
    fn check(key: &SigningKey, verify: &'static dyn ring::signature::VerificationAlgorithm) {
        let jwt = key
            .assertion("client-1", "https://auth.example.com")
            .expect("sign");
        let parts: Vec<&str> = jwt.expose().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["alg"], key.algorithm().name());
        let claims = decode(parts[1]);
        assert_eq!(claims["iss"], "client-1");
        assert_eq!(claims["sub"], "client-1");
        assert_eq!(claims["aud"], "https://auth.example.com");
        let lifetime = claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat");
        assert_eq!(lifetime, LIFETIME.as_secs());
        assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
        UnparsedPublicKey::new(verify, key.public_key())
            .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
            .expect("the signature verifies");
        assert!(!format!("{key:?}").contains("BEGIN"));
    }

    #[test]
    fn es256_and_eddsa_assertions_verify() {
        let rng = SystemRandom::new();
        let p256 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate");
        let key = SigningKey::from_pem(&pem(p256.as_ref()), None, None).expect("P-256 key");
        assert_eq!(key.algorithm(), Algorithm::Es256);
        check(&key, &ECDSA_P256_SHA256_FIXED);

        let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let key =
            SigningKey::from_pem(&pem(ed.as_ref()), None, Some("k1".into())).expect("Ed25519");
        assert_eq!(key.algorithm(), Algorithm::EdDsa);
        check(&key, &ED25519);
    }

    #[test]
    fn wrong_algorithm_and_non_pem_are_refused_without_echoing_the_key() {
        let rng = SystemRandom::new();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).expect("generate");
        let text = pem(ed.as_ref());
        let e = SigningKey::from_pem(&text, Some(Algorithm::Es256), None).expect_err("mismatch");
        assert!(matches!(e, KeyError::Mismatch { alg: "ES256", .. }), "{e}");
        let e = SigningKey::from_pem("not a key", None, None).expect_err("not pem");
        assert!(matches!(e, KeyError::NotPem), "{e}");
        let body = text.lines().nth(1).expect("base64 line");
        assert!(!e.to_string().contains(body));
    }
}
