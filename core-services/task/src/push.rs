//! Offline push: recipients without a live session are notified through a
//! [`PushProvider`]. [`WebhookProvider`] POSTs JSON batches to a URL, signed
//! with HMAC-SHA256; APNs and FCM are further implementations of the same
//! trait (not included: they need credentials and vendor endpoints).
//!
//! A task's recipients are sent in batches of `task.push_batch_size`; each
//! batch is marked done in the fast store only after the provider accepted
//! it, so a retry resumes at the first batch that failed and the provider
//! sees every batch accepted once. Each request also carries an
//! `Idempotency-Key` (task id + batch index) for receivers that want to
//! deduplicate the rare re-send after a crash between acceptance and mark.

use crate::runner::{Task, TaskError, TaskHandler, TaskMetrics};
use futures_util::future::BoxFuture;
use gochat_logic::session::SessionStore;
use gochat_proto::bus::OfflinePushTask;
use gochat_proto::Message;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tracing::debug;

/// How long "batch accepted" marks are kept.
const DONE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Try again later (timeout, connection refused, 5xx, 408, 429).
    #[error("push provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request itself (other 4xx).
    #[error("push provider refused the request: {0}")]
    Refused(String),
}

/// One notification: a message a user has not seen live.
#[derive(Debug, Clone, Serialize)]
pub struct Notification {
    pub user_id: String,
    pub conversation_id: String,
    pub msg_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub content_type: String,
    pub preview: String,
    pub ts: i64,
}

/// The JSON body a webhook receives.
#[derive(Debug, Serialize)]
pub struct PushBatch<'a> {
    pub idempotency_key: &'a str,
    pub notifications: &'a [Notification],
}

pub trait PushProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn send<'a>(&'a self, batch: &'a PushBatch<'a>) -> BoxFuture<'a, Result<(), PushError>>;
}

/// POST `application/json` to a URL. Headers: `X-GoChat-Timestamp` (Unix
/// ms), `X-GoChat-Signature: sha256=<hex HMAC-SHA256 of "{timestamp}.{body}">`
/// when a secret is set, and `Idempotency-Key`.
pub struct WebhookProvider {
    client: reqwest::Client,
    url: String,
    secret: Vec<u8>,
}

impl WebhookProvider {
    pub fn new(url: &str, secret: &str, timeout: Duration) -> Result<Self, PushError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("gochat-task/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PushError::Refused(format!("http client: {e}")))?;
        Ok(Self { client, url: url.to_owned(), secret: secret.as_bytes().to_vec() })
    }
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "{timestamp}.{body}").
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl PushProvider for WebhookProvider {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn send<'a>(&'a self, batch: &'a PushBatch<'a>) -> BoxFuture<'a, Result<(), PushError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(batch).map_err(|e| PushError::Refused(e.to_string()))?;
            let ts = gochat_common::now_ms().to_string();
            let mut req = self
                .client
                .post(&self.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("X-GoChat-Timestamp", &ts)
                .header("Idempotency-Key", batch.idempotency_key);
            if !self.secret.is_empty() {
                req = req.header("X-GoChat-Signature", signature(&self.secret, &ts, &body));
            }
            let resp = req.body(body).send().await.map_err(|e| PushError::Unavailable(e.to_string()))?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let why = format!("{} answered {status}", self.url);
            if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
                Err(PushError::Unavailable(why))
            } else {
                Err(PushError::Refused(why))
            }
        })
    }
}

pub struct OfflinePushHandler {
    provider: Arc<dyn PushProvider>,
    marks: Arc<dyn SessionStore>,
    batch_size: usize,
    metrics: Arc<TaskMetrics>,
}

impl OfflinePushHandler {
    pub fn new(
        provider: Arc<dyn PushProvider>,
        marks: Arc<dyn SessionStore>,
        batch_size: usize,
        metrics: Arc<TaskMetrics>,
    ) -> Self {
        Self { provider, marks, batch_size: batch_size.max(1), metrics }
    }

    async fn run(&self, task: &Task) -> Result<(), TaskError> {
        let t = OfflinePushTask::decode(task.body.clone())
            .map_err(|e| TaskError::Permanent(format!("undecodable offline_push task: {e}")))?;
        let retry = |e: &dyn std::fmt::Display| TaskError::Retry(e.to_string());
        for (i, users) in t.recipients.chunks(self.batch_size).enumerate() {
            let key = format!("{}:b{i}", task.id);
            if self.marks.is_claimed(&key).await.map_err(|e| retry(&e))? {
                continue; // accepted by an earlier attempt
            }
            let notifications: Vec<Notification> = users
                .iter()
                .map(|u| Notification {
                    user_id: u.to_string(),
                    conversation_id: t.conversation_id.clone(),
                    msg_id: t.msg_id.to_string(),
                    seq: t.seq,
                    sender_id: t.sender_id.to_string(),
                    content_type: t.content_type.clone(),
                    preview: t.preview.clone(),
                    ts: t.ts,
                })
                .collect();
            let batch = PushBatch { idempotency_key: &key, notifications: &notifications };
            match self.provider.send(&batch).await {
                Ok(()) => {}
                Err(PushError::Unavailable(why)) => return Err(TaskError::Retry(why)),
                Err(PushError::Refused(why)) => return Err(TaskError::Permanent(why)),
            }
            self.metrics.offline_notifications.add(users.len() as u64);
            self.marks.claim(&key, DONE_TTL).await.map_err(|e| retry(&e))?;
            debug!(provider = self.provider.name(), batch = i, recipients = users.len(), "offline push sent");
        }
        Ok(())
    }
}

impl TaskHandler for OfflinePushHandler {
    fn handle<'a>(&'a self, task: &'a Task) -> BoxFuture<'a, Result<(), TaskError>> {
        Box::pin(self.run(task))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: python3 -c 'import hmac,hashlib;
        //   print(hmac.new(b"key", b"1.{}", hashlib.sha256).hexdigest())'
        let sig = super::signature(b"key", "1", b"{}");
        assert_eq!(sig, "sha256=1ba6b8171186efc613e8bcc0cbdab2748f24984d7c5a84faa2637afa0e40d224");
        assert_ne!(sig, super::signature(b"key", "2", b"{}"), "timestamp is signed");
        assert_ne!(sig, super::signature(b"other", "1", b"{}"), "key matters");
    }
}
