//! Signed JWTs for the fakes: the tokens a workload's platform issues (RFC 7523
//! assertions for workload identity), and an enterprise IdP's ID tokens and ID-JAGs
//! (draft-ietf-oauth-identity-assertion-authz-grant), all ES256 with `ring`; and the
//! checks an authorization server makes of a JWT bearer grant's assertion.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _,
    UnparsedPublicKey,
};
use serde_json::{Value, json};

/// The `typ` of an ID-JAG (the draft's §3).
pub const ID_JAG_TYP: &str = "oauth-id-jag+jwt";

/// An issuer of JWTs: a key pair and its `iss`.
#[derive(Debug)]
pub struct Signer {
    pub issuer: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    pub fn new(issuer: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("P-256 key");
        Self {
            issuer: issuer.to_owned(),
            key,
            rng,
        }
    }

    /// What a relying party trusts it by.
    pub fn trusted(&self, typ: Option<&str>) -> TrustedIssuer {
        TrustedIssuer {
            issuer: self.issuer.clone(),
            public_key: self.key.public_key().as_ref().to_vec(),
            typ: typ.map(str::to_owned),
        }
    }

    /// The public key as a JWKS (RFC 7517), as `jwks_uri` serves it.
    pub fn jwks(&self) -> Value {
        let point = self.key.public_key().as_ref();
        json!({"keys": [{
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": "k1",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }]})
    }

    /// A JWT with `claims` plus `iss`, `iat` and `exp` (`lifetime` seconds from now,
    /// negative for one that has expired), unless `claims` sets them.
    pub fn sign(&self, typ: &str, claims: Value, lifetime: i64) -> String {
        let now = now();
        let mut claims = claims;
        let object = claims.as_object_mut().expect("claims are an object");
        object.entry("iss").or_insert(json!(self.issuer));
        object.entry("iat").or_insert(json!(now));
        object
            .entry("exp")
            .or_insert(json!(now.saturating_add_signed(lifetime)));
        let header = json!({"alg": "ES256", "typ": typ, "kid": "k1"});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, input.as_bytes())
            .expect("sign a JWT");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// An issuer whose JWTs an authorization server takes as grants.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    pub issuer: String,
    /// Its P-256 public key, uncompressed: what its JWKS publishes.
    pub public_key: Vec<u8>,
    /// The `typ` its JWTs must carry (an ID-JAG's), if any.
    pub typ: Option<String>,
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The header and claims of a JWT, unverified.
pub fn decode(jwt: &str) -> Option<(Value, Value)> {
    let mut parts = jwt.split('.');
    let part = |p: Option<&str>| -> Option<Value> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p?).ok()?).ok()
    };
    Some((part(parts.next())?, part(parts.next())?))
}

/// Checks a JWT the way RFC 7523 §3 (and, for an ID-JAG, the draft's §4.3) has an
/// authorization server check a bearer grant: an issuer it trusts, that issuer's
/// signature, the `typ` it requires, `aud` naming `audience`, not expired. Returns
/// the claims, or why it is refused.
pub fn verify(jwt: &str, trusted: &[TrustedIssuer], audience: &str) -> Result<Value, String> {
    let (header, claims) = decode(jwt).ok_or("not a JWT")?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    let issuer = trusted
        .iter()
        .find(|t| t.issuer == iss)
        .ok_or_else(|| format!("untrusted issuer {iss:?}"))?;
    let (input, signature) = jwt.rsplit_once('.').ok_or("not a JWT")?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "bad signature encoding")?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &issuer.public_key)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| "bad signature")?;
    if header["alg"] != "ES256" {
        return Err("alg is not ES256".into());
    }
    if let Some(typ) = &issuer.typ
        && header["typ"].as_str() != Some(typ)
    {
        return Err(format!("typ is not {typ}"));
    }
    let aud_ok = match &claims["aud"] {
        Value::String(aud) => aud == audience,
        Value::Array(auds) => auds.iter().any(|a| a == audience),
        _ => false,
    };
    if !aud_ok {
        return Err(format!("aud does not name {audience}"));
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= now()) {
        return Err("expired".into());
    }
    Ok(claims)
}
