//! Listeners and routing: hyper HTTP/1.1 with WebSocket upgrades (fastwebsockets).
//!
//! Each listener serves the routes configured for it, first match wins, over plain TCP or TLS
//! (`tls`). Built-in endpoints on every listener: `GET /healthz`. Errors the daemon answers itself are JSON:
//! `{"error": "<code>", "message": "<text>"}` with a 4xx/5xx status.

pub mod admin;
pub mod guard;
mod http;
pub mod limits;
pub mod tls;
pub mod websocket;

use crate::auth::{Keys, TokenSource, extract_token};
use crate::bus::Bus;
use crate::config::{AuthMode, Config, ListenerConfig, RouteKind};
use crate::plugins::{Plugin, Runtime};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A route resolved against the loaded plugins.
struct Route {
    name: String,
    path: String,
    prefix: bool,
    kind: RouteKind,
    auth: AuthMode,
    plugin: Arc<Plugin>,
    /// Wire audio format and speech providers of a media route.
    media: Option<websocket::MediaRoute>,
    /// Close code for a refused token after the upgrade (`RouteConfig::refused_token_close`).
    refused_token_close: Option<u16>,
    /// `twilio_signature = true`: every request must carry Twilio's signature.
    twilio: Option<Arc<crate::auth_twilio::Signer>>,
}

impl Route {
    fn matches(&self, path: &str) -> bool {
        if self.prefix { path.starts_with(&self.path) } else { path == self.path }
    }
}

/// What one listener needs to serve a request.
pub struct Listener {
    name: String,
    config: ListenerConfig,
    /// Replaced as a whole on config reload; a request uses the table it started with.
    routes: RwLock<Arc<Vec<Route>>>,
    jwt: Arc<Keys>,
    bus: Arc<Bus>,
    /// Connection caps of this listener (`server::limits`).
    admission: Arc<limits::Admission>,
    /// The certificate of a TLS listener, replaced on reload.
    tls: Option<tls::Tls>,
}

impl Listener {
    /// Install the routes `config` gives this listener (on config reload).
    pub fn update_routes(&self, config: &Config, runtime: &Runtime) {
        *self.routes.write() = Arc::new(routes_for(&self.name, config, runtime));
    }

