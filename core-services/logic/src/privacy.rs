//! Who may see what beyond conversation membership (issue #9, items 14-15):
//!
//! - **Presence** (`GET /api/v1/users/{uid}/presence`) is shown only to the
//!   user themself and to users who share a conversation with them: a 1:1
//!   conversation holding at least one message, or a group both are members
//!   of. Everyone else gets 403 `no_shared_conversation`, whether or not the
//!   id belongs to a user, so the answer never tells a stranger that an
//!   account exists.
//! - **Group history starts at the join.** A member added to a group reads
//!   its messages only after their join seq (the conversation's last seq
//!   when they were added; 0 for the members it was created with), unless
//!   the group was created with `history_visible_to_new_members`. This holds
//!   for every path that returns stored messages: REST history and WebSocket
//!   `sync`, which both page through [`Logic::member_page`].

use crate::api::{ApiError, ApiState, AuthUser};
use crate::logic::LogicError;
use crate::Logic;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gochat_common::convid::ConversationId;
use gochat_repo::StoredMessage;
use serde_json::json;

impl Logic {
    /// May `viewer` see `target`'s presence? Themself always; anyone else
    /// only through a shared conversation (one store lookup).
    pub async fn may_see_presence(&self, viewer: u64, target: u64) -> Result<bool, LogicError> {
        if viewer == target {
            return Ok(true);
        }
        Ok(self.store.shares_conversation(viewer, target).await?)
    }

    /// One page of `cid` after `after_seq` for `user_id`, who passed the
    /// membership check ([`Logic::access`]). In a group the page starts no
    /// earlier than the member's read floor; a member removed since the
    /// check (the cached member list was older) gets an empty page.
    pub async fn member_page(
        &self,
        cid: &ConversationId,
        user_id: u64,
        after_seq: u64,
        limit: u32,
    ) -> Result<(Vec<StoredMessage>, bool), LogicError> {
        let after = match *cid {
            ConversationId::Single { .. } => after_seq,
            ConversationId::Group(gid) => match self.store.group_read_floor(gid, user_id).await? {
                Some(floor) => after_seq.max(floor),
                None => return Ok((Vec::new(), false)),
            },
        };
        Ok(self.page(&cid.to_string(), after, limit).await?)
    }
}

/// `GET /api/v1/users/{uid}/presence`.
pub async fn presence(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path(uid): Path<String>,
) -> Result<Response, ApiError> {
    let uid: u64 = uid.parse().map_err(|_| ApiError::bad_request("invalid_user_id", "user ids are decimal strings"))?;
    if !st.logic.may_see_presence(caller, uid).await? {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_shared_conversation",
            "presence is shown only to users who share a conversation with this user",
        ));
    }
    let sessions = st.logic.sessions.sessions(&[uid]).await.map_err(ApiError::internal)?;
    Ok(Json(json!({"user_id": uid.to_string(), "online": !sessions.is_empty(), "connections": sessions.len()}))
        .into_response())
}
