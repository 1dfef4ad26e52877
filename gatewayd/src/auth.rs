//! JWT verification (DESIGN section 7).
//!
//! Pitfalls handled: the algorithm comes from the configured key, never from the token alone
//! (`alg: none` and algorithm confusion are refused); `exp` is required; issuer and audience
//! are checked when configured; leeway is small and bounded. Tokens and their errors never
//! carry the token text, so nothing here can leak one into a log.

use crate::config::{AuthConfig, JwtKeyConfig};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::str::FromStr;
use std::sync::Arc;

/// Why a token was refused. The `Display` text is safe to send to the client.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("token is missing")]
    Missing,
    #[error("token is malformed")]
    Malformed,
    #[error("token algorithm is not accepted")]
    Algorithm,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token has no exp claim")]
    MissingExp,
    #[error("token audience is not accepted")]
    Audience,
    #[error("token issuer is not accepted")]
    Issuer,
    #[error("no verification key is configured")]
    NoKeys,
}

impl AuthError {
    /// A stable machine-readable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "token_missing",
            AuthError::Expired => "token_expired",
            AuthError::Audience | AuthError::Issuer => "token_not_accepted",
            _ => "token_invalid",
        }
    }
}

#[derive(Clone)]
struct Key {
    /// Identity across reloads: algorithm, kid and a digest of the key material.
    id: String,
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
    /// A key removed from the config by a reload is still accepted until then.
    retire_at: Option<std::time::Instant>,
}

/// Verifies tokens against the configured keys (and signs plugin-issued ones, see
/// [`JwtVerifier::issue`]).
pub struct JwtVerifier {
    keys: Vec<Key>,
    signer: Option<crate::auth_signing::Signer>,
    /// Audiences of plugin-issued tokens and the plugin each belongs to
    /// (`capabilities.issue`).
    issued: std::collections::BTreeMap<String, String>,
}

/// The verifier in use, replaceable on config reload (key rotation).
pub struct Keys(parking_lot::RwLock<Arc<JwtVerifier>>);

impl Keys {
    pub fn new(verifier: JwtVerifier) -> Keys {
        Keys(parking_lot::RwLock::new(Arc::new(verifier)))
    }

    /// Verify with the current keys, for `plugin` (see [`JwtVerifier::verify`]).
    pub fn verify(&self, token: &str, plugin: Option<&str>) -> Result<Map<String, Value>, AuthError> {
        let verifier = self.0.read().clone();
        verifier.verify(token, plugin)
    }

    /// Sign plugin-issued claims with `[auth.signing]` (see [`JwtVerifier::issue`]).
    pub fn issue(&self, claims: Map<String, Value>, ttl_secs: u32, audience: &str) -> Result<String, String> {
        let verifier = self.0.read().clone();
        verifier.issue(claims, ttl_secs, audience)
    }

    /// Switch to the keys of `config`. Keys the new config no longer lists stay accepted for
    /// `config.rotation_overlap_secs`, so tokens signed with them keep working during a rotation.
    pub fn rotate(&self, config: &AuthConfig) -> anyhow::Result<()> {
        let mut next = JwtVerifier::new(config)?;
        let retire_at = std::time::Instant::now() + std::time::Duration::from_secs(config.rotation_overlap_secs);
        let now = std::time::Instant::now();
        let current = self.0.read().clone();
        for old in &current.keys {
            let still_configured = next.keys.iter().any(|k| k.id == old.id);
            let still_retiring = old.retire_at.is_none_or(|t| t > now);
            if !still_configured && still_retiring && config.rotation_overlap_secs > 0 {
                let mut k = old.clone();
                k.retire_at = Some(old.retire_at.unwrap_or(retire_at).min(retire_at));
                next.keys.push(k);
            }
        }
        *self.0.write() = Arc::new(next);
        Ok(())
    }
}
pub use crate::auth_signing::check_signing_config;

/// Check one key's configuration without loading secrets from the environment.
pub fn check_key_config(k: &JwtKeyConfig) -> Result<(), String> {
    let alg = Algorithm::from_str(&k.algorithm).map_err(|_| format!("algorithm `{}` is not supported", k.algorithm))?;
    let hmac = matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512);
    match (hmac, &k.secret, &k.secret_env, &k.public_key_file) {
        (true, Some(s), None, None) if s.len() < 16 => Err("secret must be at least 16 bytes".into()),
        (true, Some(_), None, None) | (true, None, Some(_), None) => Ok(()),
        (true, ..) => Err(format!("{} needs exactly one of `secret` or `secret_env`", k.algorithm)),
        (false, None, None, Some(_)) => Ok(()),
        (false, ..) => Err(format!("{} needs `public_key_file` (and no secret)", k.algorithm)),
    }
}

