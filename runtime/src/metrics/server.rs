//! The agent's HTTP listeners: `/metrics` (Prometheus) and the health endpoint
//! kubelet probes (`/livez`, `/readyz`, `/healthz`).

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::MetricsRegistry;
use crate::health::{ComponentState, Health};

/// The listener could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics listener {addr} ({what}): {source}")]
pub struct ListenError {
    addr: SocketAddr,
    what: &'static str,
    source: std::io::Error,
}

/// Binds `addr` for `what` (`prometheus`, `hubble.metrics`).
pub async fn bind(
    addr: SocketAddr,
    what: &'static str,
) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError { addr, what, source })
}

/// Serves `GET /metrics` from `registry` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, registry: MetricsRegistry) {
    serve_http(listener, "metrics", move |req| respond(req, &registry)).await;
}

/// Serves the health endpoint from `health` until the task is dropped:
/// - `/livez`: 200 while the agent's runtime answers (the liveness probe: a
///   component in error is not a reason to restart the agent);
/// - `/readyz` and `/healthz`: 200 when no component is in error, else 503 with
///   the failing components, one `name: detail` line each (the readiness probe).
pub async fn serve_health(listener: tokio::net::TcpListener, health: std::sync::Arc<Health>) {
    serve_http(listener, "health", move |req| health_response(req, &health)).await;
}

async fn serve_http<F>(listener: tokio::net::TcpListener, what: &'static str, handler: F)
where
    F: Fn(&Request<hyper::body::Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                tracing::warn!(error = %err, what, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let response = handler(&req);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(err) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %err, what, "connection ended");
            }
        });
    }
}

fn health_response<B>(req: &Request<B>, health: &Health) -> Response<Full<Bytes>> {
    let (status, body) = match req.uri().path() {
        _ if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD => {
            (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".to_string())
        }
        "/livez" => (StatusCode::OK, "ok\n".to_string()),
        "/readyz" | "/healthz" => {
            let failing: Vec<String> = health
                .components()
                .into_iter()
                .filter(|(_, c)| c.state == ComponentState::Error)
                .map(|(name, c)| format!("{name}: {}\n", c.detail))
                .collect();
            if failing.is_empty() {
                (StatusCode::OK, "ok\n".to_string())
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, failing.concat())
            }
        }
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /livez, /readyz or /healthz\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    response
}

fn respond<B>(req: &Request<B>, registry: &MetricsRegistry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics\n".to_string(),
        )
    } else if req.method() != hyper::Method::GET && req.method() != hyper::Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            registry.render(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, health: &Health) -> (StatusCode, String) {
        let req = Request::get(path).body(()).unwrap_or_default();
        let response = health_response(&req, health);
        let status = response.status();
        let body =
            futures::executor::block_on(http_body_util::BodyExt::collect(response.into_body()))
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
        (status, body)
    }

    #[test]
    fn readiness_fails_with_the_failing_components_and_liveness_does_not() {
        let health = Health::default();
        health.set("datapath", ComponentState::Ok, "loaded");
        health.set("policy/kubernetes", ComponentState::Warning, "1 invalid");
        assert_eq!(get("/readyz", &health), (StatusCode::OK, "ok\n".into()));
        health.set(
            "endpoints/kubernetes",
            ComponentState::Error,
            "API: connection refused",
        );
        let failing = "endpoints/kubernetes: API: connection refused\n".to_string();
        assert_eq!(
            get("/readyz", &health),
            (StatusCode::SERVICE_UNAVAILABLE, failing.clone())
        );
        assert_eq!(
            get("/healthz", &health),
            (StatusCode::SERVICE_UNAVAILABLE, failing)
        );
        assert_eq!(get("/livez", &health), (StatusCode::OK, "ok\n".into()));
        assert_eq!(get("/metrics", &health).0, StatusCode::NOT_FOUND);
    }
}
