//! The admin listener (`[admin] address`): `GET /healthz` (the process answers), `GET /readyz`
//! (listeners bound, plugins loaded, not stopping: 200, else 503) and `GET /metrics`
//! (Prometheus text format, see `plugins::stats`).

use super::json_error;
use crate::bus::Bus;
use crate::plugins::stats::Metrics;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;

/// Shared state of the admin endpoints.
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub bus: Arc<Bus>,
    /// True between "listeners bound and plugins loaded" and "stopping".
    pub ready: AtomicBool,
}

/// Serve the admin endpoints on `socket` until the process exits.
pub async fn serve(socket: TcpListener, admin: Arc<Admin>) {
    // Admin connections are never refused for capacity; the acceptor keeps the loop alive when
    // descriptors run short (the client listeners' budget keeps some for it).
    let mut acceptor = super::Acceptor::new("admin", admin.metrics.edge.clone());
    loop {
        let (tcp, _) = acceptor.accept(&socket).await;
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let admin = admin.clone();
                async move { Ok::<_, Infallible>(handle(req, &admin)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn handle<B>(req: Request<B>, admin: &Admin) -> Response<Full<Bytes>> {
    let json = |status: StatusCode, body: &'static str| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("static response parts are valid")
    };
    match req.uri().path() {
        "/healthz" => json(StatusCode::OK, r#"{"status":"ok"}"#),
        "/readyz" if admin.ready.load(Ordering::Acquire) => json(StatusCode::OK, r#"{"status":"ready"}"#),
        "/readyz" => json(StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"not_ready"}"#),
        "/metrics" => {
            admin.metrics.connections.set(admin.bus.len() as i64);
            Response::builder()
                .header(hyper::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")
                .body(Full::new(Bytes::from(admin.metrics.encode())))
                .expect("static response parts are valid")
        }
        other => json_error(StatusCode::NOT_FOUND, "not_found", &format!("no admin endpoint {other}")),
    }
}
