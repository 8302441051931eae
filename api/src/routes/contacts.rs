//! `/v1/contacts`: the org's customers, searchable by name or phone prefix.

use axum::Json;
use axum::extract::State;
use futures::TryStreamExt;
use mongodb::bson::{Regex, doc};
use serde::{Deserialize, Serialize};
use store::inbox::{self, CONTACTS, CONVERSATIONS, Contact as Stored, SYNC_ONLY};
use utoipa::{IntoParams, ToSchema};

use super::conversations::{Conversation, with_unread};
use super::{page_size, valid_digits};
use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::state::AppState;

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Contact {
    pub wa_id: String,
    pub profile_name: Option<String>,
    pub full_name: Option<String>,
    pub in_business_app: Option<bool>,
    pub last_message_at_ms: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactPage {
    pub items: Vec<Contact>,
    /// Pass as `after` for the next page; absent on the last.
    pub next: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ContactQuery {
    /// A name (case-insensitive, anywhere in it) or a phone prefix (digits).
    #[param(max_length = 100, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub q: Option<String>,
    /// The `wa_id` to continue after.
    #[param(pattern = r"^[0-9]{1,32}$")]
    pub after: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

fn contact_of(d: Stored) -> Contact {
    Contact {
        wa_id: d.wa_id,
        profile_name: d.profile_name,
        full_name: d.full_name,
        in_business_app: d.in_business_app,
        last_message_at_ms: d.last_message_at.map(|t| t.timestamp_millis()),
    }
}

/// Regex-quotes user text, so a search is never a pattern.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\^$.|?*+()[]{}/-".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Search or list contacts, by `wa_id`.
#[utoipa::path(get, path = "/v1/contacts", tag = "contacts", security(("bearer" = [])),
    params(ContactQuery), responses((status = 200, body = ContactPage)))]
pub async fn list_contacts(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<ContactQuery>,
) -> ApiResult<Json<ContactPage>> {
    // A remove for a number that never wrote leaves only the sync's record of it.
    let mut filter = doc! { Stored::ORG: &caller.org, SYNC_ONLY: { "$ne": true } };
    if let Some(q) = query.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        if q.chars().count() > 100 {
            return Err(ApiError::invalid("q is at most 100 characters"));
        }
        // A search becomes a BSON regex, whose pattern cannot hold NUL (the driver
        // refuses it); control characters are never part of a name anyway.
        if q.chars().any(char::is_control) {
            return Err(ApiError::invalid("q must not contain control characters"));
        }
        let digits: String = q.chars().filter(char::is_ascii_digit).collect();
        if !digits.is_empty()
            && q.chars()
                .all(|c| c.is_ascii_digit() || c == '+' || c == ' ')
        {
            filter.insert(
                Stored::WA_ID,
                Regex {
                    pattern: format!("^{digits}"),
                    options: String::new(),
                },
            );
        } else {
            let pattern = escape(q);
            filter.insert(
                "$or",
                vec![
                    doc! { Stored::PROFILE_NAME: Regex { pattern: pattern.clone(), options: "i".into() } },
                    doc! { Stored::FULL_NAME: Regex { pattern, options: "i".into() } },
                ],
            );
        }
    }
    if let Some(after) = &query.after {
        valid_digits("after", after)?;
        filter.insert(Stored::KEY, doc! { "$gt": store::key(&caller.org, after) });
    }
    let limit = page_size(&state, query.limit)?;
    let found: Vec<Stored> = state
        .read(CONTACTS)
        .find(filter)
        .sort(doc! { Stored::KEY: 1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    let items: Vec<Contact> = found.into_iter().map(contact_of).collect();
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|c| c.wa_id.clone()))
        .flatten();
    Ok(Json(ContactPage { items, next }))
}

/// One contact.
#[utoipa::path(get, path = "/v1/contacts/{wa_id}", tag = "contacts", security(("bearer" = [])),
    params(("wa_id" = String, Path, pattern = r"^[0-9]{1,32}$")),
    responses((status = 200, body = Contact), (status = 404, body = crate::error::ErrorBody)))]
pub async fn get_contact(
    State(state): State<AppState>,
    caller: Caller,
    Path(wa_id): Path<String>,
) -> ApiResult<Json<Contact>> {
    valid_digits("wa_id", &wa_id)?;
    let contact = state
        .read(CONTACTS)
        .find_one(doc! { Stored::KEY: store::key(&caller.org, &wa_id), SYNC_ONLY: { "$ne": true } })
        .await?
        .ok_or_else(|| ApiError::not_found("contact"))?;
    Ok(Json(contact_of(contact)))
}

/// A contact's conversations (one per business number), newest first.
#[utoipa::path(get, path = "/v1/contacts/{wa_id}/conversations", tag = "contacts",
    security(("bearer" = [])), params(("wa_id" = String, Path, pattern = r"^[0-9]{1,32}$")),
    responses((status = 200, body = Vec<Conversation>), (status = 404, body = crate::error::ErrorBody)))]
pub async fn contact_conversations(
    State(state): State<AppState>,
    caller: Caller,
    Path(wa_id): Path<String>,
) -> ApiResult<Json<Vec<Conversation>>> {
    let _exists = get_contact(State(state.clone()), caller.clone(), Path(wa_id.clone())).await?;
    use inbox::Conversation as C;
    let found: Vec<C> = state
        .read(CONVERSATIONS)
        .find(doc! { C::ORG: &caller.org, C::CONTACT_WA_ID: &wa_id })
        .sort(doc! { C::LAST_MESSAGE_AT: -1 })
        .limit(100)
        .await?
        .try_collect()
        .await?;
    Ok(Json(with_unread(&state, &caller.org, &found).await?))
}
