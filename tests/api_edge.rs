//! The edge: security headers (with a CSP Swagger UI works under), CORS only for the
//! configured origins, request ids, the body limit, and rate limits per user and per
//! IP answering 429 with Retry-After, all in the one error shape.

mod api_support;
mod support;

use api_support::ApiStack;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn headers_cors_body_limit_and_rate_limits() {
    let stack = ApiStack::start("api-edge", |c| {
        c.api.cors_origins = vec!["https://inbox.example".into()];
        c.api.rate_limit.per_user_per_minute = 3;
        c.api.rate_limit.per_ip_per_minute = 60;
        c.api.max_body_bytes = 1024;
    })
    .await;
    let org = stack.org("edge").await;
    let tokens = stack.login(&org, &org.admin_phone, "d").await;

    let (status, headers, _) = stack.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200);
    for (name, value) in [
        (
            "strict-transport-security",
            "max-age=63072000; includeSubDomains",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("x-frame-options", "DENY"),
    ] {
        assert_eq!(headers[name], value, "{name}");
    }
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(!headers["x-request-id"].is_empty());

    // CORS: the configured origin is allowed, another is not.
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, stack.url("/v1/me"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let allowed = preflight("https://inbox.example").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://inbox.example"
    );
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(
        denied
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Body limit: 413 in the error shape.
    let big = json!({ "refresh_token": "x".repeat(4096) });
    let (status, _, body) = stack
        .call("POST", "/v1/auth/refresh", None, Some(big))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );

    // Per user: 3 a minute, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, headers, body) = stack
            .call("GET", "/v1/me", Some(&tokens.access), None)
            .await;
        statuses.push(status);
        if status == 429 {
            assert_eq!(body["error"]["code"], "rate_limited");
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 429]);

    // Per IP: 60 a minute from one address, whoever asks.
    let mut limited = None;
    for i in 0..80 {
        let (status, headers, _) = stack.call("GET", "/healthz", None, None).await;
        if status == 429 {
            assert!(headers.get("retry-after").is_some());
            limited = Some(i);
            break;
        }
    }
    assert!(limited.is_some_and(|i| i < 60), "{limited:?}");
    stack.stop().await;
}
