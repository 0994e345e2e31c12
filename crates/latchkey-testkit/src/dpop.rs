//! The server side of DPoP (RFC 9449 §4.3, §7.1): what the testkit's authorization
//! server and protected upstream check of a proof, so that a test fails when latchkey
//! sends a wrong one, none, or a token without its key. Written from the RFC, not
//! from latchkey's signer: the signature is checked with the `jwk` of the proof's own
//! header, the thumbprint is computed by RFC 7638, and every claim is compared with
//! the request the proof came with.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// How far a proof's `iat` may be from now (§11.1 leaves it to the server).
const IAT_WINDOW: u64 = 60;

/// A proof that passed: its key's thumbprint and the nonce it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub jkt: String,
    pub nonce: Option<String>,
}

/// What a proof must match: the request's method and URL (without query), and for
/// a resource server the access token (`ath`).
#[derive(Debug)]
pub struct Expected<'a> {
    pub htm: &'a str,
    pub htu: &'a str,
    pub access_token: Option<&'a str>,
}

/// Checks `proof` (§4.3): a `dpop+jwt` with an ES256 or EdDSA public `jwk`, signed
/// with that key, for this method and URL, issued within [`IAT_WINDOW`], with a `jti`
/// not seen before (recorded in `seen`), and with the token's `ath` when one is
/// expected. The error says which check failed.
pub fn verify(
    proof: &str,
    expected: &Expected<'_>,
    seen: &Mutex<HashSet<String>>,
) -> Result<Verified, String> {
    let parts: Vec<&str> = proof.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err("not a JWS compact serialization".into());
    };
    let decode = |part: &str| -> Result<Value, String> {
        let bytes = URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "not base64url".to_owned())?;
        serde_json::from_slice(&bytes).map_err(|_| "not JSON".to_owned())
    };
    let (header, claims) = (decode(header_b64)?, decode(claims_b64)?);
    if header["typ"] != "dpop+jwt" {
        return Err("typ is not dpop+jwt".into());
    }
    let jwk = &header["jwk"];
    if jwk.get("d").is_some() {
        return Err("the jwk holds a private key".into());
    }
    let b64 = |name: &str| -> Result<Vec<u8>, String> {
        jwk[name]
            .as_str()
            .and_then(|v| URL_SAFE_NO_PAD.decode(v).ok())
            .ok_or_else(|| format!("jwk.{name} missing"))
    };
    let text = |name: &str| jwk[name].as_str().unwrap_or_default().to_owned();
    let (algorithm, public, canonical): (&dyn VerificationAlgorithm, Vec<u8>, String) = match (
        header["alg"].as_str(),
        jwk["kty"].as_str(),
        jwk["crv"].as_str(),
    ) {
        (Some("ES256"), Some("EC"), Some("P-256")) => (
            &ECDSA_P256_SHA256_FIXED,
            [vec![4], b64("x")?, b64("y")?].concat(),
            format!(
                r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
                text("x"),
                text("y")
            ),
        ),
        (Some("EdDSA"), Some("OKP"), Some("Ed25519")) => (
            &ED25519,
            b64("x")?,
            format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, text("x")),
        ),
        _ => return Err("alg and jwk are not ES256/P-256 or EdDSA/Ed25519".into()),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| "signature is not base64url".to_owned())?;
    UnparsedPublicKey::new(algorithm, public)
        .verify(format!("{header_b64}.{claims_b64}").as_bytes(), &signature)
        .map_err(|_| "the signature does not verify with the jwk".to_owned())?;
    if claims["htm"] != expected.htm {
        return Err(format!("htm is not {}", expected.htm));
    }
    if claims["htu"] != expected.htu {
        return Err(format!("htu is not {}", expected.htu));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let iat = claims["iat"].as_u64().ok_or("no iat")?;
    if iat.abs_diff(now) > IAT_WINDOW {
        return Err("iat is outside the window".into());
    }
    match (expected.access_token, claims["ath"].as_str()) {
        (Some(token), Some(ath)) if ath == URL_SAFE_NO_PAD.encode(Sha256::digest(token)) => {}
        (Some(_), _) => return Err("ath does not match the access token".into()),
        (None, _) => {}
    }
    let jti = claims["jti"].as_str().ok_or("no jti")?;
    if !seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(jti.to_owned())
    {
        return Err("jti replayed".into());
    }
    Ok(Verified {
        jkt: URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())),
        nonce: claims["nonce"].as_str().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair as _};
    use serde_json::json;

    use super::*;

    /// A proof signed here, with claims the test picks.
    fn sign(key: &Ed25519KeyPair, claims: &Value) -> String {
        let x = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        let header = json!({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": x}});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()).as_ref());
        format!("{input}.{signature}")
    }

    #[test]
    fn good_proofs_pass_and_each_wrong_one_is_refused() {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("key");
        let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).expect("key");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("time")
            .as_secs();
        let ath = URL_SAFE_NO_PAD.encode(Sha256::digest("tok"));
        let claims = |jti: &str| json!({"jti": jti, "htm": "POST", "htu": "http://rs/mcp", "iat": now, "ath": ath});
        let expected = Expected {
            htm: "POST",
            htu: "http://rs/mcp",
            access_token: Some("tok"),
        };
        let seen = Mutex::new(HashSet::new());
        let good = sign(&key, &claims("1"));
        assert!(verify(&good, &expected, &seen).is_ok());
        assert_eq!(verify(&good, &expected, &seen), Err("jti replayed".into()));
        let mut wrong = Vec::new();
        for (field, value) in [
            ("htm", json!("GET")),
            ("htu", json!("http://rs/other")),
            ("iat", json!(now - 3600)),
            ("ath", json!("x")),
        ] {
            let mut c = claims(field);
            c[field] = value;
            wrong.push(sign(&key, &c));
        }
        // Signed by another key than its jwk says.
        let other =
            Ed25519KeyPair::from_pkcs8(Ed25519KeyPair::generate_pkcs8(&rng).expect("key").as_ref())
                .expect("key");
        let (forged_head, _) = good.rsplit_once('.').expect("jws");
        let forged_sig = URL_SAFE_NO_PAD.encode(other.sign(forged_head.as_bytes()).as_ref());
        wrong.push(format!("{forged_head}.{forged_sig}"));
        wrong.push("not.a.proof".into());
        for proof in wrong {
            assert!(verify(&proof, &expected, &seen).is_err(), "{proof}");
        }
    }
}
