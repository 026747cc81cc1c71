//! `flashsale token`: a signed bearer token for tests and operators.

use crate::auth::Auth;
use crate::config::Settings;

/// `key`: a PEM private key file and an optional `kid`, instead of the
/// HS256 secret.
pub(super) fn token(
    settings: &Settings,
    sub: &str,
    role: Option<&str>,
    ttl: u64,
    key: Option<(&std::path::Path, Option<&str>)>,
) -> i32 {
    if !crate::domain::valid_customer_id(sub) {
        eprintln!("--sub must be 1 to 64 printable ASCII characters");
        return 2;
    }
    let signed = match key {
        Some((path, kid)) => {
            let text = match std::fs::read(path) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("--key {}: cannot read it: {e}", path.display());
                    return 2;
                }
            };
            let (alg, key) = match crate::auth::keys::signing_from_pem(&text) {
                Ok(k) => k,
                Err(why) => {
                    eprintln!("--key {}: {why}", path.display());
                    return 2;
                }
            };
            let mut header = jsonwebtoken::Header::new(alg);
            header.kid = kid.map(String::from);
            crate::auth::sign(&header, sub, role, ttl, &key)
        }
        None => match settings.auth.hs256_secret() {
            Some(secret) => Auth::new(&secret).issue(sub, role, ttl),
            None => {
                eprintln!("no HS256 secret: public keys are configured and `auth.jwt_secret` is not set (sign with --key FILE)");
                return 2;
            }
        },
    };
    match signed {
        Ok(t) => {
            println!("{t}");
            0
        }
        Err(e) => {
            eprintln!("cannot sign a token: {e}");
            2
        }
    }
}
