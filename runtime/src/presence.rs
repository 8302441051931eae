//! Following `agents.presence` as a table, once per process: the router and the
//! notifier both need who is online (what the table says now, then every change),
//! and in `coexist all` they share one reader instead of each polling the topic.
//!
//! The hub keeps, per device (the table's key), the last state the agent switched
//! to (online, away, offline) and the last activity after it (viewing, typing). That
//! is all a role's fold needs to reach the state it would reach from the whole
//! history: activity after "away" does not bring an agent back (the router's rule),
//! so the switch must be replayed before the activity, and anything older changes
//! nothing (each role keeps the newest per device). So memory is two records per
//! device, however long the process runs.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use events::inbox::{PresenceEvent, PresenceState};
use events::{codec, topics};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::KafkaConfig;
use crate::table;

/// What a role gets: the table as it is now, in an order its fold can replay, and
/// every change after it, once.
#[derive(Debug)]
pub struct PresenceFeed {
    pub initial: Vec<PresenceEvent>,
    pub live: mpsc::UnboundedReceiver<PresenceEvent>,
}

/// The presence table, kept current in the background; [`PresenceHub::subscribe`]
/// hands out consistent feeds (nothing between the snapshot and the live changes
/// is lost or repeated: both happen under one lock).
#[derive(Debug, Clone, Default)]
pub struct PresenceHub {
    state: Arc<Mutex<Hub>>,
}

#[derive(Debug, Default)]
struct Hub {
    devices: BTreeMap<String, DeviceRecords>,
    /// Live feeds; an unbounded channel, because presence is a few events per agent
    /// a minute (activity is throttled at the API and devices), and a slow role must
    /// not hold the reader, and with it every other role's presence, back.
    subscribers: Vec<mpsc::UnboundedSender<PresenceEvent>>,
}

/// One device's records that still matter (see the module's doc).
#[derive(Debug, Default, Clone, PartialEq)]
struct DeviceRecords {
    switch: Option<PresenceEvent>,
    activity: Option<PresenceEvent>,
}

impl DeviceRecords {
    fn record(&mut self, event: PresenceEvent) {
        match event.state {
            PresenceState::Viewing | PresenceState::Typing => self.activity = Some(event),
            PresenceState::Online | PresenceState::Away | PresenceState::Offline => {
                self.switch = Some(event);
                self.activity = None;
            }
        }
    }

    fn replay(&self) -> impl Iterator<Item = &PresenceEvent> {
        self.switch.iter().chain(self.activity.iter())
    }
}

impl Hub {
    fn record(&mut self, event: PresenceEvent) {
        self.devices
            .entry(event.table_key())
            .or_default()
            .record(event);
    }

    fn snapshot(&self) -> Vec<PresenceEvent> {
        self.devices
            .values()
            .flat_map(DeviceRecords::replay)
            .cloned()
            .collect()
    }
}

impl PresenceHub {
    /// A hub over `events` (already read), with no reader (tests, and the start of
    /// [`PresenceHub::start`]).
    pub fn from_events(events: impl IntoIterator<Item = PresenceEvent>) -> Self {
        let hub = Self::default();
        {
            let mut state = hub.lock();
            for event in events {
                state.record(event);
            }
        }
        hub
    }

    /// Reads the table whole (retrying until the broker answers), then follows it
    /// until shutdown. `None` only at shutdown.
    pub async fn start(
        kafka: &KafkaConfig,
        purpose: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Option<(Self, JoinHandle<()>)>> {
        let Some((values, ends)) =
            table::read_until_ok(kafka, topics::AGENTS_PRESENCE, None, purpose, &shutdown).await
        else {
            return Ok(None);
        };
        let events = values
            .iter()
            .filter_map(|(_, value)| codec::decode::<PresenceEvent>(value).ok());
        let hub = Self::from_events(events);
        tracing::info!(
            records = values.len(),
            devices = hub.lock().devices.len(),
            purpose,
            "presence table read"
        );
        let (mut live, feed) = table::presence_feed(kafka, &ends, purpose, shutdown)?;
        let task = tokio::spawn({
            let hub = hub.clone();
            async move {
                while let Some(event) = live.recv().await {
                    hub.publish(event);
                }
                feed.abort();
            }
        });
        Ok(Some((hub, task)))
    }

    /// Records a change and hands it to every live feed.
    pub fn publish(&self, event: PresenceEvent) {
        let mut state = self.lock();
        state.record(event.clone());
        state
            .subscribers
            .retain(|subscriber| subscriber.send(event.clone()).is_ok());
    }

    /// The table now and every change from here on.
    pub fn subscribe(&self) -> PresenceFeed {
        let mut state = self.lock();
        let (tx, live) = mpsc::unbounded_channel();
        state.subscribers.push(tx);
        PresenceFeed {
            initial: state.snapshot(),
            live,
        }
    }

    /// How many devices the table holds (for a cache-size metric).
    pub fn devices(&self) -> usize {
        self.lock().devices.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Hub> {
        // A panic while holding the lock cannot leave the map half-updated in a
        // way that matters (each record is one insert), so a poisoned lock is used.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(agent: &str, device: &str, state: PresenceState, at_ms: i64) -> PresenceEvent {
        PresenceEvent {
            org: "acme".into(),
            agent_id: agent.into(),
            device_id: device.into(),
            state,
            conversation_id: None,
            at_ms,
        }
    }

    #[test]
    fn the_snapshot_replays_the_last_switch_then_the_activity_after_it() {
        use PresenceState::*;
        let hub = PresenceHub::from_events([
            event("ana", "phone", Online, 1),
            event("ana", "phone", Viewing, 2),
            event("ana", "phone", Away, 3),
            event("ana", "phone", Typing, 4),
            event("ana", "phone", Viewing, 5),
            event("bob", "web", Online, 1),
            event("bob", "web", Offline, 2),
        ]);
        let replay: Vec<(String, PresenceState, i64)> = hub
            .subscribe()
            .initial
            .into_iter()
            .map(|e| (e.agent_id, e.state, e.at_ms))
            .collect();
        assert_eq!(
            replay,
            [
                ("ana".into(), Away, 3),
                ("ana".into(), Viewing, 5),
                ("bob".into(), Offline, 2),
            ]
        );
        assert_eq!(hub.devices(), 2);
    }

    #[test]
    fn every_feed_gets_each_change_after_its_snapshot_once() {
        use PresenceState::*;
        let hub = PresenceHub::from_events([event("ana", "phone", Online, 1)]);
        let mut first = hub.subscribe();
        hub.publish(event("ana", "phone", Away, 2));
        let mut second = hub.subscribe();
        hub.publish(event("bob", "web", Online, 3));
        assert_eq!(first.initial.len(), 1);
        assert_eq!(first.live.try_recv().unwrap().state, Away);
        assert_eq!(first.live.try_recv().unwrap().agent_id, "bob");
        assert!(first.live.try_recv().is_err());
        // The second saw "away" in its snapshot, so only bob comes live.
        assert_eq!(second.initial[0].state, Away);
        assert_eq!(second.live.try_recv().unwrap().agent_id, "bob");
        assert!(second.live.try_recv().is_err());
        // A feed dropped is forgotten, not an error for the others.
        drop(first);
        hub.publish(event("cy", "web", Online, 4));
        assert_eq!(second.live.try_recv().unwrap().agent_id, "cy");
        assert_eq!(hub.lock().subscribers.len(), 1);
    }
}
