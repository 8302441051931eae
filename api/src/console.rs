//! The agent console: static files served at `/app`, compiled into the binary so a
//! deployment is one file. The console is a client of the public `/v1` API and its
//! live feed only; nothing here reads a store. Its scripts are files of their own,
//! since the CSP allows no inline script.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// `(file name, content type, bytes)`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/api.js"),
    ),
    (
        "feed.js",
        "text/javascript; charset=utf-8",
        include_str!("../console/feed.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../console/app.css"),
    ),
];

/// `GET /app` (the page), `GET /app/{file}` (its scripts and styles).
pub fn routes() -> Router {
    Router::new()
        .route("/app", get(|| async { file("index.html") }))
        .route("/app/", get(|| async { Redirect::permanent("/app") }))
        .route(
            "/app/{file}",
            get(|Path(name): Path<String>| async move { file(&name) }),
        )
}

fn file(name: &str) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        // Revalidated on every load: a new release's console is seen at once.
        Some((_, kind, body)) => (
            [
                (header::CONTENT_TYPE, *kind),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => crate::error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such file")
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::FILES;

    /// Every file the page loads is served, and no page has inline script (the CSP
    /// would block it) or builds markup from strings.
    #[test]
    fn the_page_loads_only_served_files_and_no_inline_script() {
        let (_, _, index) = FILES[0];
        for (name, _, _) in &FILES[1..] {
            if name.ends_with(".js") && *name != "app.js" {
                let imported = FILES
                    .iter()
                    .any(|(_, _, body)| body.contains(&format!("./{name}")));
                assert!(imported, "{name} is served but nothing imports it");
            }
        }
        assert!(index.contains(r#"src="/app/app.js""#));
        assert!(!index.contains("<script>"), "inline script");
        let inline_handler = index.split(" on").skip(1).any(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
            !name.is_empty() && rest[name.len()..].starts_with('=')
        });
        assert!(!inline_handler, "inline event handler");
        for (name, _, body) in FILES {
            assert!(!body.contains("innerHTML"), "{name} uses innerHTML");
        }
    }
}
