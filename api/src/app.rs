//! The router and its edge, assembled in one place and read top to bottom (outermost
//! first): request id → trace → status-class count → security headers → CORS → one
//! error shape → per-IP rate limit → timeout → body limit → routes. Per-user limits sit in the `Caller`
//! extractor, where the user is known.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody, ErrorDetail, IsApiError};
use crate::state::AppState;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The page policy: scripts, styles and fonts from this origin only (Swagger UI and
/// the console load their own files; no inline script), images also from the media
/// store's origin (the console shows presigned media URLs), connections to this
/// origin only, and no one may frame the API.
pub fn content_security_policy(media_origin: &str) -> String {
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data: {media_origin}; media-src 'self' {media_origin}; \
         connect-src 'self'; font-src 'self' data:; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// The whole API: routes, `/openapi.json`, `/docs`, and the edge layers.
pub fn build(state: AppState) -> Router {
    let (routes, spec) = crate::routes::router().split_for_parts();
    let spec = crate::openapi::finish(spec);
    let config = &state.config;
    let timeout = Duration::from_millis(config.timeout_ms);
    let headers = ServiceBuilder::new()
        .layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_str(&content_security_policy(&state.media_origin))
                .unwrap_or_else(|_| HeaderValue::from_static("default-src 'self'")),
        ));
    let analytics = match &state.clickhouse {
        Some(client) => with_admin_scope(
            crate::analytics::routes::data(client.clone()),
            state.clone(),
            crate::analytics::OrgScope,
        )
        .merge(crate::analytics::routes::page()),
        None => Router::new(),
    };
    Router::new()
        .merge(routes)
        .merge(SwaggerUi::new("/docs").url("/openapi.json", spec))
        .route(
            "/readyz",
            axum::routing::get(runtime::observe::readyz_public),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(state.clone())
        .merge(analytics)
        .merge(crate::console::routes())
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(from_fn_with_state(timeout, time_limit))
        .layer(from_fn_with_state(state.clone(), limit_ip))
        .layer(from_fn(error_shape))
        .layer(cors(&config.cors_origins))
        .layer(headers)
        .layer(from_fn(count_status))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeId))
}

fn cors(origins: &[String]) -> CorsLayer {
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            REQUEST_ID,
            HeaderName::from_static(crate::idempotency::HEADER),
        ])
        .expose_headers([REQUEST_ID, header::RETRY_AFTER])
        .max_age(Duration::from_secs(600))
}

#[derive(Clone, Copy)]
struct MakeId;

impl MakeRequestId for MakeId {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        HeaderValue::from_str(&crate::auth::sessions::random_id(12))
            .ok()
            .map(RequestId::new)
    }
}

/// Counts every answer by status class (`coexist_http_requests_total{role="api"}`),
/// outside the layers that answer early (rate limit, timeout, errors) so they count too.
async fn count_status(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    runtime::observe::global()
        .metrics
        .http_request("api", response.status().as_u16());
    response
}

async fn limit_ip(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip());
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = crate::client_ip::client_ip(peer, forwarded, &state.trusted_proxies);
    if let Err(err) = state.limit_ip(ip) {
        return err.into_response();
    }
    next.run(req).await
}

async fn time_limit(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    tokio::time::timeout(limit, next.run(req))
        .await
        .unwrap_or_else(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "the request took too long",
            )
            .into_response()
        })
}

/// Every 4xx/5xx leaves in the one error shape, with the request id: ours get the id
/// filled in, the framework's (405, 413, ...) are rewritten.
async fn error_shape(req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let response = next.run(req).await;
    let status = response.status();
    if !status.is_client_error() && !status.is_server_error() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut error = if parts.extensions.get::<IsApiError>().is_some() {
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .unwrap_or_default();
        serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| generic(status))
    } else {
        generic(status)
    };
    error.error.request_id = request_id;
    let bytes = serde_json::to_vec(&error).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(bytes))
}

fn generic(status: StatusCode) -> ErrorBody {
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    ErrorBody {
        error: ErrorDetail {
            code: code.into(),
            message: status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_string(),
            request_id: String::new(),
        },
    }
}

/// What the admin-scope layer carries: the state and how to make the extension.
type ScopeState<T> = (AppState, fn(String) -> T);

/// Wraps a router (e.g. the analytics one) so only admins reach it, with their org
/// inserted as the request extension `scope(org)` its handlers read
/// (`analytics::OrgScope`).
pub fn with_admin_scope<T>(router: Router, state: AppState, scope: fn(String) -> T) -> Router
where
    T: Clone + Send + Sync + 'static,
{
    router.layer(from_fn_with_state((state, scope), admin_scope::<T>))
}

async fn admin_scope<T: Clone + Send + Sync + 'static>(
    State((state, scope)): State<ScopeState<T>>,
    req: Request,
    next: Next,
) -> Response {
    let (mut parts, body) = req.into_parts();
    match Admin::from_request_parts(&mut parts, &state).await {
        Ok(Admin(caller)) => {
            let mut req = Request::from_parts(parts, body);
            req.extensions_mut().insert(scope(caller.org));
            next.run(req).await
        }
        Err(err) => err.into_response(),
    }
}
