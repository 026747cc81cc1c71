//! Identity: bearer JWTs, verified with the HS256 secret (`auth.jwt_secret`)
//! and with the store's own public keys (`auth.jwt_public_keys`, PEM files;
//! `auth.jwks_url`, its JWKS). Each key verifies only its own algorithm
//! (see `keys`); the token's header merely says which key it claims.
//! Used by the API's extractors and by the `token` command that mints tokens.

mod cache;
pub mod jwks;
pub mod keys;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::AuthSettings;
use crate::domain::CustomerId;
use keys::VerifyKey;

/// A token longer than this is refused before any decoding: real ones are
/// well under 2 kB, and base64-decoding a 100 kB header per request is work
/// an attacker should not be able to buy for free.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// What `issue` signs.
#[derive(Debug, Serialize)]
struct Claims<'a> {
    sub: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'a str>,
}

/// What a caller may do beyond its own reservations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Customer,
    /// The admin endpoints.
    Admin,
    /// The store's backend: confirms, releases, reads and extends any
    /// customer's reservation; never the admin endpoints.
    Service,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: CustomerId,
    pub role: Role,
}

impl Identity {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn is_service(&self) -> bool {
        self.role == Role::Service
    }

    /// The customer whose reservations alone this caller may see: `None`
    /// for an admin or a service, who see any.
    pub fn owner_scope(&self) -> Option<&CustomerId> {
        (self.role == Role::Customer).then_some(&self.subject)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token is expired")]
    Expired,
    #[error("the token is malformed, badly signed, or not for this gateway")]
    Invalid,
    #[error("the token's customer claim must be 1 to 64 printable characters")]
    BadSubject,
    #[error("no key is known for the token's `kid`")]
    UnknownKey,
}

impl AuthError {
    fn metric(self) -> &'static str {
        match self {
            AuthError::Expired => "expired",
            AuthError::Invalid => "invalid",
            AuthError::BadSubject => "subject",
            AuthError::UnknownKey => "unknown_key",
        }
    }
}

/// The claims checked beside the signature.
struct Rules {
    customer_claim: String,
    role_claim: String,
    /// One validation per algorithm a key may have, built once.
    validations: Vec<(Algorithm, Validation)>,
}

const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::HS256,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::EdDSA,
];

impl Rules {
    fn new(
        issuer: Option<&str>,
        audience: Option<&str>,
        leeway: u64,
        customer_claim: &str,
        role_claim: &str,
    ) -> Rules {
        let validations = ALGORITHMS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                let mut required = vec!["exp"];
                v.leeway = leeway;
                v.validate_nbf = true;
                // HS256 tokens are flashsale's own (`flashsale token`, for
                // admins and tools), not the store's sign-in's: its issuer
                // and audience are not theirs to carry.
                let (issuer, audience) = match alg {
                    Algorithm::HS256 => (None, None),
                    _ => (issuer, audience),
                };
                if let Some(iss) = issuer {
                    v.set_issuer(&[iss]);
                    required.push("iss");
                }
                match audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    // Without a configured audience a token's `aud` is the
                    // store's business, not a reason to refuse it.
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Rules {
            customer_claim: customer_claim.to_string(),
            role_claim: role_claim.to_string(),
            validations,
        }
    }

    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| v)
    }
}

/// Keys and validation rules, built once at start-up.
pub struct Auth {
    /// The HS256 secret, if HS256 tokens are taken at all.
    hs256: Option<(EncodingKey, DecodingKey)>,
    /// `auth.jwt_public_keys`.
    pems: Vec<VerifyKey>,
    jwks: Option<Arc<jwks::Jwks>>,
    rules: Rules,
    /// `auth.token_cache_entries` above 0.
    cache: Option<cache::Verified>,
}

impl Auth {
    /// HS256 only, with the default claims (`sub`, `role`) and 5 s leeway:
    /// the tools' and tests' way to mint tokens the gateway takes.
    pub fn new(secret: &SecretString) -> Auth {
        let bytes = secret.expose_secret().as_bytes();
        Auth {
            hs256: Some((
                EncodingKey::from_secret(bytes),
                DecodingKey::from_secret(bytes),
            )),
            pems: Vec::new(),
            jwks: None,
            rules: Rules::new(None, None, 5, "sub", "role"),
            cache: None,
        }
    }

