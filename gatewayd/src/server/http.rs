//! Plain HTTP requests routed to a plugin's `on-http`.

use super::{Route, TWILIO_REFUSAL, TWILIO_SIGNATURE, json_error};
use crate::auth_twilio::PUBLIC_BASE_URL_HEADER;
use crate::config::ListenerConfig;
use crate::plugins::{Event, HttpRequest, Session};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::time::Duration;

/// The header carrying the client's address to the plugin (WIT `http-request.headers`). The
/// host sets it; a client's header of that name is dropped.
pub const REMOTE_ADDR_HEADER: &str = "x-gatewayd-remote-addr";

/// Read the body (up to `max_body_bytes`, else 413; within `body_timeout_ms`, else 408), call
/// the plugin, and turn its answer into a response. A plugin fault is a 500 with the fault's
/// code. `remote` is the client (behind a trusted proxy, the forwarded client with port 0): the
/// plugin sees it as the `x-gatewayd-remote-addr` header.
pub(super) async fn dispatch(
    req: Request<Incoming>,
    route: &Route,
    path: String,
    query: Vec<(String, String)>,
    claims: Option<String>,
    remote: std::net::SocketAddr,
    limits: &ListenerConfig,
) -> Response<Full<Bytes>> {
    let max_body_bytes = limits.max_body_bytes;
    let too_large = || {
        json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!("request body exceeds {max_body_bytes} bytes"),
        )
    };
    // A declared length over the limit is refused before a byte of the body is read.
    if req.body().size_hint().lower() > max_body_bytes as u64 {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let read = tokio::time::timeout(
        Duration::from_millis(limits.body_timeout_ms),
        Limited::new(body, max_body_bytes).collect(),
    );
    let body = match read.await {
        Ok(Ok(collected)) => collected.to_bytes().to_vec(),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => return json_error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string()),
        Err(_) => {
            let mut response = json_error(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!("request body not received within {} ms", limits.body_timeout_ms),
            );
            // The rest of the body is not read: the connection cannot be reused.
            response.headers_mut().insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
            return response;
        }
    };
    if let Some(signer) = &route.twilio {
        let header = |name| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let form =
            header(hyper::header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
        if !signer.check_http(
            &path_and_query,
            form,
            &body,
            header(hyper::header::HeaderName::from_static(TWILIO_SIGNATURE)),
        ) {
            tracing::info!(route = %route.name, %remote, "Twilio signature refused");
            return json_error(StatusCode::FORBIDDEN, "bad_signature", TWILIO_REFUSAL);
        }
    }
    let mut headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            *name != hyper::header::AUTHORIZATION
                && name.as_str() != REMOTE_ADDR_HEADER
                && name.as_str() != PUBLIC_BASE_URL_HEADER
        })
        .filter_map(|(name, value)| Some((name.as_str().to_string(), value.to_str().ok()?.to_string())))
        .collect();
    headers.push((REMOTE_ADDR_HEADER.to_string(), remote.to_string()));
    if let Some(signer) = &route.twilio {
        headers.push((PUBLIC_BASE_URL_HEADER.to_string(), signer.base().to_string()));
    }
    let request = HttpRequest { method: parts.method.as_str().to_string(), path, query, headers, body, claims };
    let (result, _) = route.plugin.dispatch(Event::Http(request), Session::default()).await;
    match result {
        Ok(Some(r)) => {
            let mut builder =
                Response::builder().status(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
            for (name, value) in &r.headers {
                builder = builder.header(name.as_str(), value.as_str());
            }
            builder.body(Full::new(Bytes::from(r.body))).unwrap_or_else(|e| {
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "plugin_bad_response", &e.to_string())
            })
        }
        Ok(None) => json_error(StatusCode::INTERNAL_SERVER_ERROR, "plugin_bad_response", "no response"),
        Err(fault) => json_error(StatusCode::INTERNAL_SERVER_ERROR, fault.code(), &fault.to_string()),
    }
}
