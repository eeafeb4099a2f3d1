//! The repo over gRPC. In cluster mode `gochat repo` runs as its own process
//! in front of the database, serving [`service`] (and grpc.health.v1) with
//! [`serve`]; logic persists through this client when the repo runs as its
//! own process: [`RepoClient`] implements [`gochat_repo::Store`], so the
//! message path (dedup → seq → persist → ack + push) is the same code as with
//! an in-process `SqliteStore`/`MySqlStore`, and an ack still means the
//! batch's transaction committed on the far side.
//!
//! Errors cross the wire as gRPC statuses with a google.rpc-compatible
//! `ErrorInfo` detail (see proto/gochat_repo.proto): `UsernameTaken`,
//! `Conflict` and `GroupNotFound` come back as themselves, everything else
//! (database, transport, deadline) as [`RepoError::Rpc`].

use async_trait::async_trait;
use gochat_repo::{Appended, Group, GroupMember, GroupRole, NewMessage, RepoError, Store, StoredMessage, User};
use prost::Message as _;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status};

/// Generated messages, server and client of `gochat.repo.v1`.
#[allow(clippy::all)]
pub mod pb {
    tonic::include_proto!("gochat.repo.v1");
}

use pb::repo_server::{Repo, RepoServer};

mod tokens;

/// Largest request or response either side accepts or sends (large
/// `append_messages` batches and `messages_after` pages; a 20,000-member
/// group list is well under 1 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How long the client waits for a TCP connection to the repo.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of one call, end to end.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// `ErrorInfo.domain` of the errors this service raises.
const ERROR_DOMAIN: &str = "gochat.repo.v1";
const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const REASON_USERNAME_TAKEN: &str = "USERNAME_TAKEN";
const REASON_CONFLICT: &str = "CONFLICT";
const REASON_GROUP_NOT_FOUND: &str = "GROUP_NOT_FOUND";
const REASON_DATABASE: &str = "DATABASE";
const REASON_MIGRATE: &str = "MIGRATE";
const REASON_RPC: &str = "RPC";

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

// ---------------------------------------------------------------- server

/// The `gochat.repo.v1.Repo` implementation over any [`Store`].
#[derive(Clone)]
pub struct RepoService {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for RepoService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoService").finish_non_exhaustive()
    }
}

/// The Repo service over `store`, ready for `Server::builder().add_service`,
/// with [`MAX_MESSAGE_BYTES`] limits.
pub fn service(store: Arc<dyn Store>) -> RepoServer<RepoService> {
    RepoServer::new(RepoService { store })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Serve the Repo service and grpc.health.v1 (SERVING for
/// `gochat.repo.v1.Repo` and for the whole server) on an already-bound
/// listener until `shutdown` completes, then drain in-flight calls.
pub async fn serve(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_with_token(store, listener, None, shutdown).await
}

/// [`serve`], with the Repo service refusing every call that does not carry
/// `authorization: Bearer {auth_token}` with UNAUTHENTICATED.
/// grpc.health.v1 stays open for probes. `None` or an empty token = no check.
pub async fn serve_with_token(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    auth_token: Option<String>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let check = TokenCheck { expected: auth_token.filter(|t| !t.is_empty()).map(|t| Arc::from(t.into_bytes())) };
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RepoServer<RepoService>>().await;
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, authenticated = check.expected.is_some(), "repo grpc service listening");
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(health_service)
        .add_service(InterceptedService::new(service(store), check))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    tracing::info!(addr = ?addr, "repo grpc service stopped");
    Ok(())
}

/// Server side of `repo.auth_token`: the bearer token compared in constant time.
#[derive(Clone)]
struct TokenCheck {
    expected: Option<Arc<[u8]>>,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else { return Ok(req) };
        let given =
            req.metadata().get("authorization").and_then(|v| v.as_bytes().strip_prefix(b"Bearer ")).unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(req)
        } else {
            Err(Status::unauthenticated("missing or wrong repo token"))
        }
    }
}

/// Equality whose time depends only on the lengths, never on where the
/// inputs first differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for (i, y) in b.iter().enumerate() {
        let x = a.get(i).copied().unwrap_or(0);
        diff |= u64::from(std::hint::black_box(x ^ y));
    }
    diff == 0
}

/// Client side of `repo.auth_token`: adds `authorization: Bearer {token}`.
#[derive(Debug, Clone, Default)]
pub struct TokenAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl tonic::service::Interceptor for TokenAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

