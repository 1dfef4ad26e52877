//! Twilio's request signature, the `X-Twilio-Signature` header (telephony.md section 3; the
//! algorithm of Twilio's helper libraries, `RequestValidator`).
//!
//! The signed text is the public URL Twilio requested (query included) followed, for a form
//! POST, by every parameter name in sorted order, each followed by its values, sorted, with
//! duplicates dropped (`name1value1name2value2...`). The header is
//! `base64(HMAC-SHA1(auth token, text))`. A request with a JSON body carries
//! `bodySHA256=<hex SHA-256 of the body>` in its URL and signs the URL alone. The Media Streams
//! WebSocket upgrade signs its `wss://` URL alone.
//!
//! Twilio may sign the URL with or without the scheme's default port (`:443`, `:80`), so both
//! forms are tried, as Twilio's libraries do. Comparison is constant-time (HMAC verification).
//! Errors are a plain `false`: nothing about the expected value reaches the caller.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Digest as _;

type HmacSha1 = Hmac<Sha1>;

/// The MAC over `url` and form `params` (name, value; any order, repeats allowed).
fn mac(auth_token: &str, url: &str, params: &[(String, String)]) -> HmacSha1 {
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(url.as_bytes());
    let mut pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    pairs.sort_unstable();
    pairs.dedup();
    for (k, v) in pairs {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    mac
}

/// The `X-Twilio-Signature` value for `url` and form `params` (what Twilio sends).
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    base64::engine::general_purpose::STANDARD.encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// True when `header` is the signature of `url` (with or without the scheme's default port)
/// and form `params`, under `auth_token`.
pub fn verify(auth_token: &str, url: &str, params: &[(String, String)], header: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header.trim()) else { return false };
    port_forms(url).iter().any(|u| mac(auth_token, u, params).verify_slice(&given).is_ok())
}

/// A request with a JSON (or other non-form) body: `url` must carry
/// `bodySHA256=<hex SHA-256 of body>` and `header` must sign the URL alone.
pub fn verify_body(auth_token: &str, url: &str, body: &[u8], header: &str) -> bool {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let hash = url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "bodySHA256").map(|(_, v)| v);
    let Some(hash) = hash else { return false };
    let actual: String = sha2::Sha256::digest(body).iter().map(|b| format!("{b:02x}")).collect();
    // Not secret: comparing a hash of what the client sent with what it claims.
    hash.eq_ignore_ascii_case(&actual) && verify(auth_token, url, &[], header)
}

/// What the daemon checks a `twilio_signature` route's requests with: the auth token and the
/// public base URL of `[twilio]` (Twilio signs the URL it requested, which behind a proxy or
/// a tunnel is not the one the daemon sees).
pub struct Signer {
    auth_token: String,
    /// `http(s)://host[:port]`, no trailing `/`.
    base: String,
}

/// Header of the plugin's request carrying `[twilio] public_base_url` on a signed route, so
/// the plugin can build URLs Twilio will call (the Media Stream's).
pub const PUBLIC_BASE_URL_HEADER: &str = "x-gatewayd-public-base-url";

impl Signer {
    /// A signer from `[twilio]`. Err: the token does not resolve, or a bad base URL.
    pub fn new(config: &crate::config::TwilioConfig) -> Result<Signer, String> {
        Ok(Signer { auth_token: config.resolve_token()?, base: config.base_url()?.to_string() })
    }

    /// The public base URL (`http(s)://host[:port]`).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// An HTTP webhook: `path_and_query` as requested, a form body's parameters (any other
    /// body is bound by `bodySHA256` in the query), the `X-Twilio-Signature` header.
    pub fn check_http(&self, path_and_query: &str, form: bool, body: &[u8], header: Option<&str>) -> bool {
        let Some(header) = header else { return false };
        let url = format!("{}{path_and_query}", self.base);
        if form {
            let params: Vec<(String, String)> = url::form_urlencoded::parse(body).into_owned().collect();
            verify(&self.auth_token, &url, &params, header)
        } else if body.is_empty() {
            verify(&self.auth_token, &url, &[], header)
        } else {
            verify_body(&self.auth_token, &url, body, header)
        }
    }

    /// The Media Streams WebSocket upgrade: Twilio signs its `wss://` (`ws://` for an `http`
    /// base) URL alone.
    pub fn check_upgrade(&self, path_and_query: &str, header: Option<&str>) -> bool {
        let Some(header) = header else { return false };
        let ws_base = match self.base.strip_prefix("https://") {
            Some(rest) => format!("wss://{rest}"),
            None => format!("ws://{}", self.base.trim_start_matches("http://")),
        };
        verify(&self.auth_token, &format!("{ws_base}{path_and_query}"), &[], header)
    }
}

impl std::fmt::Debug for Signer {
    /// The token is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("base", &self.base).finish_non_exhaustive()
    }
}

