//! The gateway's REST front in embedded mode: each request crosses from a
//! glommio shard into the tokio runtime over a oneshot channel and is served
//! by the axum router of the tokio tier.

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use gochat_gateway::api::{ApiBackend, ApiRequest, ApiResponse};
use tower::ServiceExt;

pub struct TokioApi {
    router: Router,
    runtime: tokio::runtime::Handle,
}

impl TokioApi {
    pub fn new(router: Router, runtime: tokio::runtime::Handle) -> Self {
        Self { router, runtime }
    }
}

/// A protocol v1 error body, for failures of the hop between gateway and API.
pub fn error_response(status: u16, code: &str, message: &str) -> ApiResponse {
    let body = serde_json::json!({"error": {"code": code, "message": message}}).to_string();
    ApiResponse { status, headers: vec![("content-type".into(), "application/json".into())], body: Bytes::from(body) }
}

/// Serve one request with the router; never fails (errors become responses).
async fn serve(router: Router, req: ApiRequest, max_body: usize) -> ApiResponse {
    let mut builder = http::Request::builder().method(req.method.as_str()).uri(req.target.as_str());
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_slice());
    }
    let request = match builder.body(Body::from(req.body)) {
        Ok(r) => r,
        Err(e) => return error_response(400, "bad_request", &e.to_string()),
    };
    let response = match router.oneshot(request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match axum::body::to_bytes(body, max_body).await {
        Ok(b) => b,
        Err(_) => return error_response(500, "internal", "response body too large"),
    };
    let headers = parts
        .headers
        .iter()
        .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str().to_owned(), v.to_owned())))
        .collect();
    ApiResponse { status: parts.status.as_u16(), headers, body }
}

impl ApiBackend for TokioApi {
    fn call(&self, req: ApiRequest) -> BoxFuture<'static, ApiResponse> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let router = self.router.clone();
        self.runtime.spawn(async move {
            let _ = tx.send(serve(router, req, 64 << 20).await);
        });
        Box::pin(async move { rx.await.unwrap_or_else(|_| error_response(503, "unavailable", "api runtime stopped")) })
    }
}
