//! Handlers for the mesh: peers, mesh status, invitations and joining. They answer 503 when the
//! node runs without the mesh (library users that serve only the local API).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::auth::Caller;
use super::body::JsonBody;
use super::error::ApiError;
use super::ApiState;
use crate::apps::App;
use crate::error::Error;
use crate::mesh::govern::Role;
use crate::mesh::Mesh;
use crate::naming::DatasetId;

type ApiResult<T> = Result<T, ApiError>;

/// Longest invitation lifetime accepted: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

pub(super) fn mesh(s: &ApiState) -> ApiResult<&Mesh> {
    match s.mesh.get() {
        None => Err(Error::Network("the mesh is not running on this node".into()).into()),
        Some(Some(mesh)) => Ok(mesh),
        Some(None) => {
            Err(Error::from(crate::error::Unavailable::Starting("the mesh starts")).into())
        }
    }
}

fn admin(c: &App, what: &str) -> ApiResult<()> {
    if c.admin {
        Ok(())
    } else {
        Err(Error::Forbidden(format!("{what} needs the admin token")).into())
    }
}

pub async fn peers(State(s): State<ApiState>, _c: Caller) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "peers": mesh(&s)?.peers().await? })))
}

/// The mesh's status; an app sees the catch-ups and forks of the datasets it holds a right on
/// only (the admin sees all).
pub async fn status(State(s): State<ApiState>, Caller(c): Caller) -> ApiResult<impl IntoResponse> {
    let mut status = mesh(&s)?.status().await?;
    if !c.admin {
        let sees = |ds: &str| DatasetId::parse(ds).is_ok_and(|id| s.node.may_see(&c, &id));
        status.catching_up.retain(|p| sees(&p.dataset));
        status.equivocations.retain(|e| sees(&e.dataset));
    }
    Ok(Json(status))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteSpec {
    /// Lifetime in seconds (default 24 h).
    #[serde(default)]
    ttl_secs: Option<u64>,
}

pub async fn invite(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(spec): JsonBody<InviteSpec>,
) -> ApiResult<impl IntoResponse> {
    admin(&c, "issuing an invitation")?;
    let ttl = spec
        .ttl_secs
        .map_or(crate::mesh::INVITE_TTL, Duration::from_secs);
    if ttl.is_zero() || ttl.as_secs() > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be 1 to {MAX_TTL_SECS}"
        )));
    }
    let (token, expires) = mesh(&s)?.invite(ttl).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "token": token, "expires": expires })),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinSpec {
    token: String,
}

pub async fn join(
    State(s): State<ApiState>,
    Caller(c): Caller,
    JsonBody(spec): JsonBody<JoinSpec>,
) -> ApiResult<impl IntoResponse> {
    admin(&c, "joining a mesh")?;
    let roster = mesh(&s)?.join(&spec.token).await?;
    Ok(Json(
        json!({ "mesh": roster.mesh, "members": roster.orgs() }),
    ))
}

pub async fn members(State(s): State<ApiState>, _c: Caller) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({ "members": mesh(&s)?.members() })))
}

pub async fn remove_member(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(org): Path<String>,
) -> ApiResult<impl IntoResponse> {
    admin(&c, "removing a member")?;
    let op = mesh(&s)?.remove_member(&org).await?;
    Ok(Json(
        json!({ "org": org, "state": "removed", "operation": op.id() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    role: String,
}

pub async fn set_role(
    State(s): State<ApiState>,
    Caller(c): Caller,
    Path(org): Path<String>,
    JsonBody(spec): JsonBody<RoleSpec>,
) -> ApiResult<impl IntoResponse> {
    admin(&c, "changing a role")?;
    let role = Role::parse(&spec.role)
        .ok_or_else(|| ApiError::bad_request("role must be admin or member"))?;
    let op = mesh(&s)?.set_role(&org, role).await?;
    Ok(Json(
        json!({ "org": org, "role": role, "operation": op.id() }),
    ))
}

/// Rotates this node's keys; the node restarts with them once the answer is sent.
pub async fn rotate_key(
    State(s): State<ApiState>,
    Caller(c): Caller,
) -> ApiResult<impl IntoResponse> {
    admin(&c, "rotating the node's keys")?;
    Ok(Json(mesh(&s)?.rotate_key().await?))
}
