//! DPoP proofs (RFC 9449): sender-constrained tokens. With DPoP, the authorization
//! server binds the access token (and a public client's refresh token) to a key pair
//! of latchkey's, and every request that uses a token carries a fresh proof signed
//! with that key, so a token copied out of a log, a proxy or the store is useless
//! without the private key.
//!
//! - §4.2: the proof is a JWT with `typ: dpop+jwt` and the public key as `jwk` in its
//!   header, and `jti`, `htm`, `htu` (without query and fragment) and `iat` claims;
//!   `ath` (§4.2, §7) when it goes with an access token; `nonce` (§8, §9) once a
//!   server asked for one.
//! - §5: on every token request; §7.1: with `Authorization: DPoP <token>` at the
//!   resource server.
//! - §8, §9: a server's `DPoP-Nonce`, kept per server ([`Nonce`]) and put in the next
//!   proofs.
//! - RFC 7638: the key's thumbprint, which a bound token's `cnf.jkt` names.
//!
//! Signing uses `ring`, as `assertion.rs` does. The JWS header is fixed per key, so
//! it is encoded once; a proof costs one small JSON text and one signature. `jti` is a
//! hash of a random per-key seed and a counter: unique without a system call. EdDSA
//! is preferred where the server allows it: it is deterministic, where ES256 draws a
//! random nonce from the OS for every signature. Either costs about 20 µs per request
//! (BENCHMARKS.md), and only for a server that uses DPoP.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::header::HeaderValue;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::Secret;

/// The request header a proof goes in, and the response header a nonce comes in.
pub const DPOP: &str = "dpop";
pub const DPOP_NONCE: &str = "dpop-nonce";
/// The error code of a server that wants a nonce in the proof (§8, §9).
pub const USE_DPOP_NONCE: &str = "use_dpop_nonce";

/// The algorithms latchkey proves with, in its order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    EdDsa,
    Es256,
}

impl Alg {
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        [Self::EdDsa, Self::Es256]
            .into_iter()
            .find(|alg| alg.name() == name)
    }

    /// The algorithm for a server whose metadata lists `supported`
    /// (`dpop_signing_alg_values_supported`): EdDSA where allowed, else ES256.
    /// Without a list (DPoP forced by the config), ES256, which every server must
    /// accept in practice. `None` when the list has neither.
    pub fn choose(supported: Option<&[String]>) -> Option<Self> {
        let Some(supported) = supported else {
            return Some(Self::Es256);
        };
        [Self::EdDsa, Self::Es256]
            .into_iter()
            .find(|alg| supported.iter().any(|s| s == alg.name()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    #[error("the stored DPoP key cannot be read ({0})")]
    BadKey(&'static str),
    #[error("generating a DPoP key failed")]
    Generate,
    #[error("signing a DPoP proof failed")]
    Sign,
}

enum Pair {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One DPoP key pair. `Debug` shows the algorithm and the public thumbprint only.
pub struct Key {
    alg: Alg,
    pair: Pair,
    /// The PKCS#8 document, for the store.
    pkcs8: Secret,
    /// The encoded JWS header (`typ`, `alg`, `jwk`), the same in every proof.
    header: String,
    thumbprint: String,
    /// `jti` = SHA-256(seed, counter): unique per proof, unpredictable.
    seed: [u8; 16],
    counter: AtomicU64,
    rng: SystemRandom,
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("alg", &self.alg.name())
            .field("jkt", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn generate(alg: Alg) -> Result<Self, DpopError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Alg::Es256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            Alg::EdDsa => Ed25519KeyPair::generate_pkcs8(&rng),
        }
        .map_err(|_| DpopError::Generate)?;
        Self::from_pkcs8(alg, pkcs8.as_ref())
    }

    pub fn from_pkcs8(alg: Alg, der: &[u8]) -> Result<Self, DpopError> {
        let rng = SystemRandom::new();
        let pair = match alg {
            Alg::Es256 => Pair::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
                    .map_err(|_| DpopError::BadKey("not a P-256 key"))?,
            ),
            Alg::EdDsa => Pair::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|_| DpopError::BadKey("not an Ed25519 key"))?,
            ),
        };
        // RFC 7638 §3: the required members in lexicographic order, no spaces.
        let (jwk, canonical) = match &pair {
            Pair::Ecdsa(key) => {
                // Uncompressed point: 0x04, then x and y.
                let point = key.public_key().as_ref();
                let (x, y) = point
                    .get(1..33)
                    .zip(point.get(33..65))
                    .ok_or(DpopError::BadKey("not a P-256 point"))?;
                let (x, y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
                (
                    json!({ "kty": "EC", "crv": "P-256", "x": x, "y": y }),
                    format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#),
                )
            }
            Pair::Ed25519(key) => {
                let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
                (
                    json!({ "kty": "OKP", "crv": "Ed25519", "x": x }),
                    format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#),
                )
            }
        };
        let header = json!({ "typ": "dpop+jwt", "alg": alg.name(), "jwk": jwk });
        let mut seed = [0u8; 16];
        getrandom::fill(&mut seed).map_err(|_| DpopError::Generate)?;
        Ok(Self {
            alg,
            pair,
            pkcs8: Secret::new(URL_SAFE_NO_PAD.encode(der)),
            header: URL_SAFE_NO_PAD.encode(header.to_string()),
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())),
            seed,
            counter: AtomicU64::new(0),
            rng,
        })
    }

    pub fn alg(&self) -> Alg {
        self.alg
    }

    /// The JWK SHA-256 thumbprint (RFC 7638), as a bound token's `cnf.jkt` has it.
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The private key, base64url PKCS#8, for the store only.
    pub fn pkcs8(&self) -> &Secret {
        &self.pkcs8
    }

    /// A proof for one request (`htm` the method, `htu` the target URI without query
    /// and fragment), with `ath` for an access token and the server's latest nonce.
    /// The value is a sensitive header value.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<HeaderValue, DpopError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut jti = Sha256::new();
        jti.update(self.seed);
        jti.update(n.to_le_bytes());
        let jti = URL_SAFE_NO_PAD.encode(&jti.finalize()[..16]);
        let mut claims = json!({ "jti": jti, "htm": htm, "htu": htu, "iat": iat });
        if let Some(ath) = ath {
            claims["ath"] = ath.into();
        }
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        let input = format!(
            "{}.{}",
            self.header,
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = match &self.pair {
            Pair::Ecdsa(key) => key
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| DpopError::Sign)?
                .as_ref()
                .to_vec(),
            Pair::Ed25519(key) => key.sign(input.as_bytes()).as_ref().to_vec(),
        };
        let mut value =
            HeaderValue::try_from(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
                .map_err(|_| DpopError::Sign)?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// `ath`: the base64url SHA-256 of the access token (§4.2).
pub fn ath(token: &Secret) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.expose().as_bytes()))
}

