//! Content moderation, checked by logic before a message is persisted: a
//! built-in keyword and regex list from config, then an optional webhook.
//! A verdict rejects the send (error frame `message_rejected`), flags it
//! (stored and delivered, counted and logged) or allows it.

use gochat_common::config::ModerationConfig;
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Flag(String),
    Reject(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ModerationError {
    #[error("invalid moderation pattern: {0}")]
    Pattern(#[from] regex::Error),
    #[error("invalid moderation webhook: {0}")]
    Webhook(String),
}

/// What the moderation webhook receives.
#[derive(Serialize)]
struct WebhookRequest<'a> {
    sender_id: String,
    conversation_id: &'a str,
    content_type: &'a str,
    content: &'a serde_json::value::RawValue,
}

/// What it answers: `{"action": "allow" | "flag" | "reject", "reason": "..."}`.
#[derive(Deserialize)]
struct WebhookResponse {
    action: String,
    #[serde(default)]
    reason: String,
}

pub struct Moderator {
    words: Vec<String>,
    patterns: RegexSet,
    reject: bool,
    webhook: Option<Webhook>,
}

struct Webhook {
    client: reqwest::Client,
    url: String,
    fail_closed: bool,
}

impl Moderator {
    pub fn new(cfg: &ModerationConfig) -> Result<Self, ModerationError> {
        let webhook = if cfg.webhook_url.is_empty() {
            None
        } else {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_millis(cfg.webhook_timeout_ms))
                .build()
                .map_err(|e| ModerationError::Webhook(e.to_string()))?;
            Some(Webhook { client, url: cfg.webhook_url.clone(), fail_closed: cfg.webhook_fail_closed })
        };
        Ok(Self {
            words: cfg.blocked_words.iter().filter(|w| !w.is_empty()).map(|w| w.to_lowercase()).collect(),
            patterns: RegexSet::new(&cfg.blocked_patterns)?,
            reject: cfg.action == "reject",
            webhook,
        })
    }

    /// Nothing configured: every message is allowed without work.
    pub fn disabled() -> Self {
        Self { words: Vec::new(), patterns: RegexSet::empty(), reject: true, webhook: None }
    }

    pub fn is_enabled(&self) -> bool {
        !self.words.is_empty() || !self.patterns.is_empty() || self.webhook.is_some()
    }

    /// The text a list check looks at: a text message's `text`, a file's or
    /// image's `name`.
    fn checked_text(content_type: &str, content: &str) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(content).ok()?;
        let field = if content_type == "text" { "text" } else { "name" };
        v.get(field)?.as_str().map(str::to_owned)
    }

    pub async fn check(&self, sender_id: u64, conversation_id: &str, content_type: &str, content: &str) -> Verdict {
        if !self.words.is_empty() || !self.patterns.is_empty() {
            if let Some(text) = Self::checked_text(content_type, content) {
                let lower = text.to_lowercase();
                let hit = self.words.iter().any(|w| lower.contains(w.as_str())) || self.patterns.is_match(&text);
                if hit {
                    let why = "the message contains blocked content".to_owned();
                    return if self.reject { Verdict::Reject(why) } else { Verdict::Flag(why) };
                }
            }
        }
        match &self.webhook {
            Some(w) => w.check(sender_id, conversation_id, content_type, content).await,
            None => Verdict::Allow,
        }
    }
}

impl Webhook {
    async fn check(&self, sender_id: u64, conversation_id: &str, content_type: &str, content: &str) -> Verdict {
        let Ok(raw) = serde_json::value::RawValue::from_string(content.to_owned()) else {
            return Verdict::Allow; // content is validated JSON before it gets here
        };
        let body = WebhookRequest { sender_id: sender_id.to_string(), conversation_id, content_type, content: &raw };
        let answer = async {
            let resp = self.client.post(&self.url).json(&body).send().await?.error_for_status()?;
            resp.json::<WebhookResponse>().await
        }
        .await;
        match answer {
            Ok(r) => match r.action.as_str() {
                "reject" => {
                    Verdict::Reject(if r.reason.is_empty() { "rejected by moderation".into() } else { r.reason })
                }
                "flag" => Verdict::Flag(r.reason),
                "allow" => Verdict::Allow,
                other => self.failed(&format!("unknown action {other:?}")),
            },
            Err(e) => self.failed(&e.to_string()),
        }
    }

    fn failed(&self, why: &str) -> Verdict {
        warn!(url = %self.url, error = why, fail_closed = self.fail_closed, "moderation webhook failed");
        if self.fail_closed {
            Verdict::Reject("moderation is unavailable; try again later".into())
        } else {
            Verdict::Allow
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(words: &[&str], patterns: &[&str], action: &str) -> ModerationConfig {
        ModerationConfig {
            blocked_words: words.iter().map(|s| s.to_string()).collect(),
            blocked_patterns: patterns.iter().map(|s| s.to_string()).collect(),
            action: action.into(),
            ..ModerationConfig::default()
        }
    }

    #[tokio::test]
    async fn words_and_patterns() {
        let m = Moderator::new(&cfg(&["Spam"], &[r"\bbuy\s+now\b"], "reject")).unwrap();
        assert!(m.is_enabled());
        assert_eq!(m.check(1, "s_1_2", "text", r#"{"text":"hello"}"#).await, Verdict::Allow);
        assert!(matches!(m.check(1, "s_1_2", "text", r#"{"text":"so much SPAM here"}"#).await, Verdict::Reject(_)));
        assert!(matches!(m.check(1, "s_1_2", "text", r#"{"text":"Buy  now!"}"#).await, Verdict::Allow));
        assert!(matches!(m.check(1, "s_1_2", "text", r#"{"text":"buy  now!"}"#).await, Verdict::Reject(_)));
        assert!(matches!(m.check(1, "s_1_2", "file", r#"{"name":"spam.pdf","url":"x"}"#).await, Verdict::Reject(_)));
        // the key "text" is not content
        let m = Moderator::new(&cfg(&["text"], &[], "flag")).unwrap();
        assert_eq!(m.check(1, "s_1_2", "text", r#"{"text":"hi"}"#).await, Verdict::Allow);
        assert!(matches!(m.check(1, "s_1_2", "text", r#"{"text":"a text"}"#).await, Verdict::Flag(_)));
        assert!(Moderator::new(&cfg(&[], &["("], "reject")).is_err());
        assert!(!Moderator::disabled().is_enabled());
    }
}
