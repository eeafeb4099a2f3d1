//! The tokens RPCs (`// tokens` in proto/gochat_repo.proto): the server side
//! delegates to the store, [`RepoClient`] implements [`TokenStore`].

use crate::{from_status, pb, required, to_status, RepoClient};
use async_trait::async_trait;
use gochat_repo::{RefreshToken, RepoError, Rotation, Store, TokenStore};
use pb::rotate_refresh_token_response::Outcome;
use tonic::{Request, Response, Status};

pub(crate) async fn create_refresh_token(
    store: &dyn Store,
    req: Request<pb::CreateRefreshTokenRequest>,
) -> Result<Response<pb::CreateRefreshTokenResponse>, Status> {
    let t = required(req.into_inner().token, "token")?;
    let token = RefreshToken {
        token_hash: t.token_hash,
        user_id: t.user_id,
        family_id: t.family_id,
        created_at: t.created_at,
        expires_at: t.expires_at,
    };
    store.create_refresh_token(&token).await.map_err(|e| to_status("create_refresh_token", e))?;
    Ok(Response::new(pb::CreateRefreshTokenResponse {}))
}

pub(crate) async fn rotate_refresh_token(
    store: &dyn Store,
    req: Request<pb::RotateRefreshTokenRequest>,
) -> Result<Response<pb::RotateRefreshTokenResponse>, Status> {
    let r = req.into_inner();
    let rotation = store
        .rotate_refresh_token(&r.presented_hash, &r.next_hash, r.next_expires_at, r.now)
        .await
        .map_err(|e| to_status("rotate_refresh_token", e))?;
    let (outcome, user_id, family_id) = match rotation {
        Rotation::Rotated { user_id, family_id } => (Outcome::Rotated, user_id, family_id),
        Rotation::Reused { user_id, family_id } => (Outcome::Reused, user_id, family_id),
        Rotation::Revoked { user_id } => (Outcome::Revoked, user_id, 0),
        Rotation::Expired { user_id } => (Outcome::Expired, user_id, 0),
        Rotation::Unknown => (Outcome::Unknown, 0, 0),
    };
    Ok(Response::new(pb::RotateRefreshTokenResponse { outcome: outcome as i32, user_id, family_id }))
}

pub(crate) async fn revoke_refresh_family(
    store: &dyn Store,
    req: Request<pb::RevokeRefreshFamilyRequest>,
) -> Result<Response<pb::RevokeRefreshFamilyResponse>, Status> {
    let found = store
        .revoke_refresh_family(&req.into_inner().token_hash)
        .await
        .map_err(|e| to_status("revoke_refresh_family", e))?;
    Ok(Response::new(pb::RevokeRefreshFamilyResponse { found: found.is_some(), user_id: found.unwrap_or(0) }))
}

pub(crate) async fn revoke_all_sessions(
    store: &dyn Store,
    req: Request<pb::RevokeAllSessionsRequest>,
) -> Result<Response<pb::TokenVersionResponse>, Status> {
    let version =
        store.revoke_all_sessions(req.into_inner().user_id).await.map_err(|e| to_status("revoke_all_sessions", e))?;
    Ok(Response::new(pb::TokenVersionResponse { version }))
}

pub(crate) async fn token_version(
    store: &dyn Store,
    req: Request<pb::TokenVersionRequest>,
) -> Result<Response<pb::TokenVersionResponse>, Status> {
    let version = store.token_version(req.into_inner().user_id).await.map_err(|e| to_status("token_version", e))?;
    Ok(Response::new(pb::TokenVersionResponse { version }))
}

#[async_trait]
impl TokenStore for RepoClient {
    async fn create_refresh_token(&self, t: &RefreshToken) -> Result<(), RepoError> {
        let token = pb::RefreshToken {
            token_hash: t.token_hash.clone(),
            user_id: t.user_id,
            family_id: t.family_id,
            created_at: t.created_at,
            expires_at: t.expires_at,
        };
        let req = pb::CreateRefreshTokenRequest { token: Some(token) };
        self.client().create_refresh_token(req).await.map_err(from_status)?;
        Ok(())
    }

    async fn rotate_refresh_token(
        &self,
        presented_hash: &str,
        next_hash: &str,
        next_expires_at: i64,
        now: i64,
    ) -> Result<Rotation, RepoError> {
        let req = pb::RotateRefreshTokenRequest {
            presented_hash: presented_hash.to_owned(),
            next_hash: next_hash.to_owned(),
            next_expires_at,
            now,
        };
        let r = self.client().rotate_refresh_token(req).await.map_err(from_status)?.into_inner();
        let (user_id, family_id) = (r.user_id, r.family_id);
        Ok(match Outcome::try_from(r.outcome) {
            Ok(Outcome::Rotated) => Rotation::Rotated { user_id, family_id },
            Ok(Outcome::Reused) => Rotation::Reused { user_id, family_id },
            Ok(Outcome::Revoked) => Rotation::Revoked { user_id },
            Ok(Outcome::Expired) => Rotation::Expired { user_id },
            Ok(Outcome::Unknown) => Rotation::Unknown,
            Err(_) => return Err(RepoError::Rpc(format!("unknown rotation outcome {}", r.outcome))),
        })
    }

    async fn revoke_refresh_family(&self, token_hash: &str) -> Result<Option<u64>, RepoError> {
        let req = pb::RevokeRefreshFamilyRequest { token_hash: token_hash.to_owned() };
        let r = self.client().revoke_refresh_family(req).await.map_err(from_status)?.into_inner();
        Ok(r.found.then_some(r.user_id))
    }

    async fn revoke_all_sessions(&self, user_id: u64) -> Result<u64, RepoError> {
        let req = pb::RevokeAllSessionsRequest { user_id };
        Ok(self.client().revoke_all_sessions(req).await.map_err(from_status)?.into_inner().version)
    }

    async fn token_version(&self, user_id: u64) -> Result<u64, RepoError> {
        let req = pb::TokenVersionRequest { user_id };
        Ok(self.client().token_version(req).await.map_err(from_status)?.into_inner().version)
    }
}
