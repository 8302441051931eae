//! `/v1/agents`: everyone in the org can see the team (to transfer to a colleague);
//! only admins change it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use events::directory::{Change, Role};
use futures::TryStreamExt;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use store::directory::{AGENTS, Agent as Stored};
use utoipa::ToSchema;

use super::{Accepted, accepted, valid_id};
use crate::auth::{Admin, Caller};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Body, Path};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Agent {
    pub agent_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `admin` or `agent`.
    pub role: Option<String>,
    pub capacity: Option<i64>,
    pub active: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct Invite {
    /// Chosen by the admin (letters, digits, - _ .).
    #[schema(pattern = r"^[A-Za-z0-9._@=-]{1,128}$")]
    pub agent_id: String,
    #[schema(pattern = r"\S", max_length = 100)]
    pub name: String,
    #[schema(pattern = r"^[^@]+@[^@]+$", max_length = 254)]
    pub email: Option<String>,
    /// Digits with country code: where one-time codes are sent.
    #[schema(pattern = r"^\+?[0-9]{6,20}$")]
    pub phone: Option<String>,
    #[schema(value_type = RoleShape)]
    pub role: Role,
    /// Most conversations assigned at once.
    #[schema(maximum = 1000)]
    #[serde(deserialize_with = "crate::extract::whole_number")]
    pub capacity: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentPatch {
    #[schema(pattern = r"\S", max_length = 100)]
    pub name: Option<String>,
    #[schema(value_type = Option<RoleShape>)]
    pub role: Option<Role>,
    #[schema(maximum = 1000)]
    #[serde(default, deserialize_with = "crate::extract::some_whole_number")]
    pub capacity: Option<u32>,
}

/// The OpenAPI shape of a [`Role`].
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "snake_case")]
pub enum RoleShape {
    Admin,
    Agent,
}

pub fn agent_of(d: Stored) -> Agent {
    Agent {
        agent_id: d.agent_id,
        name: d.name,
        email: d.email,
        phone: d.phone,
        role: d.role.map(|r| r.as_str().to_string()),
        capacity: d.capacity,
        active: d.active,
    }
}

/// The agent `agent_id` of `org`, if any.
pub async fn find(state: &AppState, org: &str, agent_id: &str) -> ApiResult<Option<Stored>> {
    Ok(state
        .read(AGENTS)
        .find_one(doc! { Stored::KEY: store::key(org, agent_id) })
        .await?)
}

/// The org's agents.
#[utoipa::path(get, path = "/v1/agents", tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = Vec<Agent>)))]
pub async fn list_agents(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Agent>>> {
    let found: Vec<Stored> = state
        .read(AGENTS)
        .find(doc! { Stored::ORG: &caller.org })
        .sort(doc! { Stored::AGENT_ID: 1 })
        .limit(1000)
        .await?
        .try_collect()
        .await?;
    Ok(Json(found.into_iter().map(agent_of).collect()))
}

/// One agent.
#[utoipa::path(get, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = [])),
    params(("agent_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 200, body = Agent), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_agent(
    State(state): State<AppState>,
    caller: Caller,
    Path(agent_id): Path<String>,
) -> ApiResult<Json<Agent>> {
    valid_id("agent_id", &agent_id)?;
    let agent = find(&state, &caller.org, &agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found("agent"))?;
    Ok(Json(agent_of(agent)))
}

fn valid_invite(invite: &Invite) -> ApiResult<()> {
    valid_id("agent_id", &invite.agent_id)?;
    if invite.name.trim().is_empty() || invite.name.chars().count() > 100 {
        return Err(ApiError::invalid("name must be 1-100 characters"));
    }
    if invite.email.is_none() && invite.phone.is_none() {
        return Err(ApiError::invalid(
            "an agent needs an email or a phone to log in",
        ));
    }
    if let Some(email) = &invite.email
        && (!email.contains('@') || email.chars().count() > 254)
    {
        return Err(ApiError::invalid("email is not an address"));
    }
    if let Some(phone) = &invite.phone
        && !super::auth::phone_is_valid(phone)
    {
        return Err(ApiError::invalid(
            "phone is 6-20 digits, optionally after +",
        ));
    }
    if invite.capacity > 1000 {
        return Err(ApiError::invalid("capacity is at most 1000"));
    }
    Ok(())
}

/// Invite an agent (or another admin).
#[utoipa::path(post, path = "/v1/agents", tag = "agents", security(("bearer" = ["admin"])),
    request_body = Invite,
    responses((status = 202, body = Accepted), (status = 409, body = crate::error::ErrorBody)))]
pub async fn invite_agent(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Body(invite): Body<Invite>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_invite(&invite)?;
    if find(&state, &caller.org, &invite.agent_id).await?.is_some() {
        return Err(ApiError::conflict("an agent with this id exists"));
    }
    let change = Change::AgentInvited {
        agent_id: invite.agent_id,
        name: invite.name.trim().to_string(),
        email: invite.email.map(|e| e.trim().to_ascii_lowercase()),
        phone: invite.phone.map(|p| super::auth::normalize_phone(&p)),
        role: invite.role,
        capacity: invite.capacity,
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    Ok(accepted(id))
}

/// Change an agent's name, role or capacity.
#[utoipa::path(patch, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = ["admin"])),
    params(("agent_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")), request_body = AgentPatch,
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn update_agent(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(agent_id): Path<String>,
    Body(patch): Body<AgentPatch>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_id("agent_id", &agent_id)?;
    let Some(current) = find(&state, &caller.org, &agent_id).await? else {
        return Err(ApiError::not_found("agent"));
    };
    if patch
        .name
        .as_ref()
        .is_some_and(|n| n.trim().is_empty() || n.chars().count() > 100)
    {
        return Err(ApiError::invalid("name must be 1-100 characters"));
    }
    if patch.capacity.is_some_and(|c| c > 1000) {
        return Err(ApiError::invalid("capacity is at most 1000"));
    }
    // A demoted admin's tokens would stay admin tokens until they expire: their
    // sessions (and broker logins) end now; they log in again as an agent.
    let demoted = current.role == Some(Role::Admin) && patch.role.is_some_and(|r| r != Role::Admin);
    let change = Change::AgentUpdated {
        agent_id: agent_id.clone(),
        name: patch.name,
        role: patch.role,
        capacity: patch.capacity,
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    if demoted {
        super::auth::revoke_user(&state, &caller.org, &agent_id, "demoted").await?;
    }
    Ok(accepted(id))
}

/// Deactivate an agent: they can no longer log in, and their sessions end now.
#[utoipa::path(delete, path = "/v1/agents/{agent_id}", tag = "agents", security(("bearer" = ["admin"])),
    params(("agent_id" = String, Path, pattern = r"^[A-Za-z0-9._@=-]{1,128}$")),
    responses((status = 202, body = Accepted), (status = 404, body = crate::error::ErrorBody)))]
pub async fn deactivate_agent(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(agent_id): Path<String>,
) -> ApiResult<(StatusCode, Json<Accepted>)> {
    valid_id("agent_id", &agent_id)?;
    if find(&state, &caller.org, &agent_id).await?.is_none() {
        return Err(ApiError::not_found("agent"));
    }
    let change = Change::AgentDeactivated {
        agent_id: agent_id.clone(),
    };
    let id = crate::directory::publish(&state, &caller.org, &caller.user_id, change).await?;
    super::auth::revoke_user(&state, &caller.org, &agent_id, "agent deactivated").await?;
    Ok(accepted(id))
}