pub(crate) fn required<T>(v: Option<T>, field: &str) -> Result<T, Status> {
    v.ok_or_else(|| Status::invalid_argument(format!("missing field {field}")))
}

#[async_trait]
impl Repo for RepoService {
    async fn create_user(
        &self,
        req: Request<pb::CreateUserRequest>,
    ) -> Result<Response<pb::CreateUserResponse>, Status> {
        let user = user_from_pb(required(req.into_inner().user, "user")?);
        self.store.create_user(&user).await.map_err(|e| to_status("create_user", e))?;
        Ok(Response::new(pb::CreateUserResponse {}))
    }

    async fn user_by_username(
        &self,
        req: Request<pb::UserByUsernameRequest>,
    ) -> Result<Response<pb::UserResponse>, Status> {
        let user = self
            .store
            .user_by_username(&req.into_inner().username)
            .await
            .map_err(|e| to_status("user_by_username", e))?;
        Ok(Response::new(pb::UserResponse { user: user.map(user_to_pb) }))
    }

    async fn user_by_id(&self, req: Request<pb::UserByIdRequest>) -> Result<Response<pb::UserResponse>, Status> {
        let user = self.store.user_by_id(req.into_inner().id).await.map_err(|e| to_status("user_by_id", e))?;
        Ok(Response::new(pb::UserResponse { user: user.map(user_to_pb) }))
    }

    async fn existing_users(
        &self,
        req: Request<pb::ExistingUsersRequest>,
    ) -> Result<Response<pb::ExistingUsersResponse>, Status> {
        let ids = self.store.existing_users(&req.into_inner().ids).await.map_err(|e| to_status("existing_users", e))?;
        Ok(Response::new(pb::ExistingUsersResponse { ids }))
    }

    async fn append_messages(
        &self,
        req: Request<pb::AppendMessagesRequest>,
    ) -> Result<Response<pb::AppendMessagesResponse>, Status> {
        let batch: Vec<NewMessage> = req.into_inner().messages.into_iter().map(new_message_from_pb).collect();
        let out = self.store.append_messages(&batch).await.map_err(|e| to_status("append_messages", e))?;
        let results =
            out.into_iter().map(|a| pb::Appended { message: Some(message_to_pb(a.message)), fresh: a.fresh }).collect();
        Ok(Response::new(pb::AppendMessagesResponse { results }))
    }

    async fn messages_by_client_ids(
        &self,
        req: Request<pb::MessagesByClientIdsRequest>,
    ) -> Result<Response<pb::MessagesResponse>, Status> {
        let keys: Vec<(u64, String)> =
            req.into_inner().keys.into_iter().map(|k| (k.sender_id, k.client_msg_id)).collect();
        let found =
            self.store.messages_by_client_ids(&keys).await.map_err(|e| to_status("messages_by_client_ids", e))?;
        Ok(Response::new(pb::MessagesResponse { messages: found.into_iter().map(message_to_pb).collect() }))
    }

    async fn max_seq(&self, req: Request<pb::MaxSeqRequest>) -> Result<Response<pb::MaxSeqResponse>, Status> {
        let max_seq =
            self.store.max_seq(&req.into_inner().conversation_id).await.map_err(|e| to_status("max_seq", e))?;
        Ok(Response::new(pb::MaxSeqResponse { max_seq }))
    }

    async fn messages_after(
        &self,
        req: Request<pb::MessagesAfterRequest>,
    ) -> Result<Response<pb::MessagesResponse>, Status> {
        let r = req.into_inner();
        let page = self
            .store
            .messages_after(&r.conversation_id, r.after_seq, r.limit)
            .await
            .map_err(|e| to_status("messages_after", e))?;
        Ok(Response::new(pb::MessagesResponse { messages: page.into_iter().map(message_to_pb).collect() }))
    }

    async fn ping(&self, _req: Request<pb::PingRequest>) -> Result<Response<pb::PingResponse>, Status> {
        self.store.ping().await.map_err(|e| to_status("ping", e))?;
        Ok(Response::new(pb::PingResponse {}))
    }

    async fn create_group(
        &self,
        req: Request<pb::CreateGroupRequest>,
    ) -> Result<Response<pb::CreateGroupResponse>, Status> {
        let r = req.into_inner();
        let group = group_from_pb(required(r.group, "group")?);
        let members = members_from_pb(r.members).map_err(Status::invalid_argument)?;
        self.store.create_group(&group, &members).await.map_err(|e| to_status("create_group", e))?;
        Ok(Response::new(pb::CreateGroupResponse {}))
    }

