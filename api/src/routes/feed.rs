//! `GET /v1/feed`: the caller's live feed as Server-Sent Events (see [`crate::feed`]).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::auth::Caller;
use crate::feed::Frame;
use crate::state::AppState;

/// The live feed: every MQTT publish the caller's device could subscribe to (their
/// own inbox, their org's conversations and presence), as Server-Sent Events.
///
/// Frames: first `event: ready` with `data: {}` once the subscription is live; then
/// `event: mqtt` with `data: {"topic": "<full topic>", "payload": <the published
/// JSON>}` per publish; a comment `: ping` every 15 s. The stream ends when the
/// access token expires, the session is revoked, or the connection falls behind
/// (the client reconnects and fills the gap from the REST cursors).
#[utoipa::path(get, path = "/v1/feed", tag = "feed", security(("bearer" = [])),
    responses((status = 200, description = "A stream of Server-Sent Events: `ready`, then `mqtt` frames of `{\"topic\", \"payload\"}`, and `: ping` comments.",
        content_type = "text/event-stream", body = String)))]
pub async fn feed(State(state): State<AppState>, caller: Caller) -> Response {
    let (tx, rx) = mpsc::channel::<Event>(64);
    tokio::spawn(forward(state, caller, tx));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut response = Sse::new(stream).into_response();
    // Reverse proxies (nginx) must pass each frame on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Why a stream ended (logged).
#[derive(Debug)]
enum End {
    Expired,
    Revoked,
    Lagged,
    Lost,
    Gone,
    Shutdown,
}

impl End {
    /// The client is gone for good (it closed the stream, or its session ended),
    /// not about to reconnect (an expired token, a lag, the API going down).
    fn device_gone(&self) -> bool {
        matches!(self, End::Gone | End::Revoked)
    }
}

/// Feeds one connection until it ends; dropping `tx` ends the response body. When
/// the session's last stream on this process ends with its client gone, the device
/// is offline (see [`crate::feed`]).
async fn forward(state: AppState, caller: Caller, tx: mpsc::Sender<Event>) {
    state.feed.stream_opened(&caller.session_id);
    let end = stream(&state, &caller, &tx).await;
    let last = state.feed.stream_closed(&caller.session_id);
    if last
        && end.device_gone()
        && let Err(err) = super::presence::say_offline(&state, &caller).await
    {
        tracing::warn!(org = %caller.org, agent = %caller.user_id, err = %err.message,
            "feed ended; could not say the device is offline");
    }
    tracing::debug!(org = %caller.org, agent = %caller.user_id, ?end, "feed ended");
}

async fn stream(state: &AppState, caller: &Caller, tx: &mpsc::Sender<Event>) -> End {
    let prefix = state.mqtt.topic_prefix.clone();
    let now_secs = crate::now_ms() / 1000;
    let left = u64::try_from(caller.expires_at_secs - now_secs).unwrap_or(0);
    let expiry = tokio::time::sleep(Duration::from_secs(left));
    tokio::pin!(expiry);
    let stop = state.feed.stop.clone();
    // Subscribed before `ready`: nothing published after `ready` can be missed.
    let (mut frames, mut live) = state.feed.subscribe();
    tokio::select! {
        _ = &mut expiry => return End::Expired,
        _ = stop.cancelled() => return End::Shutdown,
        _ = tx.closed() => return End::Gone,
        ok = live.wait_for(|l| *l) => if ok.is_err() { return End::Shutdown },
    }
    if tx
        .send(Event::default().event("ready").data("{}"))
        .await
        .is_err()
    {
        return End::Gone;
    }
    let every = Duration::from_secs(state.config.feed_ping_secs.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let event = tokio::select! {
            _ = &mut expiry => return End::Expired,
            _ = stop.cancelled() => return End::Shutdown,
            _ = tx.closed() => return End::Gone,
            _ = ping.tick() => {
                match crate::auth::session_live(&state.db, &caller.org, &caller.session_id).await {
                    Ok(true) => {}
                    Ok(false) => return End::Revoked,
                    // The store is down: keep the stream (the token still bounds it).
                    Err(err) => tracing::warn!(%err, "feed could not check the session"),
                }
                Event::default().comment("ping")
            }
            frame = frames.recv() => match frame {
                Ok(frame) => match frame.as_ref() {
                    Frame::Publish { topic, payload } => {
                        if !crate::feed::visible(&prefix, &caller.org, &caller.user_id, topic) {
                            continue;
                        }
                        let data = json!({ "topic": topic, "payload": payload });
                        Event::default().event("mqtt").data(data.to_string())
                    }
                    Frame::Lost => return End::Lost,
                },
                Err(broadcast::error::RecvError::Lagged(_)) => return End::Lagged,
                Err(broadcast::error::RecvError::Closed) => return End::Shutdown,
            },
        };
        if tx.send(event).await.is_err() {
            return End::Gone;
        }
    }
}
