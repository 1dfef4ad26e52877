//! Named secrets (`secret_env`) and the headers of a plan: literal values or secret references
//! the host fills in, so a plugin names an API key without ever seeing it.

use super::OutboundError;
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// Most headers one plan may carry.
pub const MAX_PLAN_HEADERS: usize = 64;
/// Longest header value of a plan (after substitution), in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// A secret value (an API key). `Debug` and `Display` print `<redacted>`; the value is only
/// reachable through [`Secret::expose`], which the host calls when it builds a header.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wrap a value.
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Never log it or put it in an error.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A plugin's secrets by name (`secret_env = { api_key = "DEEPGRAM_API_KEY" }` gives `api_key`).
#[derive(Clone, Default)]
pub struct Secrets(BTreeMap<String, Secret>);

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.iter()).finish()
    }
}

impl Secrets {
    /// Read each `name -> VARIABLE` from the process environment. Errors: `(name, variable,
    /// why)` for the first variable that is unset, not UTF-8 or empty; the value never appears.
    pub fn from_env(vars: &BTreeMap<String, String>) -> Result<Secrets, (String, String, &'static str)> {
        let mut secrets = BTreeMap::new();
        for (name, var) in vars {
            let value = match std::env::var(var) {
                Ok(v) if v.is_empty() => return Err((name.clone(), var.clone(), "is empty")),
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => return Err((name.clone(), var.clone(), "is not set")),
                Err(std::env::VarError::NotUnicode(_)) => return Err((name.clone(), var.clone(), "is not UTF-8")),
            };
            secrets.insert(name.clone(), Secret::new(value));
        }
        Ok(Secrets(secrets))
    }

    /// The secret called `name`.
    pub fn get(&self, name: &str) -> Option<&Secret> {
        self.0.get(name)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every secret value replaced by `<redacted>` (a vendor's error body may echo
    /// the key it refused).
    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in self.0.values() {
            if !secret.expose().is_empty() {
                text = text.replace(secret.expose(), "<redacted>");
            }
        }
        text
    }
}

impl<N: Into<String>, V: Into<Arc<str>>> FromIterator<(N, V)> for Secrets {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Secrets(iter.into_iter().map(|(n, v)| (n.into(), Secret::new(v))).collect())
    }
}

/// One header of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header name (case-insensitive), e.g. `authorization`.
    pub name: String,
    /// Its value.
    pub value: HeaderValueSpec,
}

impl Header {
    /// A literal header.
    pub fn literal(name: &str, value: &str) -> Header {
        Header { name: name.into(), value: HeaderValueSpec::Literal(value.into()) }
    }

    /// A header whose value is `template` with its `{}` replaced by the secret `secret`.
    pub fn secret(name: &str, secret: &str, template: &str) -> Header {
        Header { name: name.into(), value: HeaderValueSpec::Secret { name: secret.into(), template: template.into() } }
    }
}

/// A header value as a plugin writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValueSpec {
    /// The value as is.
    Literal(String),
    /// `template` with its one `{}` replaced by the value of secret `name` (from the plugin's
    /// `secret_env`), e.g. `Token {}` or `Bearer {}` or just `{}`.
    Secret {
        /// The secret's name in `secret_env`.
        name: String,
        /// Text around the secret; exactly one `{}`.
        template: String,
    },
}

/// Whether a plugin may not set header `name` (lowercase): hop-by-hop headers, the ones the host
/// computes (`host`, `content-length`) and the WebSocket handshake's.
pub fn is_forbidden(name: &str) -> bool {
    const FORBIDDEN: [&str; 12] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    ];
    FORBIDDEN.contains(&name) || name.starts_with("sec-websocket-")
}

/// Build the header map of a plan, substituting secrets. Errors (`BadHeader`,
/// `UnknownSecret`) name the header and the secret, never a value.
pub(super) fn build_headers(secrets: &Secrets, headers: &[Header]) -> Result<HeaderMap, OutboundError> {
    if headers.len() > MAX_PLAN_HEADERS {
        return Err(OutboundError::BadHeader {
            name: String::new(),
            reason: format!("more than {MAX_PLAN_HEADERS} headers"),
        });
    }
    let mut map = HeaderMap::new();
    for h in headers {
        let bad = |reason: &str| OutboundError::BadHeader { name: h.name.clone(), reason: reason.into() };
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
        if is_forbidden(name.as_str()) {
            return Err(bad("set by the host, not by a plugin"));
        }
        let value = match &h.value {
            HeaderValueSpec::Literal(v) => HeaderValue::from_str(v).map_err(|_| bad("not a valid header value"))?,
            HeaderValueSpec::Secret { name: secret, template } => {
                let value = secrets.get(secret).ok_or_else(|| OutboundError::UnknownSecret { name: secret.clone() })?;
                let (before, after) = template.split_once("{}").ok_or_else(|| bad("template has no `{}`"))?;
                if after.contains("{}") {
                    return Err(bad("template has more than one `{}`"));
                }
                let text = format!("{before}{}{after}", value.expose());
                let mut value = HeaderValue::from_str(&text)
                    .map_err(|_| bad(&format!("secret `{secret}` does not make a valid header value")))?;
                value.set_sensitive(true);
                value
            }
        };
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(bad(&format!("value longer than {MAX_HEADER_VALUE_BYTES} bytes")));
        }
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Secrets {
        [("api_key", "s3cr3t-value")].into_iter().collect()
    }

    #[test]
    fn secret_is_substituted_into_its_template() {
        let map = build_headers(
            &secrets(),
            &[Header::secret("Authorization", "api_key", "Token {}"), Header::literal("x-model", "nova-3")],
        )
        .unwrap();
        assert_eq!(map["authorization"], "Token s3cr3t-value");
        assert!(map["authorization"].is_sensitive());
        assert_eq!(map["x-model"], "nova-3");
    }

    #[test]
    fn secrets_never_print() {
        let s = secrets();
        assert_eq!(format!("{s:?}"), r#"{"api_key": <redacted>}"#);
        assert_eq!(s.get("api_key").unwrap().to_string(), "<redacted>");
        assert_eq!(s.redact("bad key s3cr3t-value!"), "bad key <redacted>!");
    }

    #[test]
    fn host_owned_and_hop_by_hop_headers_are_refused() {
        for name in
            ["Host", "connection", "Upgrade", "Sec-WebSocket-Key", "sec-websocket-protocol", "TE", "Content-Length"]
        {
            let e = build_headers(&secrets(), &[Header::literal(name, "x")]).unwrap_err();
            assert_eq!(e.code(), "bad_header", "{name}");
        }
    }

    #[test]
    fn bad_references_and_templates_are_errors_without_the_value() {
        let e = build_headers(&secrets(), &[Header::secret("authorization", "other", "{}")]).unwrap_err();
        assert_eq!(e.to_string(), "unknown secret `other`");
        for template in ["Token", "{} {}"] {
            let e = build_headers(&secrets(), &[Header::secret("authorization", "api_key", template)]).unwrap_err();
            assert_eq!(e.code(), "bad_header");
        }
        let newline: Secrets = [("k", "line\nbreak")].into_iter().collect();
        let e = build_headers(&newline, &[Header::secret("authorization", "k", "{}")]).unwrap_err().to_string();
        assert!(e.contains("secret `k`") && !e.contains("line"), "{e}");
    }
}