    async fn group_by_id(&self, req: Request<pb::GroupByIdRequest>) -> Result<Response<pb::GroupResponse>, Status> {
        let group = self.store.group_by_id(req.into_inner().group_id).await.map_err(|e| to_status("group_by_id", e))?;
        Ok(Response::new(pb::GroupResponse { group: group.map(group_to_pb) }))
    }

    async fn groups_of_user(
        &self,
        req: Request<pb::GroupsOfUserRequest>,
    ) -> Result<Response<pb::GroupsResponse>, Status> {
        let groups =
            self.store.groups_of_user(req.into_inner().user_id).await.map_err(|e| to_status("groups_of_user", e))?;
        Ok(Response::new(pb::GroupsResponse { groups: groups.into_iter().map(group_to_pb).collect() }))
    }

    async fn group_members(
        &self,
        req: Request<pb::GroupMembersRequest>,
    ) -> Result<Response<pb::GroupMembersResponse>, Status> {
        let members =
            self.store.group_members(req.into_inner().group_id).await.map_err(|e| to_status("group_members", e))?;
        Ok(Response::new(pb::GroupMembersResponse { members: members.into_iter().map(member_to_pb).collect() }))
    }

    async fn group_member(
        &self,
        req: Request<pb::GroupMemberRequest>,
    ) -> Result<Response<pb::GroupMemberResponse>, Status> {
        let r = req.into_inner();
        let member = self.store.group_member(r.group_id, r.user_id).await.map_err(|e| to_status("group_member", e))?;
        Ok(Response::new(pb::GroupMemberResponse { member: member.map(member_to_pb) }))
    }

    async fn add_group_members(
        &self,
        req: Request<pb::AddGroupMembersRequest>,
    ) -> Result<Response<pb::AddGroupMembersResponse>, Status> {
        let r = req.into_inner();
        let members = members_from_pb(r.members).map_err(Status::invalid_argument)?;
        let added_user_ids =
            self.store.add_group_members(r.group_id, &members).await.map_err(|e| to_status("add_group_members", e))?;
        Ok(Response::new(pb::AddGroupMembersResponse { added_user_ids }))
    }

    async fn remove_group_member(
        &self,
        req: Request<pb::RemoveGroupMemberRequest>,
    ) -> Result<Response<pb::RemoveGroupMemberResponse>, Status> {
        let r = req.into_inner();
        let removed = self
            .store
            .remove_group_member(r.group_id, r.user_id)
            .await
            .map_err(|e| to_status("remove_group_member", e))?;
        Ok(Response::new(pb::RemoveGroupMemberResponse { removed }))
    }

    async fn set_group_member_role(
        &self,
        req: Request<pb::SetGroupMemberRoleRequest>,
    ) -> Result<Response<pb::SetGroupMemberRoleResponse>, Status> {
        let r = req.into_inner();
        let role = role_from_pb(r.role).map_err(Status::invalid_argument)?;
        let updated = self
            .store
            .set_group_member_role(r.group_id, r.user_id, role)
            .await
            .map_err(|e| to_status("set_group_member_role", e))?;
        Ok(Response::new(pb::SetGroupMemberRoleResponse { updated }))
    }

    async fn create_refresh_token(
        &self,
        req: Request<pb::CreateRefreshTokenRequest>,
    ) -> Result<Response<pb::CreateRefreshTokenResponse>, Status> {
        tokens::create_refresh_token(&*self.store, req).await
    }

    async fn rotate_refresh_token(
        &self,
        req: Request<pb::RotateRefreshTokenRequest>,
    ) -> Result<Response<pb::RotateRefreshTokenResponse>, Status> {
        tokens::rotate_refresh_token(&*self.store, req).await
    }

    async fn revoke_refresh_family(
        &self,
        req: Request<pb::RevokeRefreshFamilyRequest>,
    ) -> Result<Response<pb::RevokeRefreshFamilyResponse>, Status> {
        tokens::revoke_refresh_family(&*self.store, req).await
    }

    async fn revoke_all_sessions(
        &self,
        req: Request<pb::RevokeAllSessionsRequest>,
    ) -> Result<Response<pb::TokenVersionResponse>, Status> {
        tokens::revoke_all_sessions(&*self.store, req).await
    }

