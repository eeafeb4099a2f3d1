//! The operational listener (`gateway.admin_listen`, loopback by default):
//! `/metrics`, `/readyz` and `/healthz`, off the public client port in both
//! modes. A small axum server on the process's tokio runtime; it reads the
//! shards' metric atomics and asks the tier through the same [`ApiBackend`]
//! the shards forward REST to.

use anyhow::Context;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use gochat_gateway::api::{ApiBackend, ApiRequest};
use gochat_gateway::metrics::{scrape, ShardMetrics, CONTENT_TYPE};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Clone)]
struct Admin {
    gateway_id: Arc<str>,
    shards: Arc<Vec<Arc<ShardMetrics>>>,
    api: Arc<dyn ApiBackend>,
}

/// Bind `addr` and serve until `shutdown` turns true; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    gateway_id: &str,
    shards: Arc<Vec<Arc<ShardMetrics>>>,
    api: Arc<dyn ApiBackend>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let state = Admin { gateway_id: gateway_id.into(), shards, api };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding admin listener {addr}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|v| *v).await;
        });
        if let Err(e) = served.await {
            tracing::warn!(error = %e, "admin listener failed");
        }
    });
    Ok(local)
}

async fn metrics(axum::extract::State(a): axum::extract::State<Admin>) -> impl IntoResponse {
    let text = scrape(&a.gateway_id, &a.shards, a.api.as_ref()).await;
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], text)
}

/// The tier's readiness (its store answers), as the tier reports it.
async fn readyz(axum::extract::State(a): axum::extract::State<Admin>) -> impl IntoResponse {
    let r = a
        .api
        .call(ApiRequest { method: "GET".into(), target: "/readyz".into(), headers: vec![], body: Bytes::new() })
        .await;
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, [(header::CONTENT_TYPE, r.content_type().to_owned())], r.body)
}
