//! Events for the store, in the Standard Webhooks form
//! (standardwebhooks.com): the event types, an endpoint's signing secret,
//! the signature of one attempt, and the secret sealed at rest with
//! `webhooks.secret_key`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, OsRng};
use chacha20poly1305::{AeadCore, ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every event type, as the contract names them.
pub const EVENT_TYPES: [&str; 4] = [
    "reservation.confirmed",
    "reservation.expired",
    "reservation.released",
    "sale.sold_out",
];

/// Whether `t` is one of [`EVENT_TYPES`].
pub fn is_event_type(t: &str) -> bool {
    EVENT_TYPES.contains(&t)
}

/// The random bytes of a new secret: 32, above the specification's 24.
const SECRET_BYTES: usize = 32;
const PREFIX: &str = "whsec_";

/// An endpoint's signing key, as the receiver holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    pub fn generate() -> Secret {
        use chacha20poly1305::aead::rand_core::RngCore;
        let mut b = vec![0u8; SECRET_BYTES];
        OsRng.fill_bytes(&mut b);
        Secret(b)
    }

    pub fn from_bytes(b: Vec<u8>) -> Secret {
        Secret(b)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// `whsec_` + base64: what the store's receiver is given, once.
    pub fn reveal(&self) -> String {
        format!("{PREFIX}{}", B64.encode(&self.0))
    }

    /// The stored form: sealed with `key` when one is configured, else the
    /// bytes themselves. Returns the bytes and whether they are sealed.
    pub fn seal(&self, key: Option<&[u8; 32]>) -> (Vec<u8>, bool) {
        let Some(key) = key else {
            return (self.0.clone(), false);
        };
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key));
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        match cipher.encrypt(&nonce, self.0.as_slice()) {
            Ok(ct) => {
                let mut out = nonce.to_vec();
                out.extend_from_slice(&ct);
                (out, true)
            }
            // Encryption fails only on inputs of gigabytes.
            Err(_) => (self.0.clone(), false),
        }
    }

    /// The secret back from its stored form.
    pub fn open(key: Option<&[u8; 32]>, stored: &[u8], sealed: bool) -> Result<Secret, SealError> {
        if !sealed {
            return Ok(Secret(stored.to_vec()));
        }
        let key = key.ok_or(SealError::NoKey)?;
        if stored.len() < 12 {
            return Err(SealError::Corrupt);
        }
        let (nonce, ct) = stored.split_at(12);
        ChaCha20Poly1305::new(Key::from_slice(key))
            .decrypt(Nonce::from_slice(nonce), ct)
            .map(Secret)
            .map_err(|_| SealError::Corrupt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the secret is sealed and `webhooks.secret_key` is not set")]
    NoKey,
    #[error(
        "the sealed secret does not open with `webhooks.secret_key` (another key, or damaged)"
    )]
    Corrupt,
}

/// The `webhook-signature` header of one attempt: `v1,<base64 HMAC-SHA256>`
/// of `{id}.{timestamp}.{body}` per secret, space-separated (two during a
/// rotation's grace period).
pub fn signature(secrets: &[&Secret], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut out = String::new();
    for secret in secrets {
        // HMAC takes a key of any length.
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&secret.0) else {
            continue;
        };
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        out.push_str(&B64.encode(mac.finalize().into_bytes()));
    }
    out
}

/// Whether an endpoint may be reached at `ip` without
/// `webhooks.allow_private_networks`: a public unicast address. Refused:
/// loopback, private (RFC 1918), shared (100.64/10), link-local,
/// unspecified, multicast, broadcast, documentation, unique-local (fc00::/7)
/// and the IPv4-mapped or -compatible forms of any of them.
pub fn public_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4() {
                // ::ffff:a.b.c.d and the deprecated ::a.b.c.d reach IPv4.
                return public_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_unicast_addresses_are_public() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "ff02::1",
        ] {
            let ip: std::net::IpAddr = bad
                .parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            assert!(!public_address(ip), "{bad} passed as public");
        }
        for good in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
            "100.128.0.1",
        ] {
            let ip: std::net::IpAddr = good
                .parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
            assert!(public_address(ip), "{good} refused");
        }
    }

    /// The specification's own example (standard-webhooks spec, "Verifying
    /// signatures"): this secret, id, timestamp and body sign to this value.
    #[test]
    fn signs_the_specifications_example() {
        let secret = Secret(
            B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap_or_default(),
        );
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&[&secret], "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn two_secrets_sign_twice_and_a_changed_body_signs_otherwise() {
        let (a, b) = (Secret::generate(), Secret::generate());
        let both = signature(&[&a, &b], "e", 1, b"{}");
        let parts: Vec<&str> = both.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], signature(&[&a], "e", 1, b"{}"));
        assert_ne!(parts[0], signature(&[&a], "e", 1, b"{ }"));
    }

    #[test]
    fn sealed_secrets_open_only_with_their_key() {
        let key = [7u8; 32];
        let s = Secret::generate();
        let (stored, sealed) = s.seal(Some(&key));
        assert!(sealed);
        assert_ne!(stored, s.0);
        assert_eq!(Secret::open(Some(&key), &stored, true), Ok(s.clone()));
        assert_eq!(
            Secret::open(Some(&[8u8; 32]), &stored, true),
            Err(SealError::Corrupt)
        );
        assert_eq!(Secret::open(None, &stored, true), Err(SealError::NoKey));
        let (plain, sealed) = s.seal(None);
        assert!(!sealed);
        assert_eq!(Secret::open(None, &plain, false), Ok(s.clone()));
        assert!(s.reveal().starts_with("whsec_"));
    }
}