    async fn token_version(
        &self,
        req: Request<pb::TokenVersionRequest>,
    ) -> Result<Response<pb::TokenVersionResponse>, Status> {
        tokens::token_version(&*self.store, req).await
    }

    async fn delete_group(
        &self,
        req: Request<pb::DeleteGroupRequest>,
    ) -> Result<Response<pb::DeleteGroupResponse>, Status> {
        let deleted =
            self.store.delete_group(req.into_inner().group_id).await.map_err(|e| to_status("delete_group", e))?;
        Ok(Response::new(pb::DeleteGroupResponse { deleted }))
    }

    // privacy
    async fn shares_conversation(
        &self,
        req: Request<pb::SharesConversationRequest>,
    ) -> Result<Response<pb::SharesConversationResponse>, Status> {
        let r = req.into_inner();
        let shared = self.store.shares_conversation(r.a, r.b).await.map_err(|e| to_status("shares_conversation", e))?;
        Ok(Response::new(pb::SharesConversationResponse { shared }))
    }

    async fn group_read_floor(
        &self,
        req: Request<pb::GroupReadFloorRequest>,
    ) -> Result<Response<pb::GroupReadFloorResponse>, Status> {
        let r = req.into_inner();
        let floor =
            self.store.group_read_floor(r.group_id, r.user_id).await.map_err(|e| to_status("group_read_floor", e))?;
        Ok(Response::new(pb::GroupReadFloorResponse { member: floor.is_some(), after_seq: floor.unwrap_or(0) }))
    }
}

/// A store error as the status the client maps back (see the proto).
pub(crate) fn to_status(rpc: &'static str, e: RepoError) -> Status {
    let (code, reason) = match &e {
        RepoError::UsernameTaken => (Code::AlreadyExists, REASON_USERNAME_TAKEN),
        RepoError::Conflict => (Code::Aborted, REASON_CONFLICT),
        RepoError::GroupNotFound => (Code::NotFound, REASON_GROUP_NOT_FOUND),
        RepoError::Database(db) => (database_code(db), REASON_DATABASE),
        RepoError::Migrate(_) => (Code::Internal, REASON_MIGRATE),
        RepoError::Rpc(_) => (Code::Unavailable, REASON_RPC),
        RepoError::Inconsistent(_) | RepoError::Remote(_) => (Code::Internal, REASON_DATABASE),
    };
    match code {
        Code::AlreadyExists | Code::Aborted | Code::NotFound => tracing::debug!(rpc, error = %e, "repo call refused"),
        _ => tracing::warn!(rpc, code = ?code, error = %e, "repo call failed"),
    }
    let message = e.to_string();
    let info = pb::ErrorInfo { reason: reason.into(), domain: ERROR_DOMAIN.into() };
    let details = pb::RpcStatus {
        code: code as i32,
        message: message.clone(),
        details: vec![pb::AnyDetail { type_url: ERROR_INFO_TYPE_URL.into(), value: info.encode_to_vec() }],
    };
    Status::with_details(code, message, details.encode_to_vec().into())
}

/// UNAVAILABLE for failures a retry may cure (no connection, pool
/// exhausted), INTERNAL otherwise.
fn database_code(e: &sqlx::Error) -> Code {
    if gochat_repo::is_transient_db(e) {
        Code::Unavailable
    } else {
        Code::Internal
    }
}

// ---------------------------------------------------------------- client

/// [`Store`] over gRPC to a `gochat repo` process. Cheap to clone (clones
/// share one HTTP/2 channel); the channel connects lazily and reconnects
/// after the server went away, so a call while the repo is down fails with
/// [`RepoError::Rpc`] and a later one succeeds once it is back.
#[derive(Debug, Clone)]
pub struct RepoClient {
    inner: pb::repo_client::RepoClient<InterceptedService<Channel, TokenAuth>>,
}

impl RepoClient {
    /// A client of the repo at `endpoint` (`http://host:port`, or bare
    /// `host:port`). Does not connect yet; needs a tokio runtime (it spawns
    /// the channel's worker) and fails with [`RepoError::Rpc`] outside one.
    pub fn connect(endpoint: &str) -> Result<Self, RepoError> {
        Self::connect_with_token(endpoint, None)
    }

