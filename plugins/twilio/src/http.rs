//! The HTTP endpoints (brief, "URLs"): Twilio's webhooks (telephony.md section 3 "When Phone
//! Call Arrives", section 5 "Twilio Integration"), the REST reads of calls and their messages,
//! and the dashboard page. Errors are `{"error": code, "message": text}` with a 4xx/5xx status.
//!
//! - `POST /api/telephony/twilio/voice` -> TwiML `<Connect><Stream>` (or `<Reject/>`).
//! - `POST /api/telephony/twilio/status` -> 204, 404 `call_not_found`.
//! - `GET /api/telephony/calls[?status=active|incoming|answered|in_progress|ended&limit=n]`
//!   -> `{"calls": [...]}`, newest first, the calls of the agent's businesses.
//! - `GET /api/telephony/calls/{call_id}/messages[?after=id&limit=n]` -> `{"call_id", "messages": [...]}`.
//! - `GET /api/telephony/dashboard` -> the agent dashboard page (no token needed for the page).
//!
//! The webhooks are served only with the header the daemon adds after checking Twilio's
//! signature (`x-gatewayd-public-base-url`, routes with `twilio_signature = true`): 403
//! `forbidden` without it. The REST reads need an agent's token: 401 `unauthorized` without
//! one, 403 `forbidden` when it names no agent.

use crate::calls::{self, EndedBy};
use crate::config::Config;
use crate::db::{self, CallFilter, NewCall};
use crate::form::Form;
use crate::identity::{Agent, Denied};
use crate::messages::ErrorCode;
use crate::{messages, time, twiml};
use gatewayd_plugin::{HttpRequest, HttpResponse, http, log};
use serde_json::json;

/// The agent dashboard page (plain HTML and JavaScript).
pub(crate) const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

/// Header the daemon adds to a request whose Twilio signature it checked: the public base URL.
pub(crate) const PUBLIC_BASE_URL_HEADER: &str = "x-gatewayd-public-base-url";

/// Twilio `CallStatus` values that end a call (status callback).
const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// Calls listed by default, and at most.
const CALLS_PAGE: u32 = 100;
const CALLS_PAGE_MAX: u32 = 500;
/// Messages listed by default, and at most.
const MESSAGES_PAGE: u32 = 500;
const MESSAGES_PAGE_MAX: u32 = 1000;

type Reply = Result<HttpResponse, HttpResponse>;

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    http::json(status, &json!({"error": code, "message": message}))
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    log::error(&format!("twilio: {e}"));
    error(500, "internal_error", "the request could not be completed")
}

fn twiml_response(body: String) -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![("content-type".into(), twiml::CONTENT_TYPE.into()), ("cache-control".into(), "no-store".into())],
        body: body.into_bytes(),
    }
}

/// Route a request.
pub(crate) fn handle(req: HttpRequest) -> HttpResponse {
    let path = req.path.clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let result = match (req.method.as_str(), segments.as_slice()) {
        ("POST", ["api", "telephony", "twilio", "voice"]) => voice(&req),
        ("POST", ["api", "telephony", "twilio", "status"]) => status_callback(&req),
        ("GET", ["api", "telephony", "calls"]) => list_calls(&req),
        ("GET", ["api", "telephony", "calls", call_id, "messages"]) => call_messages(&req, call_id),
        ("GET" | "HEAD", ["api", "telephony", "dashboard"]) => Ok(dashboard_page(req.method == "HEAD")),
        (
            _,
            ["api", "telephony", "twilio", "voice" | "status"]
            | ["api", "telephony", "calls" | "dashboard"]
            | ["api", "telephony", "calls", _, "messages"],
        ) => Err(error(405, "method_not_allowed", &format!("{} is not allowed on {path}", req.method))),
        _ => Err(error(404, "not_found", &format!("no endpoint {}", db::clip(&path, 200)))),
    };
    result.unwrap_or_else(|e| e)
}

fn config() -> Result<Config, HttpResponse> {
    Config::load().map_err(internal)
}

/// The public base URL the daemon vouches for; 403 when the request did not come through a
/// route that checks Twilio's signature.
fn signed(req: &HttpRequest) -> Result<&str, HttpResponse> {
    req.header(PUBLIC_BASE_URL_HEADER).ok_or_else(|| {
        error(403, "forbidden", "Twilio webhooks are accepted only on a route with twilio_signature = true")
    })
}

/// The webhook form and its `CallSid` (400 without one, or one over `max_id_bytes`).
fn webhook_form(req: &HttpRequest, config: &Config) -> Result<(Form, String), HttpResponse> {
    let form = Form::parse(&req.body);
    let call_sid = form.non_empty("CallSid").ok_or_else(|| error(400, "invalid_request", "CallSid is required"))?;
    if call_sid.len() > config.max_id_bytes {
        return Err(error(400, "field_too_long", &format!("CallSid is longer than {} bytes", config.max_id_bytes)));
    }
    let call_sid = call_sid.to_string();
    Ok((form, call_sid))
}

