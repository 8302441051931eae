//! Analytics for admins: the dashboard panels of `dashboards/` run against
//! ClickHouse, served as JSON (`/v1/analytics/panels/...`) and drawn by a static page
//! (`/dashboards`) with a vendored chart library, so nothing loads from a CDN.
//!
//! Every query is scoped to the caller's org, which only the API's admin-auth layer
//! may set: it inserts an [`OrgScope`] request extension, and a request without one
//! is refused. No client-sent value names the org.

pub mod panels;
pub mod routes;

pub use panels::{AnalyticsError, PANELS, Panel, PanelData, run_panel};
pub use routes::router;

/// The org an authenticated admin may see, set by the auth layer as a request
/// extension. The analytics handlers read the org from here and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgScope(pub String);

/// What one panel is asked for: whose data, which number (all when `None`), and the
/// half-open time range `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalyticsQuery {
    pub org: String,
    pub phone_number_id: Option<String>,
    pub from_ms: i64,
    pub to_ms: i64,
}