    /// [`RepoClient::connect`], sending `authorization: Bearer {token}` on
    /// every call (`repo.auth_token`); `None` or empty = no header.
    pub fn connect_with_token(endpoint: &str, token: Option<&str>) -> Result<Self, RepoError> {
        let auth = match token.filter(|t| !t.is_empty()) {
            None => TokenAuth::default(),
            Some(t) => TokenAuth {
                header: Some(
                    format!("Bearer {t}")
                        .parse()
                        .map_err(|_| RepoError::Rpc("repo auth token is not a valid header value".into()))?,
                ),
            },
        };
        let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| RepoError::Rpc(format!("invalid repo endpoint {endpoint:?}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .tcp_nodelay(true);
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RepoError::Rpc("repo client needs a tokio runtime".into()));
        }
        Ok(Self::from_channel_with(endpoint.connect_lazy(), auth))
    }

    /// A client over an existing channel (limits set to [`MAX_MESSAGE_BYTES`]).
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_channel_with(channel, TokenAuth::default())
    }

    fn from_channel_with(channel: Channel, auth: TokenAuth) -> Self {
        let inner = pb::repo_client::RepoClient::with_interceptor(channel, auth)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Self { inner }
    }

    pub(crate) fn client(&self) -> pb::repo_client::RepoClient<InterceptedService<Channel, TokenAuth>> {
        self.inner.clone()
    }
}

#[async_trait]
impl Store for RepoClient {
    async fn create_user(&self, user: &User) -> Result<(), RepoError> {
        let req = pb::CreateUserRequest { user: Some(user_to_pb(user.clone())) };
        self.client().create_user(req).await.map_err(from_status)?;
        Ok(())
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<User>, RepoError> {
        let req = pb::UserByUsernameRequest { username: username.to_owned() };
        let resp = self.client().user_by_username(req).await.map_err(from_status)?;
        Ok(resp.into_inner().user.map(user_from_pb))
    }

    async fn user_by_id(&self, id: u64) -> Result<Option<User>, RepoError> {
        let resp = self.client().user_by_id(pb::UserByIdRequest { id }).await.map_err(from_status)?;
        Ok(resp.into_inner().user.map(user_from_pb))
    }

    async fn existing_users(&self, ids: &[u64]) -> Result<Vec<u64>, RepoError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let req = pb::ExistingUsersRequest { ids: ids.to_vec() };
        let resp = self.client().existing_users(req).await.map_err(from_status)?;
        Ok(resp.into_inner().ids)
    }

