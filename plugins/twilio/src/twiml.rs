//! TwiML answers to the voice webhook (telephony.md section 5 "Twilio Integration"):
//! `<Connect><Stream>` to the plugin's Media Streams route with the call's `call_id` as a
//! `<Parameter>` (Twilio refuses query strings in `<Stream url>`: error 31920), or `<Reject/>`.

/// `content-type` of a TwiML answer.
pub(crate) const CONTENT_TYPE: &str = "text/xml";

const XML_DECLARATION: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

/// `s` with the five XML special characters escaped (safe in text and in quoted attributes).
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// The Media Streams URL: the public base URL of the signed request (`http(s)://host[:port]`,
/// header `x-gatewayd-public-base-url`) with `ws`/`wss` for `http`/`https`, plus `path`.
/// `None` when `base` is not an http(s) URL or carries a query or fragment.
pub(crate) fn stream_url(base: &str, path: &str) -> Option<String> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = if let Some(rest) = base.strip_prefix("https://") {
        ("wss", rest)
    } else if let Some(rest) = base.strip_prefix("http://") {
        ("ws", rest)
    } else {
        return None;
    };
    if rest.is_empty() || rest.contains(['?', '#']) || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    Some(format!("{scheme}://{rest}{path}"))
}

/// `<Response><Connect><Stream url=...><Parameter name="call_id" value=.../></Stream></Connect></Response>`.
pub(crate) fn connect_stream(url: &str, call_id: &str) -> String {
    format!(
        r#"{XML_DECLARATION}<Response><Connect><Stream url="{}"><Parameter name="call_id" value="{}"/></Stream></Connect></Response>"#,
        escape(url),
        escape(call_id)
    )
}

/// `<Response><Reject/></Response>`: Twilio refuses the call (busy signal), no charge.
pub(crate) fn reject() -> String {
    format!("{XML_DECLARATION}<Response><Reject/></Response>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_special_characters_are_escaped() {
        assert_eq!(escape(r#"a&b<c>d"e'f"#), "a&amp;b&lt;c&gt;d&quot;e&apos;f");
        assert_eq!(escape("plain-ÿ"), "plain-ÿ");
    }

    #[test]
    fn the_stream_url_follows_the_public_scheme() {
        let path = "/api/telephony/twilio/media-stream";
        assert_eq!(
            stream_url("http://127.0.0.1:8000", path).unwrap(),
            "ws://127.0.0.1:8000/api/telephony/twilio/media-stream"
        );
        assert_eq!(
            stream_url("https://voice.example.com/", path).unwrap(),
            "wss://voice.example.com/api/telephony/twilio/media-stream"
        );
        assert_eq!(stream_url("ftp://x", path), None);
        assert_eq!(stream_url("https://", path), None);
        assert_eq!(stream_url("https://x?a=1", path), None);
    }

    #[test]
    fn connect_twiml_carries_the_call_id_as_a_parameter_not_a_query() {
        let twiml = connect_stream("wss://gw.example.com/media", "c&1");
        assert_eq!(
            twiml,
            r#"<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="wss://gw.example.com/media"><Parameter name="call_id" value="c&amp;1"/></Stream></Connect></Response>"#
        );
        assert_eq!(reject(), r#"<?xml version="1.0" encoding="UTF-8"?><Response><Reject/></Response>"#);
    }
}
