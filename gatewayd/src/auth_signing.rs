//! Tokens the daemon signs for plugins (`auth.issue`, e.g. chat visitor tokens).
//!
//! The key is `[auth.signing]`: an HMAC key (HS256/HS384/HS512, `secret` or `secret_env`).
//! The signer sets `exp` and `iat` itself and adds the `iss`/`aud` that `[auth]` requires, so an
//! issued token verifies with the daemon's verification keys, provided the same secret is also
//! one of `[[auth.keys]]` (config/gatewayd.toml shows both).

use crate::config::{AuthConfig, JwtKeyConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};
use std::str::FromStr;

/// Longest lifetime a plugin may ask for: one day.
pub const MAX_TTL_SECS: u32 = 86_400;

/// Claims the daemon sets on every issued token; a plugin may not.
pub const RESERVED_CLAIMS: [&str; 5] = ["exp", "iat", "nbf", "iss", "aud"];

/// Check `[auth.signing]` without reading the environment: an HMAC key with one secret.
pub fn check_signing_config(k: &JwtKeyConfig) -> Result<(), String> {
    let alg = Algorithm::from_str(&k.algorithm).map_err(|_| format!("algorithm `{}` is not supported", k.algorithm))?;
    if !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err("signing supports HS256, HS384 and HS512 only".into());
    }
    crate::auth::check_key_config(k)
}

/// Signs plugin-issued tokens.
pub struct Signer {
    header: Header,
    key: EncodingKey,
    issuer: Option<String>,
}

impl Signer {
    /// Load the signing key (the secret from the environment with `secret_env`).
    pub fn new(k: &JwtKeyConfig, auth: &AuthConfig) -> anyhow::Result<Signer> {
        check_signing_config(k).map_err(|e| anyhow::anyhow!("auth.signing: {e}"))?;
        let secret = match (&k.secret, &k.secret_env) {
            (Some(s), _) => s.clone(),
            (None, Some(var)) => {
                std::env::var(var).map_err(|_| anyhow::anyhow!("auth.signing.secret_env: ${var} is not set"))?
            }
            (None, None) => unreachable!("checked above"),
        };
        if secret.len() < 16 {
            anyhow::bail!("auth.signing: the secret must hold at least 16 bytes");
        }
        let mut header = Header::new(Algorithm::from_str(&k.algorithm).expect("checked above"));
        header.kid = k.kid.clone();
        Ok(Signer { header, key: EncodingKey::from_secret(secret.as_bytes()), issuer: auth.issuer.clone() })
    }

    /// Sign `claims` for `audience`, valid for `ttl_secs` (1..=[`MAX_TTL_SECS`]). `exp`,
    /// `iat`, `iss` and `aud` are set by the daemon ([`RESERVED_CLAIMS`] given by the caller are
    /// replaced or dropped).
    pub fn issue(&self, mut claims: Map<String, Value>, ttl_secs: u32, audience: &str) -> Result<String, String> {
        if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
            return Err(format!("bad_ttl: ttl-secs must be 1..={MAX_TTL_SECS}"));
        }
        claims.remove("nbf");
        let now = jsonwebtoken::get_current_timestamp();
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + u64::from(ttl_secs)).into());
        if let Some(iss) = &self.issuer {
            claims.insert("iss".into(), iss.clone().into());
        }
        claims.insert("aud".into(), audience.into());
        jsonwebtoken::encode(&self.header, &claims, &self.key).map_err(|e| format!("signing_failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::JwtVerifier;

    #[test]
    fn issued_tokens_verify_with_the_configured_keys() {
        let key = JwtKeyConfig {
            algorithm: "HS256".into(),
            secret: Some("0123456789abcdef0123456789abcdef".into()),
            secret_env: None,
            public_key_file: None,
            kid: None,
        };
        let config = AuthConfig {
            keys: vec![key.clone()],
            issuer: Some("gw".into()),
            audience: Some("chat".into()),
            leeway_secs: 0,
            signing: Some(key),
            rotation_overlap_secs: 0,
            issued: [("chat-visitor".to_string(), "chat".to_string())].into(),
        };
        let v = JwtVerifier::new(&config).unwrap();
        let mut claims = Map::new();
        claims.insert("exp".into(), 1.into());
        claims.insert("visitor_id".into(), "v1".into());
        let token = v.issue(claims, 60, "chat-visitor").unwrap();
        let back = v.verify(&token, Some("chat")).unwrap();
        assert_eq!(back["visitor_id"], "v1");
        assert_eq!(back["aud"], "chat-visitor");
        assert!(back["exp"].as_u64().unwrap() > jsonwebtoken::get_current_timestamp());
        // Only the issuing plugin accepts it: not another plugin, not a route of no plugin.
        assert_eq!(v.verify(&token, Some("signaling")), Err(crate::auth::AuthError::Audience));
        assert_eq!(v.verify(&token, None), Err(crate::auth::AuthError::Audience));
        assert!(v.issue(Map::new(), 0, "chat-visitor").is_err());
    }
}