    async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<Appended>, RepoError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let req = pb::AppendMessagesRequest { messages: batch.iter().map(new_message_to_pb).collect() };
        let resp = self.client().append_messages(req).await.map_err(from_status)?.into_inner();
        if resp.results.len() != batch.len() {
            return Err(bad_response(format!("{} results for {} messages", resp.results.len(), batch.len())));
        }
        resp.results
            .into_iter()
            .map(|a| match a.message {
                Some(m) => Ok(Appended { message: message_from_pb(m), fresh: a.fresh }),
                None => Err(bad_response("append result without its message".into())),
            })
            .collect()
    }

    async fn messages_by_client_ids(&self, keys: &[(u64, String)]) -> Result<Vec<StoredMessage>, RepoError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let keys = keys.iter().map(|(s, c)| pb::ClientKey { sender_id: *s, client_msg_id: c.clone() }).collect();
        let resp =
            self.client().messages_by_client_ids(pb::MessagesByClientIdsRequest { keys }).await.map_err(from_status)?;
        Ok(resp.into_inner().messages.into_iter().map(message_from_pb).collect())
    }

    async fn max_seq(&self, conversation_id: &str) -> Result<u64, RepoError> {
        let req = pb::MaxSeqRequest { conversation_id: conversation_id.to_owned() };
        let resp = self.client().max_seq(req).await.map_err(from_status)?;
        Ok(resp.into_inner().max_seq)
    }

    async fn messages_after(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, RepoError> {
        let req = pb::MessagesAfterRequest { conversation_id: conversation_id.to_owned(), after_seq, limit };
        let resp = self.client().messages_after(req).await.map_err(from_status)?;
        Ok(resp.into_inner().messages.into_iter().map(message_from_pb).collect())
    }

    async fn ping(&self) -> Result<(), RepoError> {
        self.client().ping(pb::PingRequest {}).await.map_err(from_status)?;
        Ok(())
    }

    async fn create_group(&self, group: &Group, members: &[GroupMember]) -> Result<(), RepoError> {
        let req = pb::CreateGroupRequest {
            group: Some(group_to_pb(group.clone())),
            members: members.iter().cloned().map(member_to_pb).collect(),
        };
        self.client().create_group(req).await.map_err(from_status)?;
        Ok(())
    }

    async fn group_by_id(&self, group_id: u64) -> Result<Option<Group>, RepoError> {
        let resp = self.client().group_by_id(pb::GroupByIdRequest { group_id }).await.map_err(from_status)?;
        Ok(resp.into_inner().group.map(group_from_pb))
    }

    async fn groups_of_user(&self, user_id: u64) -> Result<Vec<Group>, RepoError> {
        let resp = self.client().groups_of_user(pb::GroupsOfUserRequest { user_id }).await.map_err(from_status)?;
        Ok(resp.into_inner().groups.into_iter().map(group_from_pb).collect())
    }

    async fn group_members(&self, group_id: u64) -> Result<Vec<GroupMember>, RepoError> {
        let resp = self.client().group_members(pb::GroupMembersRequest { group_id }).await.map_err(from_status)?;
        members_from_pb(resp.into_inner().members).map_err(bad_response)
    }

    async fn group_member(&self, group_id: u64, user_id: u64) -> Result<Option<GroupMember>, RepoError> {
        let req = pb::GroupMemberRequest { group_id, user_id };
        let resp = self.client().group_member(req).await.map_err(from_status)?;
        resp.into_inner().member.map(member_from_pb).transpose().map_err(bad_response)
    }

    async fn add_group_members(&self, group_id: u64, members: &[GroupMember]) -> Result<Vec<u64>, RepoError> {
        let req = pb::AddGroupMembersRequest { group_id, members: members.iter().cloned().map(member_to_pb).collect() };
        let resp = self.client().add_group_members(req).await.map_err(from_status)?;
        Ok(resp.into_inner().added_user_ids)
    }

    async fn remove_group_member(&self, group_id: u64, user_id: u64) -> Result<bool, RepoError> {
        let req = pb::RemoveGroupMemberRequest { group_id, user_id };
        let resp = self.client().remove_group_member(req).await.map_err(from_status)?;
        Ok(resp.into_inner().removed)
    }

    async fn set_group_member_role(&self, group_id: u64, user_id: u64, role: GroupRole) -> Result<bool, RepoError> {
        let req = pb::SetGroupMemberRoleRequest { group_id, user_id, role: role_to_pb(role) as i32 };
        let resp = self.client().set_group_member_role(req).await.map_err(from_status)?;
        Ok(resp.into_inner().updated)
    }

    async fn delete_group(&self, group_id: u64) -> Result<bool, RepoError> {
        let resp = self.client().delete_group(pb::DeleteGroupRequest { group_id }).await.map_err(from_status)?;
        Ok(resp.into_inner().deleted)
    }

    // privacy
    async fn shares_conversation(&self, a: u64, b: u64) -> Result<bool, RepoError> {
        let resp =
            self.client().shares_conversation(pb::SharesConversationRequest { a, b }).await.map_err(from_status)?;
        Ok(resp.into_inner().shared)
    }

    async fn group_read_floor(&self, group_id: u64, user_id: u64) -> Result<Option<u64>, RepoError> {
        let req = pb::GroupReadFloorRequest { group_id, user_id };
        let r = self.client().group_read_floor(req).await.map_err(from_status)?.into_inner();
        Ok(r.member.then_some(r.after_seq))
    }
}

/// The `ErrorInfo.reason` of a status raised by this service, if any.
fn error_reason(status: &Status) -> Option<String> {
    let details = pb::RpcStatus::decode(status.details()).ok()?;
    details.details.iter().filter(|d| d.type_url == ERROR_INFO_TYPE_URL).find_map(|d| {
        let info = pb::ErrorInfo::decode(d.value.as_slice()).ok()?;
        (info.domain == ERROR_DOMAIN).then_some(info.reason)
    })
}

/// A status back into the [`RepoError`] the server's store returned.
pub(crate) fn from_status(status: Status) -> RepoError {
    match (status.code(), error_reason(&status).as_deref()) {
        (Code::AlreadyExists, Some(REASON_USERNAME_TAKEN)) => RepoError::UsernameTaken,
        (Code::Aborted, Some(REASON_CONFLICT)) => RepoError::Conflict,
        (Code::NotFound, Some(REASON_GROUP_NOT_FOUND)) => RepoError::GroupNotFound,
        // The repo reached its database, which refused: retrying will not help.
        (Code::Internal, Some(REASON_DATABASE | REASON_MIGRATE)) => RepoError::Remote(status.message().to_owned()),
        (code, _) => {
            let name = format!("{code:?}").to_lowercase();
            let msg = format!("{name}: {}", status.message());
            tracing::debug!(code = ?code, error = %msg, "repo rpc failed");
            RepoError::Rpc(msg)
        }
    }
}