/// `POST /api/telephony/twilio/voice`: record the call (once per `CallSid`) and connect it to
/// the media stream. The business is `business_numbers`' row for `To`, else the config's
/// `default_business`; without one, or when the business does not exist or has no
/// `tenant_id`, the call is rejected (`<Reject/>`) and logged. A new call is announced to the
/// business's dashboards (`call_status_update` `incoming`); a repeated webhook answers the same
/// TwiML and announces nothing.
fn voice(req: &HttpRequest) -> Reply {
    let base = signed(req)?;
    let config = config()?;
    let (form, call_sid) = webhook_form(req, &config)?;
    let stream_url = twiml::stream_url(base, &config.stream_path)
        .ok_or_else(|| internal(format!("{PUBLIC_BASE_URL_HEADER} is not an http(s) base URL: {base}")))?;
    if let Some(call) = db::call_by_sid(&call_sid).map_err(internal)? {
        return Ok(twiml_response(twiml::connect_stream(&stream_url, &call.call_id)));
    }
    let to = form.non_empty("To").unwrap_or_default();
    let from = form.non_empty("From").unwrap_or_default();
    let business = match db::business_for_number(to).map_err(internal)? {
        Some(b) => b,
        None => match &config.default_business {
            Some(b) => b.clone(),
            None => {
                log::warn(&format!("twilio: call {call_sid} to {to} rejected: no business has this number"));
                return Ok(twiml_response(twiml::reject()));
            }
        },
    };
    let call_id = uuid::Uuid::new_v4().to_string();
    let now = time::now_iso();
    let new = NewCall {
        call_id: &call_id,
        call_sid: &call_sid,
        customer_number: from,
        organization_number: to,
        business_id: &business,
        start_time: &now,
    };
    let Some((call, created)) = db::create_call(&new).map_err(internal)? else {
        log::error(&format!(
            "twilio: call {call_sid} to {to} rejected: business {business} does not exist or has no tenant_id"
        ));
        return Ok(twiml_response(twiml::reject()));
    };
    if created {
        log::info(&format!("twilio: call {} ({call_sid}) from {from} to {to} for {business}", call.call_id));
        let event = messages::call_incoming(&call.call_id, &call.customer_number, &call.organization_number, &now);
        calls::broadcast(&call.call_id, &call.business_id, &event);
    }
    Ok(twiml_response(twiml::connect_stream(&stream_url, &call.call_id)))
}

/// `POST /api/telephony/twilio/status`: `CallStatus` completed, busy, failed, no-answer or
/// canceled ends the call (`duration` = `CallDuration` when given), once; `failed` is first
/// reported to the call's dashboards as `TWILIO_ERROR` (with Twilio's `ErrorCode` and
/// `ErrorMessage` when given); other statuses change nothing. 204 on success, 404 `call_not_found` for an unknown `CallSid`.
fn status_callback(req: &HttpRequest) -> Reply {
    signed(req)?;
    let config = config()?;
    let (form, call_sid) = webhook_form(req, &config)?;
    let call = db::call_by_sid(&call_sid)
        .map_err(internal)?
        .ok_or_else(|| error(404, "call_not_found", &format!("no call with CallSid {call_sid}")))?;
    let status = form.non_empty("CallStatus").unwrap_or_default();
    if status == "failed" && call.status != "ended" {
        // Twilio could not carry the call (its `ErrorCode`/`ErrorMessage` say why when sent),
        // each cut to 256 characters: the message goes to every dashboard of the business.
        let why = [form.non_empty("ErrorCode"), form.non_empty("ErrorMessage")]
            .into_iter()
            .flatten()
            .map(|v| v.chars().take(256).collect::<String>())
            .collect::<Vec<_>>();
        let message = if why.is_empty() {
            "Twilio reports the call failed".to_string()
        } else {
            format!("Twilio reports the call failed: {}", why.join(" "))
        };
        calls::broadcast_error(&call.call_id, &call.business_id, ErrorCode::TwilioError, &message);
    }
    if FINAL_STATUSES.contains(&status) {
        let duration = form.non_empty("CallDuration").and_then(|d| d.parse::<i64>().ok()).filter(|d| *d >= 0);
        calls::end(&call, duration, EndedBy::Other).map_err(internal)?;
    }
    Ok(HttpResponse { status: 204, headers: Vec::new(), body: Vec::new() })
}

