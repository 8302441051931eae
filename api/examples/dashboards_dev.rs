//! A dev harness for the dashboard page until the API's admin auth lands: serves the
//! analytics routes with every request scoped to one fixed org, for local demos and
//! screenshots. Never expose it: it skips authentication entirely.
//!
//! ```sh
//! cargo run -p api --example dashboards_dev -- 127.0.0.1:8099 demo
//! ```
//! ClickHouse from `COEXIST_SINKS_CLICKHOUSE_URL` (default http://127.0.0.1:8123) and
//! `COEXIST_SINKS_CLICKHOUSE_DATABASE` (default coexist).

use api::analytics::{OrgScope, router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8099".into());
    let org = args.next().unwrap_or_else(|| "demo".into());
    let env = |key: &str, default: &str| std::env::var(key).unwrap_or_else(|_| default.into());
    let client = clickhouse::Client::default()
        .with_url(env("COEXIST_SINKS_CLICKHOUSE_URL", "http://127.0.0.1:8123"))
        .with_database(env("COEXIST_SINKS_CLICKHOUSE_DATABASE", "coexist"))
        .with_validation(false);
    let app = router(client).layer(axum::Extension(OrgScope(org.clone())));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("dashboards for org {org} at http://{listen}/dashboards (no auth: dev only)");
    axum::serve(listener, app).await?;
    Ok(())
}