/// `htu` for a URL: scheme, authority and path; no query, no fragment (§4.2).
pub fn htu(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    url[..end].to_owned()
}

/// The installation's key pairs, one per algorithm, made together and stored as one
/// record (see `dpop_key.rs`).
#[derive(Debug)]
pub struct Keys {
    pub es256: Arc<Key>,
    pub eddsa: Arc<Key>,
}

impl Keys {
    pub fn generate() -> Result<Self, DpopError> {
        Ok(Self {
            es256: Arc::new(Key::generate(Alg::Es256)?),
            eddsa: Arc::new(Key::generate(Alg::EdDsa)?),
        })
    }

    pub fn get(&self, alg: Alg) -> &Arc<Key> {
        match alg {
            Alg::Es256 => &self.es256,
            Alg::EdDsa => &self.eddsa,
        }
    }

    /// The stored form: `es256.<pkcs8>.eddsa.<pkcs8>`, base64url.
    pub fn to_secret(&self) -> Secret {
        Secret::new(format!(
            "es256.{}.eddsa.{}",
            self.es256.pkcs8.expose(),
            self.eddsa.pkcs8.expose()
        ))
    }

    pub fn from_secret(stored: &Secret) -> Result<Self, DpopError> {
        let parts: Vec<&str> = stored.expose().split('.').collect();
        let [_, es256, _, eddsa] = parts.as_slice() else {
            return Err(DpopError::BadKey("not a latchkey DPoP key record"));
        };
        let decode = |text: &str| {
            URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|_| DpopError::BadKey("not base64url"))
        };
        Ok(Self {
            es256: Arc::new(Key::from_pkcs8(Alg::Es256, &decode(es256)?)?),
            eddsa: Arc::new(Key::from_pkcs8(Alg::EdDsa, &decode(eddsa)?)?),
        })
    }
}

/// The latest `DPoP-Nonce` a server sent (§8, §9): every response may bring a new
/// one, and the next proof carries it.
#[derive(Debug, Default)]
pub struct Nonce(Mutex<Option<Arc<str>>>);

impl Nonce {
    pub fn get(&self) -> Option<Arc<str>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Takes the `DPoP-Nonce` of a response, if it has a well-formed one (§8.1:
    /// `1*NQCHAR`); whether it did.
    pub fn update(&self, value: Option<&HeaderValue>) -> bool {
        let Some(value) = value.and_then(|v| v.to_str().ok()).filter(|v| {
            !v.is_empty()
                && v.len() <= 1024
                && v.bytes()
                    .all(|b| matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e))
        }) else {
            return false;
        };
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(value.into());
        true
    }
}

