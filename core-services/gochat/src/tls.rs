//! The gateway's TLS certificate in either mode: loaded from
//! `gateway.tls_cert_path` / `gateway.tls_key_path` at start, re-read on
//! SIGHUP (new handshakes get the new certificate, open connections stay;
//! a bad new pair is logged and the old one kept).

use anyhow::Context as _;
use gochat_common::config::Config;
use gochat_gateway::tls::TlsReloader;
use std::sync::Arc;
use tracing::{error, info};

/// The reloader when TLS is configured; must be called inside a tokio
/// runtime (the SIGHUP listener is spawned on it).
pub fn gateway_tls(cfg: &Config) -> anyhow::Result<Option<Arc<TlsReloader>>> {
    let g = &cfg.gateway;
    if g.tls_cert_path.is_empty() {
        return Ok(None);
    }
    let tls = TlsReloader::load(&g.tls_cert_path, &g.tls_key_path).context("gateway tls")?;
    info!(cert = %g.tls_cert_path, key = %g.tls_key_path, "gateway tls enabled");
    let mut hup =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("install SIGHUP handler")?;
    let reloader = tls.clone();
    let cert = g.tls_cert_path.clone();
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reloader.reload() {
                Ok(()) => info!(cert = %cert, generation = reloader.generation(), "tls certificate reloaded"),
                Err(e) => error!(cert = %cert, error = %e, "tls reload failed; keeping the current certificate"),
            }
        }
    });
    Ok(Some(tls))
}
