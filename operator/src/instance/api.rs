//! The instance manager's HTTP API. Health endpoints are open (kubelet probes cannot carry a
//! token); status and requests need the cluster's bearer token.

use std::sync::Arc;

use axum::extract::{Request as HttpRequest, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::manager::{Manager, Refusal};
use super::report::{FailsafeRequest, Request};

pub const STATUS_PATH: &str = "/v1/status";
pub const REQUESTS_PATH: &str = "/v1/requests";
/// A primary's peers answer here when it asks them to hold it (see `lease`).
pub const FAILSAFE_PATH: &str = "/v1/failsafe";
/// On a status request, the controller renews the primary's lease with it: only while it heard
/// from the instance in its last pass, so it knows when its last renewal could have been sent.
pub const RENEW_LEASE_HEADER: &str = "x-renew-lease";

pub fn router(manager: Arc<Manager>) -> Router {
    let private = Router::new()
        .route(STATUS_PATH, get(status))
        .route(REQUESTS_PATH, post(submit))
        .route(FAILSAFE_PATH, post(failsafe))
        .route_layer(middleware::from_fn_with_state(manager.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .merge(private)
        .with_state(manager)
}

/// Compares without an early exit, so response timing does not reveal the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn require_token(State(m): State<Arc<Manager>>, req: HttpRequest, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if same_secret(presented.as_bytes(), m.token().as_bytes()) {
        if req.headers().contains_key(RENEW_LEASE_HEADER) {
            m.contacted();
        }
        next.run(req).await
    } else {
        (StatusCode::UNAUTHORIZED, "missing or wrong bearer token").into_response()
    }
}

/// From the readiness watcher's last probe: no SQL runs under the kubelet's probe time-out.
async fn ready(State(m): State<Arc<Manager>>) -> Response {
    if m.ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database server not accepting connections").into_response()
    }
}

/// Prometheus text format, open like the health endpoints: it carries no secret.
async fn metrics(State(m): State<Arc<Manager>>) -> Response {
    let report = m.report().await;
    let body = crate::metrics::render_instance(&m.cfg.cluster, &report, k8s_openapi::jiff::Timestamp::now());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn status(State(m): State<Arc<Manager>>) -> Response {
    Json(m.report().await).into_response()
}

async fn failsafe(State(m): State<Arc<Manager>>, Json(request): Json<FailsafeRequest>) -> Response {
    match m.hold(&request) {
        Ok(held) => Json(held.as_millis() as u64).into_response(),
        Err(why) => (StatusCode::CONFLICT, why).into_response(),
    }
}

async fn submit(State(m): State<Arc<Manager>>, Json(request): Json<Request>) -> Response {
    match m.submit(request) {
        Ok(op) => (StatusCode::ACCEPTED, Json(op)).into_response(),
        Err(e @ (Refusal::Busy(_) | Refusal::BackingOff { .. })) => {
            (StatusCode::CONFLICT, e.to_string()).into_response()
        }
        Err(e @ Refusal::Invalid(_)) => (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
    }
}