/// DPoP at an authorization server's token endpoint: the key, that server's nonce,
/// and whether a Bearer answer is refused (the config or the resource's metadata
/// requires bound tokens).
#[derive(Debug)]
pub struct Prover {
    pub key: Arc<Key>,
    pub nonce: Nonce,
    pub required: bool,
}

#[cfg(test)]
mod tests {
    use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey};

    use super::*;

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    }

    /// Verifies a proof as a server would: with the `jwk` of its own header.
    fn verify(proof: &HeaderValue) -> (serde_json::Value, serde_json::Value) {
        let text = proof.to_str().expect("ascii");
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 3);
        let (header, claims) = (decode(parts[0]), decode(parts[1]));
        let jwk = &header["jwk"];
        let b64 = |v: &serde_json::Value| {
            URL_SAFE_NO_PAD
                .decode(v.as_str().expect("str"))
                .expect("b64")
        };
        let (alg, public): (&dyn signature::VerificationAlgorithm, Vec<u8>) =
            match jwk["kty"].as_str() {
                Some("EC") => (
                    &ECDSA_P256_SHA256_FIXED,
                    [vec![4], b64(&jwk["x"]), b64(&jwk["y"])].concat(),
                ),
                _ => (&ED25519, b64(&jwk["x"])),
            };
        UnparsedPublicKey::new(alg, public)
            .verify(
                format!("{}.{}", parts[0], parts[1]).as_bytes(),
                &URL_SAFE_NO_PAD.decode(parts[2]).expect("signature"),
            )
            .expect("the proof verifies with its own jwk");
        assert!(jwk.get("d").is_none(), "no private key in the header");
        (header, claims)
    }

    #[test]
    fn proofs_verify_and_carry_the_claims() {
        let keys = Keys::generate().expect("keys");
        let token = Secret::new("tok");
        for key in [&*keys.es256, &*keys.eddsa] {
            let proof = key
                .proof(
                    "POST",
                    "https://rs.example/mcp",
                    Some(&ath(&token)),
                    Some("n-1"),
                )
                .expect("proof");
            assert!(proof.is_sensitive());
            let (header, claims) = verify(&proof);
            assert_eq!(header["typ"], "dpop+jwt");
            assert_eq!(header["alg"], key.alg().name());
            assert_eq!(claims["htm"], "POST");
            assert_eq!(claims["htu"], "https://rs.example/mcp");
            assert_eq!(claims["nonce"], "n-1");
            assert_eq!(claims["ath"], ath(&token));
            assert!(claims["iat"].as_u64().is_some());
            let again = verify(&key.proof("GET", "https://x", None, None).expect("proof")).1;
            assert_ne!(again["jti"], claims["jti"], "a fresh jti per proof");
            assert!(again.get("ath").is_none() && again.get("nonce").is_none());
            assert!(!format!("{key:?}").contains(key.pkcs8().expose()));
        }
    }

    #[test]
    fn thumbprint_follows_rfc_7638() {
        // RFC 8037 appendix A.3: the Ed25519 example key's thumbprint. Its PKCS#8
        // form is the RFC's seed behind the fixed Ed25519 PKCS#8 v1 prefix.
        let seed = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .expect("seed");
        let prefix = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let key = Key::from_pkcs8(Alg::EdDsa, &[&prefix[..], &seed].concat()).expect("key");
        assert_eq!(
            key.thumbprint(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn keys_round_trip_through_the_store_form() {
        let keys = Keys::generate().expect("keys");
        let back = Keys::from_secret(&keys.to_secret()).expect("read back");
        assert_eq!(back.es256.thumbprint(), keys.es256.thumbprint());
        assert_eq!(back.eddsa.thumbprint(), keys.eddsa.thumbprint());
        let e = Keys::from_secret(&Secret::new("junk")).expect_err("junk");
        assert!(!e.to_string().contains("junk"));
    }

    #[test]
    fn algorithm_choice_and_nonces_and_htu() {
        let list = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            Alg::choose(Some(&list(&["ES256", "EdDSA"]))),
            Some(Alg::EdDsa)
        );
        assert_eq!(
            Alg::choose(Some(&list(&["RS256", "ES256"]))),
            Some(Alg::Es256)
        );
        assert_eq!(Alg::choose(Some(&list(&["RS256"]))), None);
        assert_eq!(Alg::choose(None), Some(Alg::Es256));
        let nonce = Nonce::default();
        assert!(!nonce.update(Some(&HeaderValue::from_static("a b"))));
        assert!(!nonce.update(Some(&HeaderValue::from_static("a\"b"))));
        assert!(nonce.update(Some(&HeaderValue::from_static("eyJ7S_zG.eyJH0-Z.HX4w-7v"))));
        assert_eq!(nonce.get().as_deref(), Some("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
        assert_eq!(htu("https://a.example/t?x=1#f"), "https://a.example/t");
        assert_eq!(htu("https://a.example/t#f"), "https://a.example/t");
    }
}
