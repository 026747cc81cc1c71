//! Verification and signing keys, and the one rule that gives each its
//! algorithm: the key's type (and, for a JWK, its `alg` among the RSA
//! ones), never the token's header. So a token cannot talk a key into an
//! algorithm it was not made for: an RSA public key is never an HMAC
//! secret, an EC key never verifies an RS256 signature, `none` is nothing.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

/// A public key and the only algorithm it verifies.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The DER of the named curve prime256v1 (P-256), as it appears inside an
/// EC key's algorithm identifier. jsonwebtoken tells EC from RSA but not one
/// curve from another, and ES256 is P-256 only.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

fn on_p256(der: &[u8]) -> bool {
    der.windows(P256_OID.len()).any(|w| w == P256_OID)
}

fn parse_pem(text: &[u8]) -> Result<pem::Pem, String> {
    pem::parse(text).map_err(|e| format!("not a PEM file ({e})"))
}

/// A public key from a PEM file (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC
/// KEY`): RSA verifies RS256, EC P-256 ES256, Ed25519 EdDSA.
pub fn public_from_pem(text: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let parsed = parse_pem(text)?;
    if parsed.tag().contains("PRIVATE") {
        return Err("holds a private key; give the public key".into());
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(text) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(text) {
        if !on_p256(parsed.contents()) {
            return Err("an EC key that is not on P-256 (only ES256 is taken)".into());
        }
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(text) {
        return Ok((Algorithm::EdDSA, key));
    }
    Err("not an RSA, EC P-256 or Ed25519 public key".into())
}

/// A private key from a PEM file, for `flashsale token --key`: RSA signs
/// RS256, EC P-256 ES256, Ed25519 EdDSA.
pub fn signing_from_pem(text: &[u8]) -> Result<(Algorithm, EncodingKey), String> {
    let parsed = parse_pem(text)?;
    if parsed.tag() == "EC PRIVATE KEY" {
        return Err(
            "an EC key in SEC1 form; convert it: openssl pkcs8 -topk8 -nocrypt -in KEY".into(),
        );
    }
    if !parsed.tag().contains("PRIVATE") {
        return Err("holds no private key".into());
    }
    if let Ok(key) = EncodingKey::from_rsa_pem(text) {
        return Ok((Algorithm::RS256, key));
    }
    if let Ok(key) = EncodingKey::from_ec_pem(text) {
        if !on_p256(parsed.contents()) {
            return Err("an EC key that is not on P-256 (only ES256 is signed)".into());
        }
        return Ok((Algorithm::ES256, key));
    }
    if let Ok(key) = EncodingKey::from_ed_pem(text) {
        return Ok((Algorithm::EdDSA, key));
    }
    Err("not an RSA, EC P-256 or Ed25519 private key".into())
}

/// A key of a JWKS. Refused: encryption keys, symmetric keys (a secret
/// published at a URL is no secret), curves other than P-256 and Ed25519,
/// and an `alg` that does not fit the key's type.
pub fn from_jwk(jwk: &Jwk) -> Result<VerifyKey, String> {
    if jwk.common.public_key_use == Some(PublicKeyUse::Encryption) {
        return Err("an encryption key (`use`: `enc`)".into());
    }
    let named = jwk.common.key_algorithm;
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => match named {
            None | Some(KeyAlgorithm::RS256) => Algorithm::RS256,
            Some(KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(KeyAlgorithm::RS512) => Algorithm::RS512,
            Some(KeyAlgorithm::PS256) => Algorithm::PS256,
            Some(KeyAlgorithm::PS384) => Algorithm::PS384,
            Some(KeyAlgorithm::PS512) => Algorithm::PS512,
            Some(other) => return Err(format!("an RSA key with `alg` {other:?}")),
        },
        AlgorithmParameters::EllipticCurve(p) => match (&p.curve, named) {
            (EllipticCurve::P256, None | Some(KeyAlgorithm::ES256)) => Algorithm::ES256,
            (curve, _) => return Err(format!("an EC key on {curve:?} (only P-256, ES256)")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match (&p.curve, named) {
            (EllipticCurve::Ed25519, None | Some(KeyAlgorithm::EdDSA)) => Algorithm::EdDSA,
            (curve, _) => return Err(format!("an OKP key on {curve:?} (only Ed25519)")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric key: never taken from a JWKS".into())
        }
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable: {e}"))?;
    Ok(VerifyKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}
