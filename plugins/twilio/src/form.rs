//! `application/x-www-form-urlencoded` bodies: Twilio's webhooks (telephony.md section 5,
//! "Incoming Call Webhook"; the status callback).

/// The decoded `name=value` pairs of a form body, in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Form(pub Vec<(String, String)>);

impl Form {
    /// Decode `body` (the WHATWG `application/x-www-form-urlencoded` parser of the
    /// `form_urlencoded` crate: `+` is a space, `%XX` a byte, invalid UTF-8 becomes U+FFFD, a
    /// malformed `%` stays as it is).
    pub(crate) fn parse(body: &[u8]) -> Form {
        Form(form_urlencoded::parse(body).into_owned().collect())
    }

    /// The first value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, trimmed, when it is not empty.
    pub(crate) fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_twilio_voice_webhook_body_decodes() {
        let body = b"AccountSid=AC123&CallSid=CA42&From=%2B14158675309&To=%2B18005551212&CallStatus=ringing&Direction=inbound&CallerName=Jane+Doe";
        let form = Form::parse(body);
        assert_eq!(form.get("CallSid"), Some("CA42"));
        assert_eq!(form.get("From"), Some("+14158675309"));
        assert_eq!(form.get("To"), Some("+18005551212"));
        assert_eq!(form.get("CallerName"), Some("Jane Doe"));
        assert_eq!(form.get("Missing"), None);
    }

    #[test]
    fn odd_bodies_decode_without_failing() {
        let form = Form::parse(b"a=1&&b&c=x%2&d=%zz&e=%C3%A9&f=%FF&a=2&g=1=2");
        assert_eq!(form.get("a"), Some("1"));
        assert_eq!(form.get("b"), Some(""));
        assert_eq!(form.get("c"), Some("x%2"));
        assert_eq!(form.get("d"), Some("%zz"));
        assert_eq!(form.get("e"), Some("é"));
        assert_eq!(form.get("f"), Some("\u{FFFD}"));
        assert_eq!(form.get("g"), Some("1=2"));
        assert_eq!(form.non_empty("b"), None);
        assert_eq!(Form::parse(b""), Form::default());
    }
}