// ------------------------------------------------------------ conversions

fn user_to_pb(u: User) -> pb::User {
    pb::User {
        id: u.id,
        username: u.username,
        password_hash: u.password_hash,
        nickname: u.nickname,
        avatar_url: u.avatar_url,
        created_at: u.created_at,
    }
}

fn user_from_pb(u: pb::User) -> User {
    User {
        id: u.id,
        username: u.username,
        password_hash: u.password_hash,
        nickname: u.nickname,
        avatar_url: u.avatar_url,
        created_at: u.created_at,
    }
}

fn message_to_pb(m: StoredMessage) -> pb::StoredMessage {
    pb::StoredMessage {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id,
        content_type: m.content_type,
        content: m.content,
        created_at: m.created_at,
    }
}

fn new_message_to_pb(m: &NewMessage) -> pb::NewMessage {
    pb::NewMessage {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id.clone(),
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id.clone(),
        content_type: m.content_type.clone(),
        content: m.content.clone(),
        created_at: m.created_at,
    }
}

fn new_message_from_pb(m: pb::NewMessage) -> NewMessage {
    NewMessage {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id,
        content_type: m.content_type,
        content: m.content,
        created_at: m.created_at,
    }
}

fn message_from_pb(m: pb::StoredMessage) -> StoredMessage {
    StoredMessage {
        msg_id: m.msg_id,
        conversation_id: m.conversation_id,
        seq: m.seq,
        sender_id: m.sender_id,
        client_msg_id: m.client_msg_id,
        content_type: m.content_type,
        content: m.content,
        created_at: m.created_at,
    }
}

/// A response the client cannot make sense of (e.g. a role it does not know).
fn bad_response(e: String) -> RepoError {
    RepoError::Rpc(format!("invalid repo response: {e}"))
}

fn group_to_pb(g: Group) -> pb::Group {
    pb::Group {
        id: g.id,
        name: g.name,
        owner_id: g.owner_id,
        created_at: g.created_at,
        history_visible_to_new_members: g.history_visible_to_new_members,
    }
}

fn group_from_pb(g: pb::Group) -> Group {
    Group {
        id: g.id,
        name: g.name,
        owner_id: g.owner_id,
        created_at: g.created_at,
        history_visible_to_new_members: g.history_visible_to_new_members,
    }
}

fn role_to_pb(r: GroupRole) -> pb::GroupRole {
    match r {
        GroupRole::Owner => pb::GroupRole::Owner,
        GroupRole::Admin => pb::GroupRole::Admin,
        GroupRole::Member => pb::GroupRole::Member,
    }
}

/// A wire role; unspecified or unknown values are an error.
fn role_from_pb(r: i32) -> Result<GroupRole, String> {
    match pb::GroupRole::try_from(r) {
        Ok(pb::GroupRole::Owner) => Ok(GroupRole::Owner),
        Ok(pb::GroupRole::Admin) => Ok(GroupRole::Admin),
        Ok(pb::GroupRole::Member) => Ok(GroupRole::Member),
        Ok(pb::GroupRole::Unspecified) | Err(_) => Err(format!("invalid group role {r}")),
    }
}

fn member_to_pb(m: GroupMember) -> pb::GroupMember {
    pb::GroupMember { user_id: m.user_id, role: role_to_pb(m.role) as i32, joined_at: m.joined_at }
}

fn member_from_pb(m: pb::GroupMember) -> Result<GroupMember, String> {
    Ok(GroupMember { user_id: m.user_id, role: role_from_pb(m.role)?, joined_at: m.joined_at })
}

