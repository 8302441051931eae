//! The live feed for browsers (`GET /v1/feed`, Server-Sent Events): what an agent's
//! device would receive from the MQTT broker, for clients that cannot speak MQTT.
//!
//! One MQTT subscription per API process (the service client, on every org's inbox,
//! conversation and presence topics) is fanned out over a broadcast channel; each
//! connection forwards only what [`events::access::may`] lets its caller subscribe
//! to: the same rule the broker's ACLs are rendered from, so the feed and MQTT
//! cannot disagree.
//!
//! Nothing is skipped silently: a connection that falls behind the channel, or one
//! whose hub lost the broker, is ended, and the client reconnects and fills the gap
//! from the REST cursors. A stream also ends when its access token expires or its
//! session is revoked (checked at every ping).
//!
//! The feed is also the browser's presence: a browser has no MQTT last will, so
//! when a session's last stream here ends because its client went away (or its
//! session was revoked), the API says `offline` for that device, as the broker
//! would for a device's lost connection. The console says its switch again on
//! every reconnect, so a network blip costs nothing (the router's grace period is
//! far longer than a reconnect).

use std::collections::HashMap;
use std::sync::Arc;

use events::access::{Action, may};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use runtime::mqtt::MqttConnection;
use serde_json::Value;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// What the hub fans out.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// One MQTT publish: its topic and payload (JSON, or the text as a JSON string).
    Publish { topic: String, payload: Value },
    /// The hub lost the broker: whatever was published meanwhile is missed, so every
    /// connection ends and its client fills the gap from REST.
    Lost,
}

/// The fan-out point every connection subscribes to.
pub struct Feed {
    tx: broadcast::Sender<Arc<Frame>>,
    live: watch::Sender<bool>,
    /// The hub's connection while it is live: presence and activity set over REST
    /// are published through it, as a device would publish them.
    client: std::sync::Mutex<Option<AsyncClient>>,
    /// Open streams per session (device) on this process.
    streams: std::sync::Mutex<HashMap<String, usize>>,
    /// Cancelled when the API shuts down: open streams end, so the server can.
    pub stop: CancellationToken,
}

impl Feed {
    pub fn new(buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(buffer.max(16));
        let (live, _) = watch::channel(false);
        Self {
            tx,
            live,
            client: std::sync::Mutex::new(None),
            streams: std::sync::Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
        }
    }

    /// A receiver of every frame from now on, and a watch of whether the hub's
    /// subscription is live.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<Frame>>, watch::Receiver<bool>) {
        (self.tx.subscribe(), self.live.subscribe())
    }

    /// Publishes `payload` on `topic` (QoS 1) through the hub's connection; `Err`
    /// when the hub is not connected.
    pub async fn publish_mqtt(
        &self,
        topic: String,
        retain: bool,
        payload: Vec<u8>,
    ) -> Result<(), String> {
        let client = self
            .client
            .lock()
            .map_err(|_| "feed client lock poisoned".to_string())?
            .clone()
            .ok_or_else(|| "not connected to the broker".to_string())?;
        client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|e| e.to_string())
    }

    /// Counts a stream of `session` as open.
    pub fn stream_opened(&self, session: &str) {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        *streams.entry(session.to_owned()).or_default() += 1;
    }

    /// Counts a stream of `session` as closed; whether it was the session's last.
    pub fn stream_closed(&self, session: &str) -> bool {
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        let Some(open) = streams.get_mut(session) else {
            return true;
        };
        *open = open.saturating_sub(1);
        if *open == 0 {
            streams.remove(session);
            return true;
        }
        false
    }

    fn set_client(&self, client: Option<AsyncClient>) {
        if let Ok(mut slot) = self.client.lock() {
            *slot = client;
        }
    }

    fn publish(&self, frame: Frame) {
        // No receiver is not an error: nobody is listening.
        let _ = self.tx.send(Arc::new(frame));
    }
}

/// The filters the hub subscribes to: every topic any device may subscribe to
/// (see [`events::access::grants`]), for every org.
pub fn filters(prefix: &str) -> [String; 3] {
    [
        format!("{prefix}/+/agents/+/inbox"),
        format!("{prefix}/+/conversations/#"),
        format!("{prefix}/+/presence/#"),
    ]
}

/// The payload as the feed shows it: the published JSON value, or the text (e.g. a
/// device's plain `online`) as a JSON string.
pub fn payload_value(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Whether a frame goes to the caller `agent_id` of `org`: [`may`] subscribe to it.
pub fn visible(prefix: &str, org: &str, agent_id: &str, topic: &str) -> bool {
    may(prefix, org, agent_id, Action::Subscribe, topic)
}

/// Runs the hub until `shutdown`: connects as the service, subscribes, and fans
/// every live publish out (retained ones are state replayed at subscribe time, not
/// events; clients read state from REST).
pub async fn run(connection: MqttConnection, feed: Arc<Feed>, shutdown: CancellationToken) {
    let client_id = format!("coexist-api-feed-{}", crate::auth::sessions::random_id(10));
    let mut options = connection.options(&client_id);
    // A fan-out of live events: nothing to keep for a restarted process.
    options.set_clean_session(true);
    let mut backoff = runtime::RetryPolicy::default().backoff();
    while !shutdown.is_cancelled() {
        let (client, mut event_loop) = AsyncClient::new(options.clone(), 100);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = event_loop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filters = filters(&connection.topic_prefix)
                        .into_iter()
                        .map(|f| SubscribeFilter::new(f, QoS::AtMostOnce));
                    if let Err(err) = client.subscribe_many(filters).await {
                        tracing::warn!(%err, "feed could not subscribe");
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let granted = ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, rumqttc::SubscribeReasonCode::Success(_)));
                    if !granted {
                        tracing::error!(
                            "the broker refused the feed's subscription (the service role needs subscribe on {}/#)",
                            connection.topic_prefix
                        );
                        break;
                    }
                    tracing::info!(%client_id, "live feed subscribed");
                    feed.set_client(Some(client.clone()));
                    feed.live.send_replace(true);
                    backoff.reset();
                }
                Ok(Event::Incoming(Packet::Publish(p))) if !p.retain => {
                    feed.publish(Frame::Publish {
                        topic: p.topic.clone(),
                        payload: payload_value(&p.payload),
                    });
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%err, "live feed lost the broker");
                    break;
                }
            }
        }
        feed.set_client(None);
        if feed.live.send_replace(false) {
            feed.publish(Frame::Lost);
        }
        drop(client);
        backoff.wait(&shutdown).await;
    }
    feed.stop.cancel();
}
