//! REST endpoints of groups (protocol v1). The database is changed first,
//! then the cached member list is invalidated, then a membership event is
//! queued so it lands in the group's sequence as a `system` message.

use crate::api::{ApiError, ApiJson, ApiState, AuthUser};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use gochat_common::convid::ConversationId;
use gochat_proto::bus;
use gochat_repo::{Group, GroupMember, GroupRole, RepoError};
use serde::{Deserialize, Serialize};
use tracing::{error, info};

const MAX_NAME_CHARS: usize = 64;

#[derive(Serialize)]
struct MemberView {
    user_id: String,
    role: &'static str,
    joined_at: i64,
}

#[derive(Serialize)]
struct GroupView {
    group_id: String,
    conversation_id: String,
    name: String,
    owner_id: String,
    created_at: i64,
    /// Whether members added later read the backlog (see crate::privacy).
    history_visible_to_new_members: bool,
    members: Vec<MemberView>,
}

fn view(g: &Group, members: &[GroupMember]) -> GroupView {
    GroupView {
        group_id: g.id.to_string(),
        conversation_id: ConversationId::Group(g.id).to_string(),
        name: g.name.clone(),
        owner_id: g.owner_id.to_string(),
        created_at: g.created_at,
        history_visible_to_new_members: g.history_visible_to_new_members,
        members: members
            .iter()
            .map(|m| MemberView { user_id: m.user_id.to_string(), role: m.role.as_str(), joined_at: m.joined_at })
            .collect(),
    }
}

fn parse_id(s: &str, code: &'static str) -> Result<u64, ApiError> {
    let ok = !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| s.parse().ok())
        .flatten()
        .ok_or_else(|| ApiError::bad_request(code, "ids are decimal strings of 64-bit unsigned integers"))
}

fn parse_ids(ids: &[String]) -> Result<Vec<u64>, ApiError> {
    let mut v = ids.iter().map(|s| parse_id(s, "invalid_user_id")).collect::<Result<Vec<_>, _>>()?;
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "unknown_group", "no such group")
}

fn forbidden(message: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

fn valid_name(name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request("invalid_name", "group name must be 1-64 printable characters"));
    }
    Ok(name.to_owned())
}

/// The group and the caller's membership; 404 when the group does not
/// exist, 403 when the caller is not in it.
async fn group_for(st: &ApiState, gid: u64, caller: u64) -> Result<(Group, GroupMember), ApiError> {
    let group = st.logic.store.group_by_id(gid).await?.ok_or_else(not_found)?;
    let me = st
        .logic
        .store
        .group_member(gid, caller)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::FORBIDDEN, "not_member", "you are not a member of this group"))?;
    Ok((group, me))
}

/// Every id must be a registered user.
async fn check_users_exist(st: &ApiState, ids: &[u64]) -> Result<(), ApiError> {
    let found = st.logic.store.existing_users(ids).await?;
    if found.len() != ids.len() {
        let missing: Vec<String> = ids.iter().filter(|i| !found.contains(i)).take(10).map(u64::to_string).collect();
        return Err(ApiError::bad_request("unknown_user", format!("no such user: {}", missing.join(", "))));
    }
    Ok(())
}

/// Queue the membership event; the change itself is already stored, so a
/// failure here costs the system message, not the change.
async fn announce(st: &ApiState, gid: u64, actor: u64, event: &str, user_ids: Vec<u64>, notify: Vec<u64>) {
    let ev = bus::SystemEvent {
        event_id: st.logic.ids().next_id(),
        group_id: gid,
        actor_id: actor,
        event: event.to_owned(),
        user_ids,
        notify,
        at_ms: gochat_common::now_ms(),
    };
    if let Err(e) = st.logic.publish_system(ev).await {
        error!(group_id = gid, event, error = %e, "membership event not queued; no system message for it");
    }
}

#[derive(Deserialize)]
pub struct CreateBody {
    name: String,
    #[serde(default)]
    member_ids: Vec<String>,
    #[serde(default)]
    history_visible_to_new_members: bool,
}

pub async fn create(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    ApiJson(body): ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    let name = valid_name(&body.name)?;
    let mut ids = parse_ids(&body.member_ids)?;
    ids.retain(|u| *u != caller);
    if ids.len() + 1 > st.logic.config().max_group_members {
        return Err(ApiError::bad_request("group_too_large", "too many members for one group"));
    }
    ids.push(caller);
    ids.sort_unstable();
    check_users_exist(&st, &ids).await?;
    let now = gochat_common::now_ms();
    let group = Group {
        id: st.logic.ids().next_id(),
        name,
        owner_id: caller,
        created_at: now,
        history_visible_to_new_members: body.history_visible_to_new_members,
    };
    let members: Vec<GroupMember> = ids
        .iter()
        .map(|&u| GroupMember {
            user_id: u,
            role: if u == caller { GroupRole::Owner } else { GroupRole::Member },
            joined_at: now,
        })
        .collect();
    st.logic.store.create_group(&group, &members).await?;
    info!(group_id = group.id, owner_id = caller, members = members.len(), "group created");
    announce(&st, group.id, caller, "member_joined", ids, Vec::new()).await;
    Ok((StatusCode::CREATED, Json(view(&group, &members))).into_response())
}

#[derive(Serialize)]
struct GroupList {
    groups: Vec<GroupView>,
}

pub async fn mine(State(st): State<ApiState>, AuthUser(caller): AuthUser) -> Result<Response, ApiError> {
    let groups = st.logic.store.groups_of_user(caller).await?;
    let mut out = Vec::with_capacity(groups.len());
    for g in &groups {
        let members = st.logic.store.group_members(g.id).await?;
        out.push(view(g, &members));
    }
    Ok(Json(GroupList { groups: out }).into_response())
}