/// `url` without its port and with the scheme's default port (`https`/`wss` 443,
/// `http`/`ws` 80); a URL with a non-default port keeps it in the second form.
fn port_forms(url: &str) -> [String; 2] {
    let Some((scheme, rest)) = url.split_once("://") else { return [url.to_string(), url.to_string()] };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // The port follows the last `:` that is not inside an IPv6 literal.
    let (host, port) = match hostport.rfind(':') {
        Some(i) if !hostport[i..].contains(']') && hostport[i + 1..].bytes().all(|c| c.is_ascii_digit()) => {
            (&hostport[..i], Some(&hostport[i + 1..]))
        }
        _ => (hostport, None),
    };
    let default = match scheme.to_ascii_lowercase().as_str() {
        "https" | "wss" => "443",
        "http" | "ws" => "80",
        _ => "",
    };
    let without = format!("{scheme}://{userinfo}{host}{tail}");
    let with = match port {
        Some(p) => format!("{scheme}://{userinfo}{host}:{p}{tail}"),
        None if default.is_empty() => without.clone(),
        None => format!("{scheme}://{userinfo}{host}:{default}{tail}"),
    };
    [without, with]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's published test vectors (twilio-python `tests/unit/test_request_validator.py`).
    const TOKEN: &str = "12345";
    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    fn params() -> Vec<(String, String)> {
        [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn twilio_test_vectors() {
        assert_eq!(signature(TOKEN, URL, &params()), "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
        assert_eq!(
            signature(TOKEN, "https://mycompany.com:443/myapp.php?foo=1&bar=2", &params()),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        assert_eq!(
            signature(TOKEN, "http://mycompany.com:1234/myapp.php?foo=1&bar=2", &params()),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        );
        assert_eq!(
            signature(TOKEN, "http://mycompany.com:80/myapp.php?foo=1&bar=2", &params()),
            "0ZXoZLH/DfblKGATFgpif+LLRf4="
        );
        let dup: Vec<(String, String)> =
            [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234"), ("Digits", "1234")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(signature(TOKEN, URL, &dup), "IK+Dwps556ElfBT0I3Rgjkr1wJU=");
    }

    #[test]
    fn verification_accepts_both_port_forms_and_nothing_else() {
        assert!(verify(TOKEN, URL, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        // Signed with :443, requested without (and the reverse).
        assert!(verify(TOKEN, URL, &params(), "kvajT1Ptam85bY51eRf/AJRuM3w="));
        assert!(verify(
            TOKEN,
            "https://mycompany.com:443/myapp.php?foo=1&bar=2",
            &params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(verify(
            TOKEN,
            "http://mycompany.com:1234/myapp.php?foo=1&bar=2",
            &params(),
            "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
        ));
        assert!(!verify("54321", URL, &params(), "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify(
            TOKEN,
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let mut tampered = params();
        tampered[2].1 = "1235".into();
        assert!(!verify(TOKEN, URL, &tampered, "RSOYDt4T1cUTdK1PDd93/VVr8B8="));
        assert!(!verify(TOKEN, URL, &params(), ""));
        assert!(!verify(TOKEN, URL, &params(), "not base64 at all"));
    }

    #[test]
    fn json_bodies_sign_the_url_with_the_body_hash() {
        let body = br#"{"property": "value", "boolean": true}"#;
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620";
        assert_eq!(signature(TOKEN, url, &[]), "a9nBmqA0ju/hNViExpshrM61xv4=");
        assert!(verify_body(TOKEN, url, body, "a9nBmqA0ju/hNViExpshrM61xv4="));
        assert!(!verify_body(TOKEN, url, b"{}", "a9nBmqA0ju/hNViExpshrM61xv4="));
        assert!(!verify_body(TOKEN, URL, body, "a9nBmqA0ju/hNViExpshrM61xv4="));
    }

    #[test]
    fn the_signer_checks_webhooks_and_upgrades_against_the_public_url() {
        let config = crate::config::TwilioConfig {
            auth_token: Some(TOKEN.into()),
            auth_token_env: None,
            public_base_url: "https://mycompany.com/".into(),
        };
        let signer = Signer::new(&config).unwrap();
        let body = b"CallSid=CA1234567890ABCDE&Caller=%2B14158675309&Digits=1234&From=%2B14158675309&To=%2B18005551212";
        let sig = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert!(signer.check_http("/myapp.php?foo=1&bar=2", true, body, Some(sig)));
        assert!(!signer.check_http("/myapp.php?foo=1&bar=2", true, body, None));
        assert!(!signer.check_http("/myapp.php?foo=1", true, body, Some(sig)));
        assert!(!signer.check_http("/myapp.php?foo=1&bar=2", true, &body[..body.len() - 1], Some(sig)));
        let ws_sig = signature(TOKEN, "wss://mycompany.com/stream", &[]);
        assert!(signer.check_upgrade("/stream", Some(&ws_sig)));
        assert!(!signer.check_upgrade("/stream2", Some(&ws_sig)));
        assert!(!format!("{signer:?}").contains(TOKEN));
    }

    #[test]
    fn port_forms_handle_userinfo_ipv6_and_odd_urls() {
        assert_eq!(port_forms("wss://h/x"), ["wss://h/x".to_string(), "wss://h:443/x".to_string()]);
        assert_eq!(
            port_forms("https://u:p@h:443?q"),
            ["https://u:p@h?q".to_string(), "https://u:p@h:443?q".to_string()]
        );
        assert_eq!(
            port_forms("http://[::1]:8080/a"),
            ["http://[::1]/a".to_string(), "http://[::1]:8080/a".to_string()]
        );
        assert_eq!(port_forms("http://[::1]/a"), ["http://[::1]/a".to_string(), "http://[::1]:80/a".to_string()]);
        assert_eq!(port_forms("nonsense"), ["nonsense".to_string(), "nonsense".to_string()]);
    }
}
