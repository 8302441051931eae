//! Auth against the real stack: OTP login with the code taken from the WhatsApp
//! authentication template on `messages.outbound`; lockout after brute force; a
//! silent resend cooldown (tests/attacks.rs has the concurrent and cross-resend
//! attacks); refresh rotation with reuse revoking the family; expired, tampered and
//! foreign JWTs; per-device sessions listed, revoked, and ended everywhere.

mod api_support;
mod support;

use api::auth::jwt::{Claims, JwtKeys};
use api_support::{ApiStack, JWT_SECRET};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn otp_login_then_refresh_rotates_and_reuse_revokes_the_family() {
    let stack = ApiStack::start("auth-rotate", |_| {}).await;
    let org = stack.org("rot").await;

    // The code goes out once, as an authentication template to the admin's phone.
    let challenge = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &challenge).await;
    assert_eq!(code.len(), 6);
    // Stored hashed, never in clear.
    let stored = stack
        .wait_doc("auth_otps", &format!("{}:admin", org.org))
        .await;
    assert!(!stored.to_string().contains(&code));

    let verify =
        |code: String| json!({ "challenge_id": challenge, "code": code, "device_id": "phone-1" });
    let wrong = if code == "000000" { "000001" } else { "000000" };
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/otp/verify",
            None,
            Some(verify(wrong.into())),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("invalid_code"))
    );
    let (status, _, tokens) = stack
        .call(
            "POST",
            "/v1/auth/otp/verify",
            None,
            Some(verify(code.clone())),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    // A code works once.
    let (status, _, _) = stack
        .call("POST", "/v1/auth/otp/verify", None, Some(verify(code)))
        .await;
    assert_eq!(status, 401);

    let access0 = tokens["access_token"].as_str().unwrap().to_string();
    let refresh0 = tokens["refresh_token"].as_str().unwrap().to_string();
    let (status, _, me) = stack.call("GET", "/v1/me", Some(&access0), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (me["org"].as_str(), me["role"].as_str()),
        (Some(org.org.as_str()), Some("admin"))
    );

    // Rotation: each refresh token works once and yields the next.
    let (status, _, next) = stack
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": refresh0 })),
        )
        .await;
    assert_eq!(status, 200, "{next}");
    let refresh1 = next["refresh_token"].as_str().unwrap().to_string();
    let access1 = next["access_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh0);
    assert_eq!(
        stack.call("GET", "/v1/me", Some(&access1), None).await.0,
        200
    );

    // Replaying the spent token: reuse detected, the whole family is revoked...
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": refresh0 })),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("refresh_token_reused"))
    );
    // ...so the legitimate newest token and the access tokens die with it.
    let (status, _, _) = stack
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": refresh1 })),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        stack.call("GET", "/v1/me", Some(&access1), None).await.0,
        401
    );
    let session = stack
        .wait_doc("auth_sessions", next["session_id"].as_str().unwrap())
        .await;
    assert_eq!(
        session.get_str("revoked_reason").unwrap(),
        "refresh token reused"
    );
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn otp_brute_force_locks_out_and_resends_cool_down() {
    let stack = ApiStack::start("auth-lock", |_| {}).await;
    let org = stack.org("lock").await;
    let challenge = stack.request_code(&org.admin_phone).await;
    let code = stack.code_sent(&org, &org.admin_phone, &challenge).await;

    // A second code right away: within the cooldown, answered like any request (no
    // account enumeration) but no code is sent: the first challenge stays the live one.
    let (status, _, body) = stack
        .call(
            "POST",
            "/v1/auth/otp/request",
            None,
            Some(json!({ "phone": org.admin_phone })),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_ne!(body["challenge_id"].as_str(), Some(challenge.as_str()));
    let live = || async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stack
            .wait_doc("auth_otps", &format!("{}:admin", org.org))
            .await
            .get_str("challenge_id")
            .unwrap()
            .to_string()
    };
    assert_eq!(live().await, challenge);

    let wrong = if code == "111111" { "222222" } else { "111111" };
    let attempt = |c: &str| json!({ "challenge_id": challenge, "code": c, "device_id": "d" });
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let (status, headers, body) = stack
            .call("POST", "/v1/auth/otp/verify", None, Some(attempt(wrong)))
            .await;
        outcomes.push((
            status,
            body["error"]["code"].as_str().unwrap_or("").to_string(),
        ));
        if status == 429 {
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!(retry > 800 && retry <= 900, "{retry}");
        }
    }
    let expected: Vec<(u16, String)> = (0..4)
        .map(|_| (401, "invalid_code".to_string()))
        .chain([(429, "otp_locked".to_string())])
        .collect();
    assert_eq!(outcomes, expected);
    // Locked: even the right code is refused, and so is a fresh code.
    let (status, _, body) = stack
        .call("POST", "/v1/auth/otp/verify", None, Some(attempt(&code)))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("otp_locked"))
    );
    let (status, _, _) = stack
        .call(
            "POST",
            "/v1/auth/otp/request",
            None,
            Some(json!({ "phone": org.admin_phone })),
        )
        .await;
    assert_eq!(
        status, 202,
        "answered as usual, but no new code while locked"
    );
    assert_eq!(live().await, challenge);
    // An unknown phone is answered like a known one (no account enumeration).
    let (status, _, _) = stack
        .call(
            "POST",
            "/v1/auth/otp/request",
            None,
            Some(json!({ "phone": "19999999999" })),
        )
        .await;
    assert_eq!(status, 202);
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expired_tampered_and_foreign_tokens_are_rejected() {
    let stack = ApiStack::start("auth-jwt", |_| {}).await;
    let org = stack.org("jwt").await;
    let tokens = stack.login(&org, &org.admin_phone, "d1").await;
    assert_eq!(
        stack
            .call("GET", "/v1/me", Some(&tokens.access), None)
            .await
            .0,
        200
    );

    let now = api::now_ms() / 1000;
    let claims = |exp: i64| Claims {
        sub: "admin".into(),
        org: org.org.clone(),
        role: "admin".into(),
        sid: tokens.session_id.clone(),
        iss: "coexist".into(),
        aud: "coexist".into(),
        iat: now - 1000,
        exp,
    };
    let ours = JwtKeys::new(
        &[("test".into(), JWT_SECRET.as_bytes().to_vec())],
        "coexist",
    );
    // Same key, same live session: valid until expired.
    let fresh = ours.sign(&claims(now + 60)).unwrap();
    assert_eq!(stack.call("GET", "/v1/me", Some(&fresh), None).await.0, 200);
    let expired = ours.sign(&claims(now - 60)).unwrap();
    let (status, _, body) = stack.call("GET", "/v1/me", Some(&expired), None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_expired"))
    );

    // Tampered payload: claim another org with the original signature.
    let mut parts: Vec<&str> = tokens.access.split('.').collect();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64.decode(parts[1]).unwrap()).unwrap();
    payload["org"] = json!("someone-else");
    let forged = b64.encode(serde_json::to_vec(&payload).unwrap());
    parts[1] = &forged;
    let tampered = parts.join(".");
    assert_eq!(
        stack.call("GET", "/v1/me", Some(&tampered), None).await.0,
        401
    );
    // Signed with another key under our kid, and alg=none.
    let foreign = JwtKeys::new(&[("test".into(), b"not-our-key".to_vec())], "coexist")
        .sign(&claims(now + 60))
        .unwrap();
    assert_eq!(
        stack.call("GET", "/v1/me", Some(&foreign), None).await.0,
        401
    );
    let header = b64.encode(br#"{"alg":"none","typ":"JWT","kid":"test"}"#);
    let none = format!(
        "{header}.{}.",
        b64.encode(serde_json::to_vec(&claims(now + 60)).unwrap())
    );
    assert_eq!(stack.call("GET", "/v1/me", Some(&none), None).await.0, 401);
    let (status, _, body) = stack.call("GET", "/v1/me", None, None).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(!body["error"]["request_id"].as_str().unwrap().is_empty());
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_are_per_device_and_can_be_revoked_one_or_all() {
    // No resend cooldown here: the same user logs in on two devices back to back.
    let stack = ApiStack::start("auth-sessions", |c| c.api.otp.resend_cooldown_secs = 0).await;
    let org = stack.org("sess").await;
    let phone = stack.login(&org, &org.admin_phone, "phone").await;
    let laptop = stack.login(&org, &org.admin_phone, "laptop").await;

    let (status, _, list) = stack
        .call("GET", "/v1/auth/sessions", Some(&phone.access), None)
        .await;
    assert_eq!(status, 200);
    let mut devices: Vec<(String, bool)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["device_id"].as_str().unwrap().to_string(),
                s["current"].as_bool().unwrap(),
            )
        })
        .collect();
    devices.sort();
    assert_eq!(
        devices,
        vec![("laptop".into(), false), ("phone".into(), true)]
    );

    // Revoke the laptop from the phone: its tokens stop at once.
    let path = format!("/v1/auth/sessions/{}", laptop.session_id);
    assert_eq!(
        stack
            .call("DELETE", &path, Some(&phone.access), None)
            .await
            .0,
        204
    );
    assert_eq!(
        stack
            .call("GET", "/v1/me", Some(&laptop.access), None)
            .await
            .0,
        401
    );
    let (status, _, _) = stack
        .call(
            "POST",
            "/v1/auth/refresh",
            None,
            Some(json!({ "refresh_token": laptop.refresh })),
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(
        stack
            .call("DELETE", &path, Some(&phone.access), None)
            .await
            .0,
        404
    );

    // Log out everywhere.
    assert_eq!(
        stack
            .call("POST", "/v1/auth/logout-all", Some(&phone.access), None)
            .await
            .0,
        204
    );
    assert_eq!(
        stack
            .call("GET", "/v1/me", Some(&phone.access), None)
            .await
            .0,
        401
    );
    stack.stop().await;
}
