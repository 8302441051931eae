//! The HTTP edge: list panels, run one, and serve the dashboard page. Handlers are
//! thin: read the org from [`OrgScope`], check the range, call [`run_panel`].

use events::clock::now_ms;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::panels::{AnalyticsError, PANELS};
use super::{AnalyticsQuery, OrgScope, run_panel};

const PAGE: &str = include_str!("static/dashboards.html");
const PAGE_JS: &str = include_str!("static/dashboards.js");
const CHART_JS: &str = include_str!("static/chart.umd.min.js");

/// Default range when the caller names none: the last seven days.
const DEFAULT_RANGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// `GET /v1/analytics/panels`, `GET /v1/analytics/panels/{id}` (both need an
/// [`OrgScope`] from the auth layer), and the page at `GET /dashboards` with its
/// chart library at `GET /dashboards/chart.umd.min.js` (static, no data in them).
pub fn router(client: clickhouse::Client) -> Router {
    data(client).merge(page())
}

/// The data routes alone (`/v1/analytics/...`), for an auth layer to wrap.
pub fn data(client: clickhouse::Client) -> Router {
    Router::new()
        .route("/v1/analytics/panels", get(list))
        .route("/v1/analytics/panels/{id}", get(panel))
        .with_state(client)
}

/// The static page and its chart library: no data in them, so no auth (the page
/// sends the admin's bearer token with its data requests).
pub fn page() -> Router {
    Router::new()
        .route("/dashboards", get(|| async { Html(PAGE) }))
        // The page's code is a file of its own: the API's CSP allows no inline script.
        .route(
            "/dashboards/dashboards.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    PAGE_JS,
                )
            }),
        )
        .route(
            "/dashboards/chart.umd.min.js",
            get(|| async {
                (
                    [
                        (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
                        (header::CACHE_CONTROL, "public, max-age=86400"),
                    ],
                    CHART_JS,
                )
            }),
        )
}

/// `?from=&to=` in ms since the epoch, `phone_number_id` optional.
#[derive(Debug, Deserialize)]
pub struct PanelParams {
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub phone_number_id: Option<String>,
}

async fn list(scope: Option<Extension<OrgScope>>) -> Response {
    if scope.is_none() {
        return forbidden();
    }
    Json(json!({ "panels": PANELS })).into_response()
}

async fn panel(
    State(client): State<clickhouse::Client>,
    scope: Option<Extension<OrgScope>>,
    Path(id): Path<String>,
    Query(params): Query<PanelParams>,
) -> Response {
    let Some(Extension(OrgScope(org))) = scope else {
        return forbidden();
    };
    let query = to_query(org, params, now_ms());
    match run_panel(&client, &id, &query).await {
        Ok(data) => Json(data).into_response(),
        Err(err) => error_response(&err),
    }
}

/// The query for a request: defaults to the last seven days, an empty number means all.
fn to_query(org: String, params: PanelParams, now_ms: i64) -> AnalyticsQuery {
    let to_ms = params.to.unwrap_or(now_ms);
    AnalyticsQuery {
        org,
        phone_number_id: params.phone_number_id.filter(|n| !n.is_empty()),
        from_ms: params.from.unwrap_or(to_ms - DEFAULT_RANGE_MS),
        to_ms,
    }
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({ "error": "analytics are for admins of an org" })),
    )
        .into_response()
}

fn error_response(err: &AnalyticsError) -> Response {
    let status = match err {
        AnalyticsError::UnknownPanel(_) => StatusCode::NOT_FOUND,
        AnalyticsError::BadRange(_) => StatusCode::BAD_REQUEST,
        AnalyticsError::UnknownParameter(_)
        | AnalyticsError::ClickHouse(_)
        | AnalyticsError::Output(_) => {
            tracing::error!(error = %err, "analytics query failed");
            StatusCode::BAD_GATEWAY
        }
    };
    let message = if status == StatusCode::BAD_GATEWAY {
        "the analytics store did not answer".to_string()
    } else {
        err.to_string()
    };
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_range_asks_for_the_last_week_of_every_number() {
        let q = to_query(
            "acme".into(),
            PanelParams {
                from: None,
                to: None,
                phone_number_id: Some(String::new()),
            },
            10 * DEFAULT_RANGE_MS,
        );
        assert_eq!(
            (q.from_ms, q.to_ms),
            (9 * DEFAULT_RANGE_MS, 10 * DEFAULT_RANGE_MS)
        );
        assert_eq!(q.phone_number_id, None);
        assert_eq!(q.org, "acme");
    }

    #[test]
    fn errors_map_to_statuses_without_leaking_store_details() {
        let response = error_response(&AnalyticsError::UnknownPanel("x".into()));
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
        let response = error_response(&AnalyticsError::BadRange("no".into()));
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert!(super::super::panels::find("delivery_funnel").is_ok());
    }
}