impl JwtVerifier {
    /// Load keys (secrets from the environment, PEM files from disk).
    pub fn new(config: &AuthConfig) -> anyhow::Result<JwtVerifier> {
        let mut keys = Vec::new();
        for (i, k) in config.keys.iter().enumerate() {
            check_key_config(k).map_err(|e| anyhow::anyhow!("auth.keys[{i}]: {e}"))?;
            let algorithm = Algorithm::from_str(&k.algorithm).expect("checked above");
            let material: Vec<u8>;
            let key = if let Some(secret) = &k.secret {
                material = secret.as_bytes().to_vec();
                DecodingKey::from_secret(secret.as_bytes())
            } else if let Some(var) = &k.secret_env {
                let secret =
                    std::env::var(var).map_err(|_| anyhow::anyhow!("auth.keys[{i}].secret_env: ${var} is not set"))?;
                if secret.len() < 16 {
                    anyhow::bail!("auth.keys[{i}].secret_env: ${var} must hold at least 16 bytes");
                }
                material = secret.as_bytes().to_vec();
                DecodingKey::from_secret(secret.as_bytes())
            } else {
                let path = k.public_key_file.as_ref().expect("checked above");
                let pem = std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("auth.keys[{i}].public_key_file: {}: {e}", path.display()))?;
                let parsed = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                };
                material = pem.clone();
                parsed.map_err(|e| anyhow::anyhow!("auth.keys[{i}].public_key_file: {}: {e}", path.display()))?
            };
            use sha2::Digest;
            let digest: String = sha2::Sha256::digest(&material).iter().take(8).map(|b| format!("{b:02x}")).collect();
            let id = format!("{}|{}|{digest}", k.algorithm, k.kid.as_deref().unwrap_or(""));
            let mut validation = Validation::new(algorithm);
            validation.leeway = config.leeway_secs;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            // A configured audience or issuer must be present, not just match when present.
            let mut required = vec!["exp"];
            match &config.audience {
                Some(aud) => {
                    // Plugin-issued audiences pass here and are checked in `verify`.
                    let accepted: Vec<&String> = std::iter::once(aud).chain(config.issued.keys()).collect();
                    validation.set_audience(&accepted);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            if let Some(iss) = &config.issuer {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            validation.set_required_spec_claims(&required);
            keys.push(Key { id, algorithm, kid: k.kid.clone(), key, validation, retire_at: None });
        }
        let signer = config.signing.as_ref().map(|k| crate::auth_signing::Signer::new(k, config)).transpose()?;
        Ok(JwtVerifier { keys, signer, issued: config.issued.clone() })
    }

    /// Sign `claims` with `[auth.signing]` for `ttl_secs` seconds, `aud` = `audience` (see
    /// `auth_signing`).
    pub fn issue(&self, claims: Map<String, Value>, ttl_secs: u32, audience: &str) -> Result<String, String> {
        match &self.signer {
            Some(s) => s.issue(claims, ttl_secs, audience),
            None => Err("signing_disabled: no [auth.signing] key is configured".into()),
        }
    }

    /// Verify `token` for `plugin` (the plugin serving the route, or asking with
    /// `auth.verify`) and return its claims. A token whose `aud` is a plugin-issued audience is
    /// accepted only for that plugin ([`AuthError::Audience`] otherwise).
    ///
    /// Keys are tried in config order among those whose algorithm equals the token header's
    /// (and whose `kid` matches, when both have one). The most specific failure is returned.
    pub fn verify(&self, token: &str, plugin: Option<&str>) -> Result<Map<String, Value>, AuthError> {
        let claims = self.verify_signature(token)?;
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        for aud in audiences {
            if let Some(owner) = self.issued.get(aud)
                && Some(owner.as_str()) != plugin
            {
                return Err(AuthError::Audience);
            }
        }
        Ok(claims)
    }

    fn verify_signature(&self, token: &str) -> Result<Map<String, Value>, AuthError> {
        if self.keys.is_empty() {
            return Err(AuthError::NoKeys);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
            _ => AuthError::Malformed,
        })?;
        let mut last = AuthError::Algorithm;
        let now = std::time::Instant::now();
        for k in &self.keys {
            if k.algorithm != header.alg || k.retire_at.is_some_and(|t| t <= now) {
                continue;
            }
            if let (Some(want), Some(got)) = (&k.kid, &header.kid)
                && want != got
            {
                continue;
            }
            match jsonwebtoken::decode::<Map<String, Value>>(token, &k.key, &k.validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidAudience => AuthError::Audience,
                        ErrorKind::InvalidIssuer => AuthError::Issuer,
                        ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::MissingExp,
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
                        ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                        _ => AuthError::Malformed,
                    };
                    // A signature failure may just mean "another key": keep trying.
                    if last != AuthError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// Where a request carried its token (DESIGN section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=<jwt>`
    Query,
    /// `Authorization: Bearer <jwt>`
    AuthorizationHeader,
    /// `Sec-WebSocket-Protocol: Bearer, <jwt>`; the response must select `Bearer`.
    WebSocketProtocol,
}

/// Find the token of a request: query `token`, then `Authorization: Bearer`, then
/// `Sec-WebSocket-Protocol: Bearer, <jwt>`.
pub fn extract_token<'a>(
    query: &'a [(String, String)],
    headers: &'a hyper::HeaderMap,
) -> Option<(String, TokenSource)> {
    if let Some((_, t)) = query.iter().find(|(k, _)| k == "token") {
        return Some((t.clone(), TokenSource::Query));
    }
    if let Some(v) = headers.get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some(t) = v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))
    {
        return Some((t.trim().to_string(), TokenSource::AuthorizationHeader));
    }
    for v in headers.get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL) {
        let Ok(v) = v.to_str() else { continue };
        let mut parts = v.split(',').map(str::trim);
        if parts.next().is_some_and(|p| p.eq_ignore_ascii_case("bearer"))
            && let Some(t) = parts.next().filter(|t| !t.is_empty())
        {
            return Some((t.to_string(), TokenSource::WebSocketProtocol));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(audience: Option<&str>) -> JwtVerifier {
        JwtVerifier::new(&AuthConfig {
            keys: vec![JwtKeyConfig {
                algorithm: "HS256".into(),
                secret: Some(SECRET.into()),
                secret_env: None,
                public_key_file: None,
                kid: None,
            }],
            issuer: None,
            audience: audience.map(str::to_string),
            leeway_secs: 5,
            rotation_overlap_secs: 0,
            signing: None,
            issued: Default::default(),
        })
        .unwrap()
    }

    fn token(claims: Value, secret: &str) -> String {
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn accepts_good_and_refuses_bad_tokens() {
        let v = verifier(Some("gw"));
        let good = token(json!({"user_id": 7, "exp": now() + 60, "aud": "gw"}), SECRET);
        assert_eq!(v.verify(&good, None).unwrap()["user_id"], json!(7));
        let expired = token(json!({"exp": now() - 600, "aud": "gw"}), SECRET);
        assert_eq!(v.verify(&expired, None), Err(AuthError::Expired));
        let wrong_key = token(json!({"exp": now() + 60, "aud": "gw"}), "another-secret-of-32-bytes-xxxxx");
        assert_eq!(v.verify(&wrong_key, None), Err(AuthError::Signature));
        let wrong_aud = token(json!({"exp": now() + 60, "aud": "other"}), SECRET);
        assert_eq!(v.verify(&wrong_aud, None), Err(AuthError::Audience));
        let no_exp = token(json!({"aud": "gw"}), SECRET);
        assert_eq!(v.verify(&no_exp, None), Err(AuthError::MissingExp));
        let no_aud = token(json!({"exp": now() + 60}), SECRET);
        assert_eq!(v.verify(&no_aud, None), Err(AuthError::Audience));
    }

    #[test]
    fn refuses_alg_none() {
        // {"alg":"none","typ":"JWT"} . {"exp": far future} . (empty signature)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQxMDI0NDQ4MDB9.";
        assert!(matches!(verifier(None).verify(none, None), Err(AuthError::Algorithm | AuthError::Malformed)));
    }
}
