//! `GET /v1/templates?phone_number_id=`: the business number's approved message
//! templates, read from the Graph API (`GET /{account}/message_templates`) with the
//! number's own token, cached per number for `[api] templates_cache_secs`, with the
//! parameters each needs counted, so a picker can ask for them.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use mongodb::bson::doc;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::extract::Query;
use crate::state::AppState;

/// Where the Graph API is (the `[graph]` section the sinks use too).
#[derive(Debug, Clone, Default)]
pub struct GraphApi {
    pub base_url: String,
    pub api_version: String,
    /// Used when the number has no token of its own in the directory.
    pub access_token: runtime::Secret,
    pub request_timeout_ms: u64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TemplateQuery {
    /// One of the caller's org's business numbers.
    #[param(pattern = r"^[0-9]{1,32}$")]
    pub phone_number_id: String,
}

/// How many parameters a component's text takes (`{{1}}`, `{{2}}`, or named ones).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateParameters {
    /// `header` or `body`.
    pub component: String,
    pub count: usize,
}

/// An approved template, with its components exactly as Meta lists them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Template {
    pub name: String,
    pub language: String,
    pub category: String,
    #[schema(value_type = Vec<Object>)]
    pub components: Vec<Value>,
    pub parameters: Vec<TemplateParameters>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// The distinct `{{...}}` placeholders of a text.
pub fn placeholders(text: &str) -> usize {
    let mut seen = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        let name = after[..end].trim();
        if !name.is_empty() && name.len() <= 64 && !name.contains('{') {
            seen.insert(name.to_string());
        }
        rest = &after[end + 2..];
    }
    seen.len()
}

/// The approved templates of a Graph API `message_templates` page (`data`), with
/// their parameters; anything not approved or malformed is left out.
pub fn approved(data: &[Value]) -> Vec<Template> {
    data.iter()
        .filter(|t| t["status"] == "APPROVED")
        .filter_map(|t| {
            let components = t["components"].as_array().cloned().unwrap_or_default();
            let parameters = components
                .iter()
                .filter_map(|c| {
                    let kind = c["type"].as_str()?.to_ascii_lowercase();
                    if kind != "header" && kind != "body" {
                        return None;
                    }
                    let count = placeholders(c["text"].as_str()?);
                    (count > 0).then_some(TemplateParameters {
                        component: kind,
                        count,
                    })
                })
                .collect();
            Some(Template {
                name: t["name"].as_str()?.to_string(),
                language: t["language"].as_str()?.to_string(),
                category: t["category"].as_str().unwrap_or_default().to_string(),
                components,
                parameters,
            })
        })
        .collect()
}

/// `(org, phone_number_id)`.
type NumberKey = (String, String);

/// Per number: when read, and what.
#[derive(Default)]
pub struct TemplateCache(Mutex<HashMap<NumberKey, (Instant, Vec<Template>)>>);

impl TemplateCache {
    fn get(&self, key: &NumberKey, ttl: Duration) -> Option<Vec<Template>> {
        let map = self.0.lock().ok()?;
        map.get(key)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, t)| t.clone())
    }

    fn put(&self, key: NumberKey, templates: Vec<Template>) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|_, (at, _)| at.elapsed() < Duration::from_secs(3600));
            map.insert(key, (Instant::now(), templates));
        }
    }
}

/// The approved templates of one of the caller's org's business numbers (admins and
/// agents), from the Graph API, cached for `templates_cache_secs`.
#[utoipa::path(get, path = "/v1/templates", tag = "templates", security(("bearer" = [])),
    params(TemplateQuery),
    responses((status = 200, body = TemplateList), (status = 404, body = crate::error::ErrorBody),
        (status = 502, body = crate::error::ErrorBody)))]