/// The agent behind the request's token.
fn agent(req: &HttpRequest) -> Result<Agent, HttpResponse> {
    let claims = req
        .claims
        .as_deref()
        .ok_or_else(|| error(401, "unauthorized", "an agent token is required (Authorization: Bearer <token>)"))?;
    Agent::from_claims(claims).map_err(|d| match d {
        Denied::NotAnAgent(why) => error(403, "forbidden", &format!("not an agent: {why}")),
        e @ Denied::Lookup(_) => internal(e),
    })
}

/// A positive integer query parameter, `default` when absent; 400 when not 1..=`max`.
fn page_param(req: &HttpRequest, name: &str, default: u32, max: u32) -> Result<u32, HttpResponse> {
    match req.query_param(name) {
        None | Some("") => Ok(default),
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| error(400, "invalid_request", &format!("`{name}` must be an integer from 1 to {max}"))),
    }
}

/// `GET /api/telephony/calls`.
fn list_calls(req: &HttpRequest) -> Reply {
    let agent = agent(req)?;
    let filter = match req.query_param("status") {
        None | Some("") => CallFilter::All,
        Some("active") => CallFilter::Active,
        Some(s) if db::STATUSES.contains(&s) => CallFilter::Status(s),
        Some(_) => {
            let message = "`status` must be active, incoming, answered, in_progress or ended";
            return Err(error(400, "invalid_request", message));
        }
    };
    let limit = page_param(req, "limit", CALLS_PAGE, CALLS_PAGE_MAX)?;
    let calls = db::calls(&agent.businesses, filter, limit).map_err(internal)?;
    let calls: Vec<_> = calls.iter().map(db::Call::to_json).collect();
    Ok(http::json(200, &json!({"calls": calls})))
}

/// `GET /api/telephony/calls/{call_id}/messages`: 404 `call_not_found` for a call that is not
/// one of the agent's businesses' (whether it exists or not).
fn call_messages(req: &HttpRequest, call_id: &str) -> Reply {
    let agent = agent(req)?;
    let config = config()?;
    let not_found = || error(404, "call_not_found", "call not found");
    if call_id.len() > config.max_id_bytes {
        return Err(not_found());
    }
    match db::call(call_id).map_err(internal)? {
        Some(call) if agent.may_access(&call.business_id) => {}
        _ => return Err(not_found()),
    }
    let after = match req.query_param("after") {
        None | Some("") => 0,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| error(400, "invalid_request", "`after` must be a message id (an integer >= 0)"))?,
    };
    let limit = page_param(req, "limit", MESSAGES_PAGE, MESSAGES_PAGE_MAX)?;
    let messages = db::messages(call_id, after, limit).map_err(internal)?;
    Ok(http::json(200, &json!({"call_id": call_id, "messages": messages})))
}

/// `GET /api/telephony/dashboard`: the page, never cached, never framed.
fn dashboard_page(head: bool) -> HttpResponse {
    HttpResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), "text/html; charset=utf-8".into()),
            ("cache-control".into(), "no-store".into()),
            ("x-content-type-options".into(), "nosniff".into()),
            ("x-frame-options".into(), "DENY".into()),
            ("referrer-policy".into(), "no-referrer".into()),
        ],
        body: if head { Vec::new() } else { DASHBOARD_HTML.as_bytes().to_vec() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, path: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            path: path.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Vec::new(),
            claims: None,
        }
    }

    #[test]
    fn unsigned_webhooks_are_refused_before_anything_else() {
        for path in ["/api/telephony/twilio/voice", "/api/telephony/twilio/status"] {
            let r = handle(request("POST", path));
            assert_eq!(r.status, 403, "{path}");
        }
    }

    #[test]
    fn unknown_paths_and_methods_are_404_and_405() {
        assert_eq!(handle(request("GET", "/api/telephony/nope")).status, 404);
        assert_eq!(handle(request("GET", "/api/telephony/twilio/voice")).status, 405);
        assert_eq!(handle(request("DELETE", "/api/telephony/calls/c1/messages")).status, 405);
        assert_eq!(handle(request("POST", "/api/telephony/dashboard")).status, 405);
    }

    #[test]
    fn rest_reads_need_a_token() {
        let r = handle(request("GET", "/api/telephony/calls"));
        assert_eq!(r.status, 401);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "unauthorized");
    }

    #[test]
    fn the_dashboard_page_is_served_as_html() {
        let r = handle(request("GET", "/api/telephony/dashboard"));
        assert_eq!(r.status, 200);
        assert!(r.headers.contains(&("content-type".into(), "text/html; charset=utf-8".into())));
        let page = String::from_utf8(r.body).unwrap();
        for id in ["id=\"token\"", "id=\"connect\"", "id=\"calls\"", "id=\"transcript\"", "id=\"reply\"", "id=\"send\""]
        {
            assert!(page.contains(id), "{id}");
        }
        assert!(handle(request("HEAD", "/api/telephony/dashboard")).body.is_empty());
    }
}
