//! The HTTP endpoints (chat.md "HTTP Endpoints", plus end-session and media). Errors are
//! `{"error": code, "message": text}` with a 4xx/5xx status; a per-IP window that is full
//! answers 429 with `Retry-After` (docs/protocols/chat.md "Quotas and bounds").

use crate::db::{self, Entry, NewSession};
use crate::identity::{Caller, visitor_claims};
use crate::limits::{self, RetryAfter};
use crate::settings::Settings;
use crate::upload;
use gatewayd_plugin::{HttpRequest, HttpResponse, files, http, tokens};
use serde::Deserialize;
use serde_json::{Value, json};

type Reply = Result<HttpResponse, HttpResponse>;

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    http::json(status, &json!({"error": code, "message": message}))
}

/// 429 with `Retry-After` (seconds) and the JSON error body.
fn too_many(retry: RetryAfter, code: &str, message: &str) -> HttpResponse {
    let mut r = error(429, code, message);
    r.headers.push(("retry-after".into(), retry.0.to_string()));
    r
}

/// 400 `field_too_long` when `value` is longer than `max` bytes.
fn bounded(field: &str, value: &str, max: usize) -> Result<(), HttpResponse> {
    if value.len() > max {
        return Err(error(400, "field_too_long", &format!("`{field}` is longer than {max} bytes")));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> HttpResponse {
    gatewayd_plugin::log::error(&format!("chat: {e}"));
    error(500, "internal_error", "the request could not be completed")
}

/// Route a request. Paths are matched exactly as the spec writes them (trailing `/`).
pub fn handle(req: HttpRequest) -> HttpResponse {
    let path = req.path.clone();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // The spec's paths end with `/`; media URLs (generated names) do not.
    let slash = path.ends_with('/');
    let result = match (req.method.as_str(), segments.as_slice()) {
        (_, ["chat", "media", _]) if slash => Err(error(404, "not_found", &format!("no endpoint {path}"))),
        (_, ["chat", ..]) if !slash && segments.get(1) != Some(&"media") => {
            Err(error(404, "not_found", &format!("no endpoint {path} (paths end with /)")))
        }
        ("POST", ["chat", "start-session"]) => start_session(&req),
        ("POST", ["chat", "upload-file"]) => upload_file(req),
        ("GET", ["chat", "history", session_id]) => history(&req, session_id),
        ("POST", ["chat", "end-session", session_id]) => end_session(&req, session_id),
        ("GET", ["chat", "media", name]) => media(&req, name),
        (_, ["chat", "start-session" | "upload-file"] | ["chat", "history" | "end-session" | "media", _]) => {
            Err(error(405, "method_not_allowed", &format!("{} is not allowed on {path}", req.method)))
        }
        _ => Err(error(404, "not_found", &format!("no endpoint {path}"))),
    };
    result.unwrap_or_else(|e| e)
}

fn settings() -> Result<Settings, HttpResponse> {
    Settings::load().map_err(internal)
}

/// The authenticated caller: 401 without a token, 403 when it names nobody we know.
fn caller(req: &HttpRequest) -> Result<Caller, HttpResponse> {
    let claims =
        req.claims.as_deref().ok_or_else(|| error(401, "token_missing", "a visitor or agent token is required"))?;
    Caller::from_claims(claims).map_err(|d| error(403, "forbidden", &d.0))
}

/// The session `session_id`, if the caller may access it (404 / 403 otherwise).
fn accessible_session(caller: &Caller, session_id: &str) -> Result<db::Session, HttpResponse> {
    let not_found = || error(404, "session_not_found", &format!("no chat session {session_id}"));
    if uuid::Uuid::parse_str(session_id).is_err() {
        return Err(not_found());
    }
    let session = db::session(session_id).map_err(internal)?.ok_or_else(not_found)?;
    if !caller.may_access(&session.id, &session.business_id) {
        return Err(error(403, "forbidden", "this session belongs to another visitor or business"));
    }
    Ok(session)
}

#[derive(Deserialize)]
pub(crate) struct StartRequest {
    business: String,
    #[serde(default)]
    department: Option<String>,
    #[serde(default)]
    external_customer_id: Option<String>,
}

/// Decode the body of `POST /chat/start-session/`. Err: a client-facing reason.
pub(crate) fn parse_start_request(body: &[u8]) -> Result<StartRequest, String> {
    serde_json::from_slice(body).map_err(|e| format!("body must be JSON with `business`: {e}"))
}

/// `POST /chat/start-session/` (public). The visitor is recognised by `external_customer_id`
/// when given, else by the visitor token of an earlier start (Authorization: Bearer), else it
/// is a new guest. Returns the active session (existing or new) and a visitor token for it.
///
/// Every request counts against its client's window (`max_starts_per_ip` per
/// `start_ip_window_secs`, whatever its answer); once full: 429 `rate_limited` with
/// `Retry-After`. Ids longer than `max_id_bytes`: 400 `field_too_long`.
fn start_session(req: &HttpRequest) -> Reply {
    let settings = settings()?;
    let client = format!("start/{}", limits::client_key(req.client_ip()));
    limits::window_take(&client, limits::start_caps(&settings), 0, limits::now_ms()).map_err(|retry| {
        let message = format!(
            "too many sessions started from this address: at most {} per {} s",
            settings.max_starts_per_ip, settings.start_ip_window_secs
        );
        too_many(retry, "rate_limited", &message)
    })?;
    let body = parse_start_request(&req.body).map_err(|e| error(400, "invalid_request", &e))?;
    let business = body.business.trim();
    let department = body.department.as_deref().map(str::trim).filter(|d| !d.is_empty());
    let external = body.external_customer_id.as_deref().map(str::trim).filter(|d| !d.is_empty());
    if business.is_empty() {
        return Err(error(400, "invalid_request", "`business` is required"));
    }
    bounded("business", business, settings.max_id_bytes)?;
    bounded("department", department.unwrap_or(""), settings.max_id_bytes)?;
    bounded("external_customer_id", external.unwrap_or(""), settings.max_id_bytes)?;
    if !db::business_exists(business).map_err(internal)? {
        return Err(error(404, "business_not_found", &format!("no business {business}")));
    }
    if let Some(d) = department
        && !db::department_in_business(d, business).map_err(internal)?
    {
        return Err(error(404, "department_not_found", &format!("no department {d} in business {business}")));
    }
    let earlier_visitor = match req.claims.as_deref().map(Caller::from_claims) {
        Some(Ok(Caller::Visitor { visitor_id, .. })) => Some(visitor_id),
        _ => None,
    };
    let visitor_id = earlier_visitor.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let visitor_key = match external {
        Some(e) => format!("ext:{e}"),
        None => format!("guest:{visitor_id}"),
    };
    let new = NewSession {
        business_id: business,
        department_id: department,
        visitor_key: &visitor_key,
        visitor_id: &visitor_id,
        external_customer_id: external,
    };
    let (session, _created) = db::start_session(&new, &crate::now_rfc3339()).map_err(internal)?;
    let claims = visitor_claims(&session.visitor_id, &session.id, &session.business_id);
    let token = tokens::issue(&claims, settings.visitor_token_ttl_secs).map_err(internal)?;
    Ok(http::json(
        200,
        &json!({
            "message": "Chat session started successfully",
            "data": {
                "session_id": session.id,
                "active": true,
                "visitor_id": session.visitor_id,
                "token": token,
                "token_expires_in": settings.visitor_token_ttl_secs,
            }
        }),
    ))
}

/// `POST /chat/upload-file/` (visitor token or agent JWT).
///
/// Quotas (docs/protocols/chat.md "Quotas and bounds"): a session over `max_uploads_per_session`
/// files or `max_upload_bytes_per_session` bytes gets 403 `session_upload_quota`; a client over
/// `max_uploads_per_ip` / `max_upload_bytes_per_ip` in its `upload_ip_window_secs` gets 429
/// `upload_rate_limited` with `Retry-After`. An upload that is refused or fails counts nowhere,
/// and no file of it is kept.
fn upload_file(req: HttpRequest) -> Reply {
    let settings = settings()?;
    let caller = caller(&req)?;
    let content_type = req.header("content-type").unwrap_or("").to_string();
    let client = format!("upload/{}", limits::client_key(req.client_ip()));
    let form = upload::parse(&content_type, req.body).map_err(|e| error(400, "invalid_request", &e))?;
    for (field, value) in [
        ("session_id", &form.session_id),
        ("uploaded_by_end_user", &form.uploaded_by_end_user),
        ("uploaded_by_agent", &form.uploaded_by_agent),
        ("message", &form.message),
    ] {
        bounded(field, value.as_deref().unwrap_or(""), settings.max_id_bytes)?;
    }
    let session_id = match (&caller, form.session_id.as_deref()) {
        (Caller::Visitor { session_id, .. }, None) => session_id.clone(),
        (_, Some(s)) => s.to_string(),
        (Caller::Agent { .. }, None) => return Err(error(400, "invalid_request", "agents must send `session_id`")),
    };
    let session = accessible_session(&caller, &session_id)?;
    match (&caller, &form.uploaded_by_end_user, &form.uploaded_by_agent) {
        (Caller::Visitor { visitor_id, .. }, user, None) if user.as_ref().is_none_or(|u| u == visitor_id) => {}
        (Caller::Agent { agent_id, .. }, None, agent) if agent.as_ref().is_none_or(|a| a == agent_id) => {}
        _ => {
            return Err(error(403, "forbidden", "uploaded_by_end_user / uploaded_by_agent must name the caller"));
        }
    }
    if !session.active {
        return Err(error(409, "session_ended", crate::socket::SESSION_ENDED_ERROR));
    }
    let related = match form.message.as_deref() {
        None => None,
        Some(m) => match m.parse::<i64>() {
            Ok(seq) if db::message_exists(&session.id, seq).map_err(internal)? => Some(m.to_string()),
            _ => return Err(error(400, "unknown_message", &format!("no message {m} in this session"))),
        },
    };
    let (client_name, data) = form.file.ok_or_else(|| error(400, "invalid_request", "field `file` is required"))?;
    let client_name = match client_name.as_deref() {
        Some(n) => Some(
            upload::check_file_name(n, settings.max_file_name_bytes)
                .map_err(|e| error(400, "bad_file_name", &e))?
                .to_string(),
        ),
        None => None,
    };
    if data.is_empty() {
        return Err(error(400, "invalid_request", "the file is empty"));
    }
    let size = data.len() as u64;
    let quota = Quota::reserve(&settings, &session.id, &client, size)?;
    let stored = match files::put(&data) {
        Ok(stored) => stored,
        Err(e) => {
            quota.release();
            let code = e.split(':').next().unwrap_or("");
            return Err(match code {
                "too_large" => error(413, "file_too_large", &e),
                "unknown_type" | "type_not_allowed" => error(415, "unsupported_file_type", &e),
                "no_space" => {
                    error(507, "storage_full", "the file could not be stored: storage is full, try again later")
                }
                _ => internal(e),
            });
        }
    };
    let file_name = client_name.unwrap_or_else(|| stored.name.clone());
    let url = settings.media_url(&stored.name);
    let entry = Entry {
        session_id: session.id.clone(),
        kind: "attachment".into(),
        file_url: Some(url.clone()),
        file_name: Some(file_name.clone()),
        stored_name: Some(stored.name.clone()),
        content_type: Some(stored.content_type.clone()),
        size_bytes: stored.size as i64,
        related_message: related,
        sender_id: caller.sender_id().to_string(),
        sender_role: caller.role().to_string(),
        created_at: crate::now_rfc3339(),
        ..Entry::default()
    };
    let appended = db::append(&entry);
    if !matches!(appended, Ok(Some(_))) {
        // Not recorded (the session ended meanwhile, or the store failed): keep no file of it.
        if let Err(e) = files::delete(&stored.name) {
            gatewayd_plugin::log::warn(&format!("chat: removing the unrecorded upload {} failed: {e}", stored.name));
        }
        quota.release();
        return Err(match appended {
            Err(e) => internal(e),
            _ => error(409, "session_ended", crate::socket::SESSION_ENDED_ERROR),
        });
    }
    Ok(http::json(
        200,
        &json!({
            "message": "File uploaded successfully",
            "data": {"file": url, "file_name": file_name, "content_type": stored.content_type, "size": stored.size}
        }),
    ))
}

/// An upload counted against its session's and its client's quotas, until it is kept (or
/// given back with [`Quota::release`] when it is not).
struct Quota<'a> {
    settings: &'a Settings,
    session_id: &'a str,
    client: &'a str,
    size: u64,
}

impl<'a> Quota<'a> {
    /// Count `size` bytes against the session (durable, in the store), then the client's
    /// window (in kv). Err: the response refusing the upload, with nothing counted.
    fn reserve(settings: &'a Settings, session_id: &'a str, client: &'a str, size: u64) -> Result<Self, HttpResponse> {
        let (max_count, max_bytes) = (settings.max_uploads_per_session, settings.max_upload_bytes_per_session);
        match db::reserve_upload(session_id, size, max_count, max_bytes).map_err(internal)? {
            db::Reservation::Reserved => {}
            db::Reservation::Ended => return Err(error(409, "session_ended", crate::socket::SESSION_ENDED_ERROR)),
            db::Reservation::OverQuota => {
                let message = format!("this session may upload at most {max_count} files and {max_bytes} bytes in all");
                return Err(error(403, "session_upload_quota", &message));
            }
        }
        if let Err(retry) = limits::window_take(client, limits::upload_caps(settings), size, limits::now_ms()) {
            let _ = db::release_upload(session_id, size);
            let message = format!(
                "too many uploads from this address: at most {} files and {} bytes per {} s",
                settings.max_uploads_per_ip, settings.max_upload_bytes_per_ip, settings.upload_ip_window_secs
            );
            return Err(too_many(retry, "upload_rate_limited", &message));
        }
        Ok(Quota { settings, session_id, client, size })
    }

    /// Give the reservation back (the file was not kept).
    fn release(self) {
        limits::window_release(self.client, limits::upload_caps(self.settings), self.size, limits::now_ms());
        if let Err(e) = db::release_upload(self.session_id, self.size) {
            gatewayd_plugin::log::warn(&format!("chat: giving back an upload reservation failed: {e}"));
        }
    }
}

fn query<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// One timeline entry in the history envelope.
fn history_item(e: &Entry) -> Value {
    if e.kind == "attachment" {
        json!({"type": "attachment", "data": {
            "id": e.seq,
            "session_id": e.session_id,
            "file": e.file_url,
            "file_name": e.file_name,
            "content_type": e.content_type,
            "size": e.size_bytes,
            "message": e.related_message,
            "uploaded_by_end_user": (e.sender_role == "visitor").then_some(&e.sender_id),
            "uploaded_by_agent": (e.sender_role == "agent").then_some(&e.sender_id),
            "timestamp": e.created_at,
        }})
    } else {
        let mut data = json!({
            "id": e.seq,
            "session_id": e.session_id,
            "type": e.message_type,
            "sender_id": e.sender_id,
            "sender_role": e.sender_role,
            "timestamp": e.created_at,
        });
        if e.message_type.as_deref() == Some("file") {
            data["file"] = json!(e.file_url);
            data["file_name"] = json!(e.file_name);
            data["is_audio"] = json!(e.is_audio);
        } else {
            data["content"] = json!(e.content);
        }
        json!({"type": "message", "data": data})
    }
}

/// `GET /chat/history/<session_id>/?after=<id>&limit=<n>`: entries with `id > after`, oldest
/// first; `next_after` is the `after` of the next page, null on the last page.
fn history(req: &HttpRequest, session_id: &str) -> Reply {
    let settings = settings()?;
    let caller = caller(req)?;
    let session = accessible_session(&caller, session_id)?;
    let bad = |m: &str| error(400, "invalid_request", m);
    let after = match query(req, "after") {
        Some(a) => a.parse::<i64>().map_err(|_| bad("`after` must be an integer"))?,
        None => 0,
    };
    let limit = match query(req, "limit") {
        Some(l) => match l.parse::<u32>() {
            Ok(n) if (1..=settings.history_max_page_size).contains(&n) => n,
            _ => return Err(bad(&format!("`limit` must be 1..={}", settings.history_max_page_size))),
        },
        None => settings.history_page_size,
    };
    let mut entries = db::timeline(&session.id, after, limit + 1).map_err(internal)?;
    let more = entries.len() > limit as usize;
    entries.truncate(limit as usize);
    let next_after = if more { entries.last().map(|e| e.seq) } else { None };
    Ok(http::json(
        200,
        &json!({
            "message": "Chat timeline fetched successfully",
            "data": entries.iter().map(history_item).collect::<Vec<_>>(),
            "next_after": next_after,
        }),
    ))
}

/// `POST /chat/end-session/<session_id>/`: an agent of the business, or the session's visitor
/// (leaving), ends it. 200 when ended by this call, 409 when it had already ended.
fn end_session(req: &HttpRequest, session_id: &str) -> Reply {
    let caller = caller(req)?;
    let session = accessible_session(&caller, session_id)?;
    if !crate::end_session(&session.id, caller.sender_id()).map_err(internal)? {
        return Err(error(409, "session_ended", crate::socket::SESSION_ENDED_ERROR));
    }
    Ok(http::json(
        200,
        &json!({"message": "Chat session ended successfully", "data": {"session_id": session.id, "active": false}}),
    ))
}

/// `GET /chat/media/<name>`: the stored file, with its sniffed content type, for the session's
/// visitor and its business's agents (token in `Authorization: Bearer` or `?token=`).
fn media(req: &HttpRequest, name: &str) -> Reply {
    let caller = caller(req)?;
    let not_found = || error(404, "file_not_found", "no such file");
    let attachment = db::attachment(name).map_err(internal)?.ok_or_else(not_found)?;
    accessible_session(&caller, &attachment.session_id)?;
    let (stored, data) =
        files::get(name).map_err(|e| if e.starts_with("not_found") { not_found() } else { internal(e) })?;
    let inline = ["image/", "audio/", "video/"].iter().any(|p| stored.content_type.starts_with(p));
    Ok(HttpResponse {
        status: 200,
        headers: vec![
            ("content-type".into(), stored.content_type),
            ("x-content-type-options".into(), "nosniff".into()),
            ("content-disposition".into(), if inline { "inline" } else { "attachment" }.into()),
            ("cache-control".into(), "private, no-store".into()),
        ],
        body: data,
    })
}