pub async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<TemplateQuery>,
) -> ApiResult<Json<TemplateList>> {
    super::valid_digits("phone_number_id", &query.phone_number_id)?;
    let key = (caller.org.clone(), query.phone_number_id.clone());
    let ttl = Duration::from_secs(state.config.templates_cache_secs);
    if let Some(templates) = state.templates.get(&key, ttl) {
        return Ok(Json(TemplateList { templates }));
    }
    use store::directory::BusinessNumber as N;
    let number = state
        .read(store::directory::BUSINESS_NUMBERS)
        .find_one(doc! { N::KEY: store::key(&caller.org, &query.phone_number_id) })
        .await?
        .ok_or_else(|| ApiError::not_found("business number"))?;
    let token = match &number.access_token {
        Some(sealed) => state.sealer.open(sealed).map_err(ApiError::unavailable)?,
        None if !state.graph.access_token.is_empty() => {
            state.graph.access_token.expose().to_string()
        }
        None => {
            return Err(ApiError::conflict(
                "the business number has no Graph API credentials",
            ));
        }
    };
    // Meta lists templates per WhatsApp Business Account; without one on record, the
    // number's id is asked (the simulator answers both).
    let account = number
        .waba_id
        .filter(|w| !w.is_empty())
        .unwrap_or(number.phone_number_id);
    let templates = fetch(&state, &account, &token).await?;
    state.templates.put(key, templates.clone());
    Ok(Json(TemplateList { templates }))
}

/// Every page of the account's approved templates.
async fn fetch(state: &AppState, account: &str, token: &str) -> ApiResult<Vec<Template>> {
    let graph = &state.graph;
    let base = graph.base_url.trim_end_matches('/');
    let mut url = format!(
        "{base}/{}/{account}/message_templates?status=APPROVED&limit=100",
        graph.api_version
    );
    let mut templates = Vec::new();
    for _ in 0..20 {
        let answer = state
            .http
            .get(&url)
            .bearer_auth(token)
            .timeout(Duration::from_millis(graph.request_timeout_ms.max(1)))
            .send()
            .await
            .map_err(bad_gateway)?;
        let status = answer.status();
        let body: Value = answer.json().await.map_err(bad_gateway)?;
        if !status.is_success() {
            return Err(bad_gateway(format!(
                "Graph API answered {status}: {}",
                body["error"]["message"].as_str().unwrap_or_default()
            )));
        }
        templates.extend(approved(
            body["data"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default(),
        ));
        // Only pages of the same Graph API: a `next` elsewhere is not followed.
        match body["paging"]["next"].as_str() {
            Some(next) if next.starts_with(&format!("{base}/")) => url = next.to_string(),
            _ => break,
        }
    }
    Ok(templates)
}

fn bad_gateway(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "template list from the Graph API failed");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "graph_unavailable",
        "the Graph API did not answer the template list; retry later",
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(placeholders("Hi {{1}}, order {{2}} ({{1}})"), 2);
        assert_eq!(placeholders("{{name}} at {{ time }}"), 2);
        assert_eq!(placeholders("no parameters"), 0);
        assert_eq!(placeholders("broken {{1"), 0);
        assert_eq!(placeholders("{{}}"), 0);
    }

    #[test]
    fn only_approved_templates_with_their_parameters() {
        let data = [
            json!({"name": "a", "language": "en_US", "status": "APPROVED", "category": "UTILITY",
                   "components": [{"type": "HEADER", "format": "TEXT", "text": "To {{1}}"},
                                  {"type": "BODY", "text": "{{1}} {{2}}"},
                                  {"type": "FOOTER", "text": "{{x}}"}]}),
            json!({"name": "b", "language": "en_US", "status": "PENDING", "components": []}),
            json!({"status": "APPROVED"}),
        ];
        let t = approved(&data);
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].components.len(), 3);
        assert_eq!(
            t[0].parameters,
            vec![
                TemplateParameters {
                    component: "header".into(),
                    count: 1
                },
                TemplateParameters {
                    component: "body".into(),
                    count: 2
                },
            ]
        );
    }
}