    /// Everything `[auth]` configures. The JWKS is not fetched yet
    /// (`jwks()` and `Jwks::refresh`); a PEM file that cannot be used is an
    /// error naming `auth.jwt_public_keys`.
    pub fn from_settings(s: &AuthSettings) -> Result<Auth, String> {
        let hs256 = s.hs256_secret().map(|secret| {
            let bytes = secret.expose_secret().as_bytes();
            (
                EncodingKey::from_secret(bytes),
                DecodingKey::from_secret(bytes),
            )
        });
        let mut pems = Vec::new();
        for path in &s.jwt_public_keys {
            let (alg, key) = load_public_pem(path)
                .map_err(|why| format!("`auth.jwt_public_keys`: {path}: {why}"))?;
            pems.push(VerifyKey {
                kid: None,
                alg,
                key,
            });
        }
        let jwks = match s.jwks_url.as_str() {
            "" => None,
            url => Some(Arc::new(
                jwks::Jwks::new(
                    url,
                    Duration::from_secs(s.jwks_min_refresh_seconds),
                    Duration::from_secs(s.jwks_max_age_seconds),
                )
                .map_err(|why| format!("`auth.jwks_url`: {why}"))?,
            )),
        };
        let some = |v: &str| (!v.is_empty()).then_some(v.to_string());
        Ok(Auth {
            hs256,
            pems,
            jwks,
            rules: Rules::new(
                some(&s.issuer).as_deref(),
                some(&s.audience).as_deref(),
                s.leeway_seconds,
                &s.customer_claim,
                &s.role_claim,
            ),
            cache: (s.token_cache_entries > 0).then(|| cache::Verified::new(s.token_cache_entries)),
        })
    }

    /// The JWKS, when one is configured, to fetch at start and keep fresh.
    pub fn jwks(&self) -> Option<&Arc<jwks::Jwks>> {
        self.jwks.as_ref()
    }

    pub fn takes_hs256(&self) -> bool {
        self.hs256.is_some()
    }

    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let verified = self.verify_once(token).await;
        if let Err(e) = &verified {
            crate::metrics::token_refused(e.metric());
        }
        verified
    }

    async fn verify_once(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Invalid);
        }
        // Read before verifying: a refresh that removes a key meanwhile
        // makes this entry stale at once.
        let generation = self.jwks.as_ref().map_or(0, |j| j.generation());
        if let Some(id) = self.cache.as_ref().and_then(|c| c.get(token, generation)) {
            return Ok(id);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let (identity, exp) = match self.verify_with_known_keys(token, &header) {
            Err(AuthError::UnknownKey) => {
                // The store may have rotated its key since the last fetch.
                if let Some(jwks) = &self.jwks {
                    jwks.refresh_for_unknown_kid().await;
                }
                self.verify_with_known_keys(token, &header)
            }
            other => other,
        }?;
        if let Some(c) = &self.cache {
            c.put(token, &identity, exp, generation);
        }
        Ok(identity)
    }

    /// The header names an algorithm and maybe a `kid`; only keys whose own
    /// algorithm is that one are tried, so the header chooses among keys and
    /// never chooses how a key is used.
    fn verify_with_known_keys(
        &self,
        token: &str,
        header: &Header,
    ) -> Result<(Identity, u64), AuthError> {
        if header.alg == Algorithm::HS256 {
            return match &self.hs256 {
                Some((_, key)) => self.decode(token, key, Algorithm::HS256),
                None => Err(AuthError::Invalid),
            };
        }
        let jwks = self.jwks.as_ref().map(|j| j.keys());
        if let (Some(set), Some(kid)) = (&jwks, &header.kid) {
            if let Some(key) = set.get(kid) {
                // A kid that names a key of another type is no reason to try
                // the others: the token lies about its key.
                if key.alg != header.alg {
                    return Err(AuthError::Invalid);
                }
                return self.decode(token, &key.key, key.alg);
            }
        }
        let unnamed = jwks.as_ref().map(|s| s.unnamed()).unwrap_or_default();
        let candidates = self
            .pems
            .iter()
            .chain(unnamed.iter().map(|k| k.as_ref()))
            .filter(|k| k.alg == header.alg);
        for key in candidates {
            match self.decode(token, &key.key, key.alg) {
                Err(AuthError::Invalid) => continue,
                decided => return decided,
            }
        }
        if header.kid.is_some() && self.jwks.is_some() {
            Err(AuthError::UnknownKey)
        } else {
            Err(AuthError::Invalid)
        }
    }

    /// The caller and the token's `exp`.
    fn decode(
        &self,
        token: &str,
        key: &DecodingKey,
        alg: Algorithm,
    ) -> Result<(Identity, u64), AuthError> {
        let validation = self.rules.validation(alg).ok_or(AuthError::Invalid)?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        let subject = claims
            .get(&self.rules.customer_claim)
            .and_then(Value::as_str)
            .and_then(|s| CustomerId::parse(s.to_string()))
            .ok_or(AuthError::BadSubject)?;
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let identity = Identity {
            subject,
            role: role_of(claims.get(&self.rules.role_claim)),
        };
        Ok((identity, exp))
    }

    /// Mints an HS256 token valid for `ttl_secs` from now.
    pub fn issue(
        &self,
        sub: &str,
        role: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let Some((key, _)) = &self.hs256 else {
            return Err(ErrorKind::InvalidKeyFormat.into());
        };
        sign(&Header::new(Algorithm::HS256), sub, role, ttl_secs, key)
    }
}