pub async fn get_one(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path(gid): Path<String>,
) -> Result<Response, ApiError> {
    let gid = parse_id(&gid, "invalid_group_id")?;
    let (group, _) = group_for(&st, gid, caller).await?;
    let members = st.logic.store.group_members(gid).await?;
    Ok(Json(view(&group, &members)).into_response())
}

#[derive(Deserialize)]
pub struct AddBody {
    user_ids: Vec<String>,
}

pub async fn add_members(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path(gid): Path<String>,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<Response, ApiError> {
    let gid = parse_id(&gid, "invalid_group_id")?;
    let (group, me) = group_for(&st, gid, caller).await?;
    if !me.role.can_manage() {
        return Err(forbidden("only the owner or an admin can add members"));
    }
    let ids = parse_ids(&body.user_ids)?;
    if ids.is_empty() {
        return Err(ApiError::bad_request("invalid_request", "user_ids must not be empty"));
    }
    check_users_exist(&st, &ids).await?;
    let current = st.logic.members(gid).await?;
    let new = ids.iter().filter(|u| current.binary_search(u).is_err()).count();
    if current.len() + new > st.logic.config().max_group_members {
        return Err(ApiError::new(StatusCode::CONFLICT, "group_full", "the group has reached its member limit"));
    }
    let now = gochat_common::now_ms();
    let rows: Vec<GroupMember> =
        ids.iter().map(|&u| GroupMember { user_id: u, role: GroupRole::Member, joined_at: now }).collect();
    let added = match st.logic.store.add_group_members(gid, &rows).await {
        Ok(a) => a,
        Err(RepoError::GroupNotFound) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    st.logic.invalidate_members(gid).await;
    if !added.is_empty() {
        info!(group_id = gid, by = caller, added = added.len(), "members added");
        announce(&st, gid, caller, "member_joined", added, Vec::new()).await;
    }
    let members = st.logic.store.group_members(gid).await?;
    Ok(Json(view(&group, &members)).into_response())
}

fn rank(r: GroupRole) -> u8 {
    match r {
        GroupRole::Owner => 2,
        GroupRole::Admin => 1,
        GroupRole::Member => 0,
    }
}

pub async fn remove_member(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path((gid, uid)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let gid = parse_id(&gid, "invalid_group_id")?;
    let uid = parse_id(&uid, "invalid_user_id")?;
    let (_, me) = group_for(&st, gid, caller).await?;
    let event =
        if uid == caller {
            if me.role == GroupRole::Owner {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "owner_cannot_leave",
                    "the owner cannot leave the group; dissolve it instead",
                ));
            }
            "member_left"
        } else {
            let target =
                st.logic.store.group_member(gid, uid).await?.ok_or_else(|| {
                    ApiError::new(StatusCode::NOT_FOUND, "unknown_member", "the user is not a member")
                })?;
            if !me.role.can_manage() || rank(me.role) <= rank(target.role) {
                return Err(forbidden("only the owner, or an admin for plain members, can remove a member"));
            }
            "member_removed"
        };
    if !st.logic.store.remove_group_member(gid, uid).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_member", "the user is not a member"));
    }
    st.logic.invalidate_members(gid).await;
    info!(group_id = gid, user_id = uid, by = caller, event, "member removed");
    announce(&st, gid, caller, event, vec![uid], vec![uid]).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
pub struct RoleBody {
    role: String,
}

pub async fn set_role(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path((gid, uid)): Path<(String, String)>,
    ApiJson(body): ApiJson<RoleBody>,
) -> Result<Response, ApiError> {
    let gid = parse_id(&gid, "invalid_group_id")?;
    let uid = parse_id(&uid, "invalid_user_id")?;
    let role = match GroupRole::parse(&body.role) {
        Some(r @ (GroupRole::Admin | GroupRole::Member)) => r,
        _ => return Err(ApiError::bad_request("invalid_role", "role must be \"admin\" or \"member\"")),
    };
    let (group, me) = group_for(&st, gid, caller).await?;
    if me.role != GroupRole::Owner {
        return Err(forbidden("only the owner can change roles"));
    }
    if uid == group.owner_id {
        return Err(ApiError::bad_request("invalid_role", "the owner's role cannot be changed"));
    }
    if !st.logic.store.set_group_member_role(gid, uid, role).await? {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "unknown_member", "the user is not a member"));
    }
    info!(group_id = gid, user_id = uid, role = role.as_str(), "member role changed");
    let members = st.logic.store.group_members(gid).await?;
    Ok(Json(view(&group, &members)).into_response())
}

pub async fn dissolve(
    State(st): State<ApiState>,
    AuthUser(caller): AuthUser,
    Path(gid): Path<String>,
) -> Result<Response, ApiError> {
    let gid = parse_id(&gid, "invalid_group_id")?;
    let (_, me) = group_for(&st, gid, caller).await?;
    if me.role != GroupRole::Owner {
        return Err(forbidden("only the owner can dissolve the group"));
    }
    let former: Vec<u64> = st.logic.store.group_members(gid).await?.into_iter().map(|m| m.user_id).collect();
    if !st.logic.store.delete_group(gid).await? {
        return Err(not_found());
    }
    st.logic.invalidate_members(gid).await;
    info!(group_id = gid, by = caller, members = former.len(), "group dissolved");
    announce(&st, gid, caller, "group_dissolved", Vec::new(), former).await;
    Ok(StatusCode::NO_CONTENT.into_response())
}
