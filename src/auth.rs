//! Identity: HS256 bearer tokens with `sub` (the customer id), a required
//! `exp` and an optional `role`. Used by the API's extractors and by the
//! `token` command that mints tokens.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::domain::CustomerId;

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Who is calling.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: CustomerId,
    pub admin: bool,
}

/// Keys and validation rules, built once at start-up.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the token is expired")]
    Expired,
    #[error("the token is malformed or badly signed")]
    Invalid,
    #[error("the token's `sub` must be 1 to 64 printable characters")]
    BadSubject,
}

impl Auth {
    pub fn new(secret: &SecretString) -> Auth {
        let bytes = secret.expose_secret().as_bytes();
        // Only HS256: a token naming another algorithm (`none` included) fails.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.leeway = 5;
        Auth {
            encoding: EncodingKey::from_secret(bytes),
            decoding: DecodingKey::from_secret(bytes),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })?;
        let claims = data.claims;
        let admin = claims.role.as_deref() == Some("admin");
        let subject = CustomerId::parse(claims.sub).ok_or(AuthError::BadSubject)?;
        Ok(Identity { subject, admin })
    }

    /// Mints a token valid for `ttl_secs` from now.
    pub fn issue(
        &self,
        sub: &str,
        role: Option<&str>,
        ttl_secs: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
        let claims = Claims {
            sub: sub.to_string(),
            exp: now.saturating_add(ttl_secs),
            role: role.map(String::from),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(&SecretString::from("a-test-secret-of-enough-length"))
    }

    #[test]
    fn round_trip_and_roles() {
        let a = auth();
        let id = a.verify(&a.issue("c1", None, 60).unwrap()).unwrap();
        assert_eq!(id.subject.as_str(), "c1");
        assert!(!id.admin);
        assert!(
            a.verify(&a.issue("ops", Some("admin"), 60).unwrap())
                .unwrap()
                .admin
        );
    }

    #[test]
    fn rejects_other_secrets_and_alg_none() {
        let a = auth();
        let other = Auth::new(&SecretString::from("another-secret-of-enough-length"));
        assert!(a.verify(&other.issue("c1", None, 60).unwrap()).is_err());
        // {"alg":"none"} . {"sub":"c1","exp":9999999999} . (no signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJjMSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(a.verify(none).is_err());
    }
}
