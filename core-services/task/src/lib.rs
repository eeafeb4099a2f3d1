//! The task tier of the message path: work logic hands off so the sender's
//! ack never waits for it. Logic produces typed tasks to `im.task` (key =
//! conversation id); [`runner::TaskRunner`] runs each through its
//! [`runner::TaskHandler`], retries failures through `im.task.retry` with
//! exponential backoff and jitter, and parks tasks that fail their last
//! attempt in `im.task.dlq` with the reason.
//!
//! Handlers: [`fanout::FanoutHandler`] delivers a large group's message
//! (members and sessions resolved in chunks, ONE push per gateway shard);
//! [`push::OfflinePushHandler`] notifies recipients without a live session
//! through a [`push::PushProvider`] (an HTTP webhook; APNs/FCM plug in behind
//! the same trait). Handlers are idempotent: each side effect is claimed in
//! the fast store, so a retried task never delivers twice.

pub mod fanout;
pub mod push;
pub mod runner;

pub use runner::{DeadLetters, TaskError, TaskHandler, TaskMetrics, TaskRunner};
