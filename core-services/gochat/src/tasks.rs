//! Wiring of the task tier, shared by `gochat dev` (in-process) and
//! `gochat task` (cluster mode).

use anyhow::Context;
use gochat_common::bus::Producer;
use gochat_common::config::Config;
use gochat_logic::password::HashCost;
use gochat_logic::Logic;
use gochat_proto::task::{FANOUT, OFFLINE_PUSH};
use gochat_task::fanout::FanoutHandler;
use gochat_task::push::{OfflinePushHandler, WebhookProvider};
use gochat_task::{DeadLetters, TaskMetrics, TaskRunner};
use std::sync::Arc;
use std::time::Duration;
use tracing::info;

/// A task runner with every handler the configuration enables.
pub fn runner(
    cfg: &Config,
    logic: &Arc<Logic>,
    producer: Arc<dyn Producer>,
    dead_letters: DeadLetters,
) -> anyhow::Result<Arc<TaskRunner>> {
    let metrics = Arc::new(TaskMetrics::default());
    let mut runner = TaskRunner::new(producer, logic.topics().clone(), cfg.task.clone(), dead_letters, metrics.clone());
    runner.register(FANOUT, Arc::new(FanoutHandler::new(logic.clone(), metrics.clone())));
    if !cfg.task.push_webhook_url.is_empty() {
        let provider = WebhookProvider::new(
            &cfg.task.push_webhook_url,
            &cfg.task.push_webhook_secret,
            Duration::from_millis(cfg.task.push_timeout_ms),
        )
        .context("offline-push webhook")?;
        let handler =
            OfflinePushHandler::new(Arc::new(provider), logic.sessions.clone(), cfg.task.push_batch_size, metrics);
        runner.register(OFFLINE_PUSH, Arc::new(handler));
        info!(url = %cfg.task.push_webhook_url, signed = !cfg.task.push_webhook_secret.is_empty(), "offline push via webhook");
    }
    Ok(Arc::new(runner))
}

pub fn hash_cost(cfg: &Config) -> HashCost {
    HashCost { memory_kib: cfg.auth.argon2_memory_kib, iterations: cfg.auth.argon2_iterations }
}

/// The REST API's password hasher (bounded concurrency) and login throttle.
pub fn password_guards(cfg: &Config) -> (gochat_logic::password::Hasher, Arc<gochat_logic::password::LoginThrottle>) {
    let slots = match cfg.auth.max_concurrent_hashes {
        0 => 2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let hasher = gochat_logic::password::Hasher::new(
        hash_cost(cfg),
        slots,
        Duration::from_millis(cfg.auth.hash_queue_timeout_ms),
    );
    let throttle = gochat_logic::password::LoginThrottle::new(
        cfg.auth.login_failures_max,
        Duration::from_secs(cfg.auth.login_failure_window_secs),
    );
    (hasher, Arc::new(throttle))
}