    /// Reload the certificate of a TLS listener (on config reload: SIGHUP or a file change).
    /// A failed load keeps the current certificate; turning TLS on or off needs a restart.
    pub fn reload_tls(&self, config: &ListenerConfig) {
        match (&self.tls, &config.tls) {
            (Some(tls), Some(files)) => {
                tls.reload(files);
            }
            (None, None) => {}
            _ => tracing::warn!(listener = %self.name, "TLS turned on or off in config: restart gatewayd to apply"),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

fn routes_for(listener: &str, config: &Config, runtime: &Runtime) -> Vec<Route> {
    config
        .routes
        .iter()
        .filter(|r| r.listener == listener)
        .filter_map(|r| {
            let Some(plugin) = runtime.plugin(&r.plugin) else {
                tracing::warn!(route = %r.path, plugin = %r.plugin, "route skipped: its plugin is not loaded");
                return None;
            };
            let twilio = match (r.twilio_signature, &config.twilio) {
                (false, _) => None,
                (true, Some(t)) => match crate::auth_twilio::Signer::new(t) {
                    Ok(signer) => Some(Arc::new(signer)),
                    Err(e) => {
                        // Never serve a signed route unchecked.
                        tracing::error!(route = %r.path, error = %e, "route skipped: [twilio] does not load");
                        return None;
                    }
                },
                (true, None) => {
                    tracing::error!(route = %r.path, "route skipped: twilio_signature needs [twilio]");
                    return None;
                }
            };
            Some(Route {
                twilio,
                name: r.name.clone().unwrap_or_else(|| r.path.clone()),
                path: r.path.clone(),
                prefix: r.prefix,
                kind: r.kind,
                auth: r.auth,
                plugin: plugin.clone(),
                media: r.media.map(|m| websocket::MediaRoute {
                    format: m.format().expect("validated: media format"),
                    framing: m.framing,
                    speech: r.speech.clone(),
                }),
                refused_token_close: r.refused_token_close,
            })
        })
        .collect()
}

/// Bound listeners, ready to serve.
pub struct Server {
    bound: Vec<(TcpListener, Arc<Listener>)>,
}

impl Server {
    /// Bind every configured listener (so the caller can report readiness only once all
    /// accept connections) and resolve their routes. Client connections of all listeners share
    /// the process's descriptor budget ([`limits::Budget::for_process`]).
    pub async fn bind(
        config: &Config,
        runtime: &Runtime,
        jwt: Arc<Keys>,
        bus: Arc<Bus>,
        edge: Arc<limits::EdgeMetrics>,
    ) -> anyhow::Result<Server> {
        let budget = limits::Budget::for_process(config.daemon.reserved_descriptors);
        let wanted: usize = config.listeners.values().map(|l| l.max_connections).sum();
        if wanted > budget.max() {
            tracing::warn!(
                budget = budget.max(),
                configured = wanted,
                "the listeners' max_connections add up to more than the open-file limit allows: \
                 connections beyond the budget are refused (raise LimitNOFILE / ulimit -n)"
            );
        }
        let mut bound = Vec::new();
        for (name, l) in &config.listeners {
            let routes = RwLock::new(Arc::new(routes_for(name, config, runtime)));
            let tls = l.tls.as_ref().map(|files| tls::Tls::load(name, files)).transpose()?;
            let socket = TcpListener::bind(l.address)
                .await
                .map_err(|e| anyhow::anyhow!("listeners.{name}: cannot bind {}: {e}", l.address))?;
            tracing::info!(listener = %name, address = %socket.local_addr()?, "listening");
            bound.push((
                socket,
                Arc::new(Listener {
                    name: name.clone(),
                    config: l.clone(),
                    routes,
                    jwt: jwt.clone(),
                    bus: bus.clone(),
                    admission: limits::Admission::new(name, l, budget.clone(), edge.clone()),
                    tls,
                }),
            ));
        }
        Ok(Server { bound })
    }

    /// The listeners, for route updates on config reload.
    pub fn listeners(&self) -> Vec<Arc<Listener>> {
        self.bound.iter().map(|(_, l)| l.clone()).collect()
    }

    /// Local addresses of the bound listeners, in config order.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.bound.iter().filter_map(|(s, _)| s.local_addr().ok()).collect()
    }

    /// Accept connections until `shutdown` turns true.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for (socket, listener) in self.bound {
            let mut shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                let mut acceptor = Acceptor::new(&listener.name, listener.admission.metrics().clone());
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => break,
                        (tcp, remote) = acceptor.accept(&socket) => admit(tcp, remote, &listener),
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Admit an accepted connection and serve it, or refuse it at once.
fn admit(tcp: tokio::net::TcpStream, remote: SocketAddr, listener: &Arc<Listener>) {
    match listener.admission.admit(remote.ip()) {
        Ok(permit) => {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(serve_connection(tcp, remote, listener.clone(), Arc::new(permit)));
        }
        Err(why) => {
            tracing::debug!(listener = %listener.name, %remote, ?why, "connection refused");
            // Best effort, never waits: the client learns why, the descriptor is freed now.
            let _ = tcp.try_write(limits::REFUSED_RESPONSE);
        }
    }
}

/// An accept loop that survives running out of descriptors.
///
/// On `EMFILE`/`ENFILE` it logs once per episode, counts each failure, and gives up the
/// descriptor it keeps in reserve to accept and close the waiting connection with the 503
/// answer (so the kernel's backlog drains and clients are told at once instead of hanging),
/// then takes the reserve back. When not even that descriptor comes back, it backs off (10 ms
/// doubling to 1 s) before trying again.
pub struct Acceptor {
    name: String,
    metrics: Arc<limits::EdgeMetrics>,
    reserve: Option<std::fs::File>,
    backoff: std::time::Duration,
    short: bool,
}

impl Acceptor {
    /// An acceptor for listener `name` (the label of its metrics), holding one spare descriptor.
    pub fn new(name: &str, metrics: Arc<limits::EdgeMetrics>) -> Acceptor {
        Acceptor {
            name: name.into(),
            metrics,
            reserve: std::fs::File::open("/dev/null").ok(),
            backoff: std::time::Duration::ZERO,
            short: false,
        }
    }

    /// The next connection.
    pub async fn accept(&mut self, socket: &TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
        loop {
            match socket.accept().await {
                Ok(accepted) => {
                    if self.short {
                        tracing::info!(listener = %self.name, "descriptors available again");
                        self.short = false;
                    }
                    self.backoff = std::time::Duration::ZERO;
                    return accepted;
                }
                Err(e) => {
                    let descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                    self.metrics.accept_error(&self.name, descriptors);
                    if descriptors && !self.short {
                        self.short = true;
                        tracing::error!(listener = %self.name, error = %e, "out of file descriptors: refusing connections until some close (raise LimitNOFILE / ulimit -n, or lower max_connections)");
                    } else if !descriptors {
                        tracing::warn!(listener = %self.name, error = %e, "accept failed");
                    }
                    // Shed the waiting connection with the spare descriptor: the backlog drains
                    // at accept speed instead of one connection per back-off.
                    if descriptors && self.reserve.take().is_some() {
                        let shed = tokio::time::timeout(std::time::Duration::from_millis(10), socket.accept());
                        if let Ok(Ok((tcp, _))) = shed.await {
                            let _ = tcp.try_write(limits::REFUSED_RESPONSE);
                        }
                        self.reserve = std::fs::File::open("/dev/null").ok();
                        if self.reserve.is_some() {
                            continue;
                        }
                    }
                    self.backoff = (self.backoff * 2)
                        .clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(1));
                    tokio::time::sleep(self.backoff).await;
                }
            }
        }
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    listener: Arc<Listener>,
    permit: Arc<limits::Permit>,
) {
    let Some(acceptor) = listener.tls.as_ref().map(tls::Tls::acceptor) else {
        return serve_http(TokioIo::new(tcp), remote, listener, permit).await;
    };
    match tls::handshake(acceptor, tcp).await {
        Ok(stream) => serve_http(TokioIo::new(stream), remote, listener, permit).await,
        Err(e) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
    }
}

/// Serve HTTP/1.1 (and WebSocket upgrades) on a connection, plain or TLS, holding its place in
/// the edge's counts (`permit`) until it ends.
async fn serve_http<I>(io: I, remote: SocketAddr, listener: Arc<Listener>, permit: Arc<limits::Permit>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let timeouts = Arc::clone(&listener);
    let service = hyper::service::service_fn(move |req| {
        let listener = listener.clone();
        let permit = permit.clone();
        async move { Ok::<_, Infallible>(handle(req, remote, &listener, permit).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_millis(timeouts.config.header_timeout_ms))
        .serve_connection(io, service)
        .with_upgrades();
    if let Err(e) = conn.await {
        if e.is_timeout() {
            timeouts.admission.metrics().closed(limits::CloseReason::HeaderTimeout);
        }
        tracing::debug!(error = %e, "http connection ended with an error");
    }
}

/// A JSON error response: `{"error": code, "message": message}`.
/// Twilio's request signature header.
pub(crate) const TWILIO_SIGNATURE: &str = "x-twilio-signature";
/// The body of a refused signature's 403 (nothing about the expected value).
pub(crate) const TWILIO_REFUSAL: &str = "missing or invalid X-Twilio-Signature";

pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn offers_bearer<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').next().is_some_and(|p| p.trim().eq_ignore_ascii_case("bearer")))
}

async fn handle(
    mut req: Request<Incoming>,
    peer: SocketAddr,
    listener: &Listener,
    permit: Arc<limits::Permit>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return Response::builder()
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}")))
            .expect("static response parts are valid");
    }
    // Behind a trusted proxy the client is the address it forwards, and is counted as such.
    let client_ip = listener.admission.client_ip(peer.ip(), req.headers());
    let remote = SocketAddr::new(client_ip, if client_ip == peer.ip() { peer.port() } else { 0 });
    let forwarded = match listener.admission.is_trusted(peer.ip()) {
        false => None,
        true => match listener.admission.admit_forwarded(client_ip) {
            Ok(p) => Some(p),
            Err(_) => {
                return json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "over_capacity",
                    "too many connections from this address",
                );
            }
        },
    };
    let routes = listener.routes.read().clone();
    let Some(route) = routes.iter().find(|r| r.matches(&path)) else {
        return json_error(StatusCode::NOT_FOUND, "not_found", &format!("no route for {path}"));
    };
    let mut query: Vec<(String, String)> =
        url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();

    // Authentication. The token never reaches the plugin, the logs or an error message.
    let mut token_source = None;
    let claims = match route.auth {
        AuthMode::None => None,
        mode => match extract_token(&query, req.headers()) {
            Some((token, source)) => match listener.jwt.verify(&token, Some(route.plugin.name())) {
                Ok(claims) => {
                    token_source = Some(source);
                    Some(serde_json::Value::Object(claims).to_string())
                }
                Err(e) => {
                    tracing::info!(route = %route.name, %remote, reason = %e, "token refused");
                    if let Some(code) = route.refused_token_close
                        && fastwebsockets::upgrade::is_upgrade_request(&req)
                    {
                        let reason = format!("{}: {e}", e.code());
                        let offered_bearer = offers_bearer(&req);
                        let mut response = websocket::refuse_after_upgrade(&mut req, code, reason, (permit, forwarded));
                        if offered_bearer && response.status() == StatusCode::SWITCHING_PROTOCOLS {
                            // As on success: a browser that offered `Bearer` fails a handshake
                            // that selects nothing, and would see 1006 instead of the code.
                            response.headers_mut().insert(
                                hyper::header::SEC_WEBSOCKET_PROTOCOL,
                                hyper::header::HeaderValue::from_static("Bearer"),
                            );
                        }
                        return response;
                    }
                    return json_error(StatusCode::UNAUTHORIZED, e.code(), &e.to_string());
                }
            },
            None if mode == AuthMode::Required => {
                return json_error(StatusCode::UNAUTHORIZED, "token_missing", "a valid token is required");
            }
            None => None,
        },
    };
    query.retain(|(k, _)| k != "token");

    match route.kind {
        RouteKind::Websocket => {
            if !fastwebsockets::upgrade::is_upgrade_request(&req) {
                return json_error(StatusCode::UPGRADE_REQUIRED, "upgrade_required", "this endpoint speaks WebSocket");
            }
            if let Some(signer) = &route.twilio {
                let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
                let header = req.headers().get(TWILIO_SIGNATURE).and_then(|v| v.to_str().ok());
                if !signer.check_upgrade(path_and_query, header) {
                    tracing::info!(route = %route.name, %remote, "Twilio signature refused");
                    return json_error(StatusCode::FORBIDDEN, "bad_signature", TWILIO_REFUSAL);
                }
            }
            let (response, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
                Ok(parts) => parts,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, "bad_handshake", &e.to_string()),
            };
            let accepted = websocket::Accepted {
                route: route.name.clone(),
                path,
                query,
                claims,
                remote_addr: remote.to_string(),
                limits: websocket::Limits::of(&listener.config),
                media: route.media.clone(),
                held: (permit, forwarded),
                edge: listener.admission.metrics().clone(),
            };
            tokio::spawn(websocket::serve(upgrade, accepted, route.plugin.clone(), listener.bus.clone()));
            let (mut parts, _) = response.into_parts();
            if token_source == Some(TokenSource::WebSocketProtocol) || offers_bearer(&req) {
                // Select the `Bearer` subprotocol (browsers fail a handshake that offered
                // subprotocols and got none back); the token itself is never echoed.
                parts
                    .headers
                    .insert(hyper::header::SEC_WEBSOCKET_PROTOCOL, hyper::header::HeaderValue::from_static("Bearer"));
            }
            Response::from_parts(parts, Full::default())
        }
        RouteKind::Http => {
            let response = http::dispatch(req, route, path, query, claims, remote, &listener.config).await;
            if response.status() == StatusCode::REQUEST_TIMEOUT {
                listener.admission.metrics().closed(limits::CloseReason::BodyTimeout);
            }
            drop(forwarded);
            response
        }
    }
}