/// The role claim: a string, or a list of strings (as many identity
/// services give roles); admin wins over service, anything else is a
/// customer.
fn role_of(claim: Option<&Value>) -> Role {
    let has = |name: &str| match claim {
        Some(Value::String(s)) => s == name,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(name)),
        _ => false,
    };
    if has("admin") {
        Role::Admin
    } else if has("service") {
        Role::Service
    } else {
        Role::Customer
    }
}

fn load_public_pem(path: &str) -> Result<(Algorithm, DecodingKey), String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read it ({e})"))?;
    keys::public_from_pem(&text)
}

/// Signs `sub`, `exp` (now + `ttl_secs`) and `role` with `key` under `header`.
pub fn sign(
    header: &Header,
    sub: &str,
    role: Option<&str>,
    ttl_secs: u64,
    key: &EncodingKey,
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
    let claims = Claims {
        sub,
        exp: now.saturating_add(ttl_secs),
        role,
    };
    jsonwebtoken::encode(header, &claims, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&SecretString::from("a-test-secret-of-enough-length"))
    }

    #[tokio::test]
    async fn round_trip_and_roles() {
        let a = auth();
        let id = a.verify(&a.issue("c1", None, 60).unwrap()).await.unwrap();
        assert_eq!(id.subject.as_str(), "c1");
        assert_eq!(id.role, Role::Customer);
        let ops = a.issue("ops", Some("admin"), 60).unwrap();
        assert!(a.verify(&ops).await.unwrap().is_admin());
        let shop = a.issue("shop", Some("service"), 60).unwrap();
        assert!(a.verify(&shop).await.unwrap().is_service());
    }

    #[tokio::test]
    async fn rejects_other_secrets_and_alg_none() {
        let a = auth();
        let other = Auth::new(&SecretString::from("another-secret-of-enough-length"));
        let forged = other.issue("c1", None, 60).unwrap();
        assert_eq!(a.verify(&forged).await.unwrap_err(), AuthError::Invalid);
        // {"alg":"none"} . {"sub":"c1","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJjMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(a.verify(none).await.is_err());
        assert!(a.verify(&"a".repeat(MAX_TOKEN_BYTES + 1)).await.is_err());
    }

    #[test]
    fn roles_from_strings_and_lists() {
        assert_eq!(role_of(Some(&Value::from("service"))), Role::Service);
        assert_eq!(
            role_of(Some(&serde_json::json!(["buyer", "admin"]))),
            Role::Admin
        );
        assert_eq!(role_of(Some(&Value::from(7))), Role::Customer);
        assert_eq!(role_of(None), Role::Customer);
    }
}