fn members_from_pb(members: Vec<pb::GroupMember>) -> Result<Vec<GroupMember>, String> {
    members.into_iter().map(member_from_pb).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(e: RepoError) -> (Code, RepoError) {
        let status = to_status("test", e);
        (status.code(), from_status(status))
    }

    #[test]
    fn store_errors_map_to_codes_and_back() {
        let (code, e) = round_trip(RepoError::UsernameTaken);
        assert_eq!(code, Code::AlreadyExists);
        assert!(matches!(e, RepoError::UsernameTaken), "{e:?}");

        let (code, e) = round_trip(RepoError::Conflict);
        assert_eq!(code, Code::Aborted);
        assert!(matches!(e, RepoError::Conflict), "{e:?}");

        let (code, e) = round_trip(RepoError::GroupNotFound);
        assert_eq!(code, Code::NotFound);
        assert!(matches!(e, RepoError::GroupNotFound), "{e:?}");

        let (code, e) = round_trip(RepoError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(code, Code::Unavailable);
        assert!(matches!(&e, RepoError::Rpc(m) if m.contains("pool timed out")), "{e:?}");

        assert!(e.is_transient());

        let (code, e) = round_trip(RepoError::Database(sqlx::Error::RowNotFound));
        assert_eq!(code, Code::Internal);
        assert!(matches!(e, RepoError::Remote(_)), "{e:?}");
        assert!(!e.is_transient(), "a refused statement is not retried forever");

        let (code, e) = round_trip(RepoError::Rpc("upstream down".into()));
        assert_eq!(code, Code::Unavailable);
        assert!(matches!(&e, RepoError::Rpc(m) if m.contains("upstream down")), "{e:?}");
    }

    #[test]
    fn codes_without_our_detail_are_rpc_errors() {
        // A proxy's ALREADY_EXISTS / ABORTED is not a store verdict.
        assert!(matches!(from_status(Status::already_exists("x")), RepoError::Rpc(_)));
        assert!(matches!(from_status(Status::aborted("x")), RepoError::Rpc(_)));
        assert!(matches!(from_status(Status::not_found("x")), RepoError::Rpc(_)));
        assert!(matches!(from_status(Status::unavailable("tcp connect error")), RepoError::Rpc(_)));
        // Garbage details do not panic.
        let s = Status::with_details(Code::AlreadyExists, "x", vec![0xff, 0xff, 0xff].into());
        assert!(matches!(from_status(s), RepoError::Rpc(_)));
    }

    #[test]
    fn conversions_are_lossless() {
        let u = User {
            id: u64::MAX,
            username: "a".into(),
            password_hash: "h".into(),
            nickname: "n 😀".into(),
            avatar_url: "u".into(),
            created_at: -1,
        };
        assert_eq!(user_from_pb(user_to_pb(u.clone())), u);
        let m = StoredMessage {
            msg_id: u64::MAX,
            conversation_id: "s_1_2".into(),
            seq: u64::MAX - 1,
            sender_id: 1 << 63,
            client_msg_id: "c ".into(),
            content_type: "text".into(),
            content: "{}".into(),
            created_at: i64::MIN,
        };
        assert_eq!(message_from_pb(message_to_pb(m.clone())), m);
        let n = NewMessage::from(&m);
        assert_eq!(new_message_from_pb(new_message_to_pb(&n)), n);
        for history_visible_to_new_members in [false, true] {
            let g = Group {
                id: u64::MAX,
                name: "g 😀".into(),
                owner_id: 1 << 63,
                created_at: i64::MIN,
                history_visible_to_new_members,
            };
            assert_eq!(group_from_pb(group_to_pb(g.clone())), g);
        }
        for role in [GroupRole::Owner, GroupRole::Admin, GroupRole::Member] {
            let m = GroupMember { user_id: u64::MAX, role, joined_at: -1 };
            assert_eq!(member_from_pb(member_to_pb(m.clone())), Ok(m));
        }
        assert!(role_from_pb(pb::GroupRole::Unspecified as i32).is_err());
        assert!(role_from_pb(42).is_err());
    }

    #[tokio::test]
    async fn connect_rejects_a_bad_endpoint() {
        assert!(matches!(RepoClient::connect("http://[::1"), Err(RepoError::Rpc(_))));
        assert!(RepoClient::connect("127.0.0.1:1").is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"secret", b"secret"));
        for other in [&b""[..], b"secre", b"secret!", b"Secret", b"xecret"] {
            assert!(!constant_time_eq(other, b"secret"), "{other:?}");
        }
        assert!(RepoClient::connect_with_token("127.0.0.1:1", Some("bad\nvalue")).is_err());
    }

    #[test]
    fn connect_outside_a_runtime_is_an_error() {
        assert!(matches!(RepoClient::connect("127.0.0.1:1"), Err(RepoError::Rpc(_))));
    }
}
