//! The tokio tier of the message path. Logic consumes `im.upstream` in
//! batches: it deduplicates by (sender, client_msg_id), assigns each message
//! its per-conversation `seq`, persists the batch through the repo [`Store`],
//! and only then acks the sender and produces ONE push per (gateway, shard)
//! holding every local recipient. It also keeps the session registry fed by
//! the gateways' connect/disconnect events, and serves the REST API.
//!
//! Business logic is written once against three traits: the bus
//! ([`gochat_common::bus`]), the [`Store`] and the [`SessionStore`].
//!
//! [`Store`]: gochat_repo::Store
//! [`SessionStore`]: session::SessionStore

pub mod api;
pub mod auth_api;
pub mod fanout;
pub mod frames;
pub mod groups_api;
pub mod logic;
pub mod moderation;
pub mod password;
pub mod privacy;
pub mod redis_store;
pub mod session;
pub mod tokens;

pub use logic::{Access, Logic, LogicDeps, LogicMetrics};
