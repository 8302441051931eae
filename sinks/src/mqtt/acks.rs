//! Which publishes of the batch in hand the broker has acknowledged, matched by packet
//! id (pure). A batch is written only when every publish it made has its PUBACK.
//!
//! The client (rumqttc) assigns packet ids itself and reports them on its event loop:
//! `Outgoing::Publish(pkid)` when a publish goes out, `Incoming::PubAck(pkid)` when
//! the broker acknowledges it. Publishes go out in the order they were handed to the
//! client, so the n-th new packet id reported belongs to the n-th publish. An id is
//! reused only after its PUBACK (the client waits on a collision), and after a
//! reconnect the client sends its unacknowledged publishes again with their ids.
//!
//! A batch that gave up (its acks came too late) leaves publishes behind: some still
//! queued in the client, some in flight. Their ids and acks arrive while the next batch
//! waits; counting acks would let them complete that batch before its own publishes
//! are acknowledged. Here they are recognised and ignored.

use std::collections::HashSet;

/// What the client's event loop reported, in its order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// A publish went out with this packet id (`Outgoing::Publish`): a new one, or a
    /// resend after a reconnect.
    Sent(u16),
    /// The broker acknowledged this packet id (`Incoming::PubAck`).
    Acked(u16),
    /// The client (re)connected (`Incoming::ConnAck`). Without a session the client
    /// drops what it still had to send.
    Connected { session_present: bool },
}

/// The acknowledgement state of the batch in hand and of abandoned ones.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    /// Publishes of this batch handed to the client and not yet reported sent.
    unsent: usize,
    /// Packet ids of this batch's publishes awaiting their PUBACK.
    pending: HashSet<u16>,
    /// Publishes of abandoned batches not yet reported sent: the next new ids are theirs.
    stale_unsent: usize,
    /// Packet ids of abandoned batches' publishes awaiting their PUBACK.
    stale: HashSet<u16>,
    /// The client lost its session, or reported what no publish explains: which id
    /// belongs to whom is unknown until the connection is made anew.
    lost: bool,
}

impl Acks {
    /// One more publish of this batch was handed to the client.
    pub fn publishing(&mut self) {
        self.unsent += 1;
    }

    /// Folds one report of the event loop.
    pub fn observe(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Sent(pkid) if self.pending.contains(&pkid) || self.stale.contains(&pkid) => {
                // Sent again after a reconnect: still the same publish.
            }
            Delivery::Sent(pkid) if self.stale_unsent > 0 => {
                self.stale_unsent -= 1;
                self.stale.insert(pkid);
            }
            Delivery::Sent(pkid) if self.unsent > 0 => {
                self.unsent -= 1;
                self.pending.insert(pkid);
            }
            Delivery::Sent(_) => self.lost = true,
            Delivery::Acked(pkid) => {
                // An id nobody waits for (a late ack of an id already answered) is ignored.
                if !self.pending.remove(&pkid) {
                    self.stale.remove(&pkid);
                }
            }
            Delivery::Connected {
                session_present: false,
            } if !self.is_idle() => self.lost = true,
            Delivery::Connected { .. } => {}
        }
    }

    /// Whether every publish of this batch was acknowledged.
    pub fn complete(&self) -> bool {
        !self.lost && self.unsent == 0 && self.pending.is_empty()
    }

    /// Whether ids can no longer be told apart: the connection must be made anew (and
    /// this state reset) before the batch is retried.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// How many publishes of this batch still await their PUBACK.
    pub fn awaiting(&self) -> usize {
        self.unsent + self.pending.len()
    }

    /// The batch gave up: its publishes still out are now stale, and the next batch
    /// starts with none.
    pub fn abandon(&mut self) {
        self.stale_unsent += std::mem::take(&mut self.unsent);
        self.stale.extend(self.pending.drain());
    }

    fn is_idle(&self) -> bool {
        self.unsent == 0
            && self.pending.is_empty()
            && self.stale_unsent == 0
            && self.stale.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Delivery::{Acked, Connected, Sent};
    use super::*;

    fn batch(acks: &mut Acks, publishes: usize) {
        for _ in 0..publishes {
            acks.publishing();
        }
    }

    #[test]
    fn a_batch_is_complete_when_each_of_its_ids_is_acked() {
        let mut acks = Acks::default();
        batch(&mut acks, 2);
        assert!(!acks.complete());
        acks.observe(Sent(1));
        acks.observe(Sent(2));
        acks.observe(Acked(2));
        acks.observe(Acked(2)); // a repeat is not the other id's ack
        assert!(!acks.complete());
        assert_eq!(acks.awaiting(), 1);
        acks.observe(Acked(1));
        assert!(acks.complete());
    }

    /// The case: a batch gives up with its publishes out; their acks come late,
    /// while the next batch waits for its own.
    #[test]
    fn late_acks_of_an_abandoned_batch_do_not_complete_the_next() {
        let mut acks = Acks::default();
        batch(&mut acks, 2);
        acks.observe(Sent(1));
        acks.abandon(); // its second publish is still queued in the client
        batch(&mut acks, 2);
        for d in [Sent(2), Sent(3), Sent(4), Acked(1), Acked(2)] {
            acks.observe(d);
        }
        assert!(!acks.complete(), "two late acks completed a batch of two");
        acks.observe(Acked(4));
        acks.observe(Acked(3));
        assert!(acks.complete());
    }

    #[test]
    fn a_resend_after_reconnect_is_the_same_publish() {
        let mut acks = Acks::default();
        batch(&mut acks, 1);
        acks.observe(Sent(7));
        acks.observe(Connected {
            session_present: true,
        });
        acks.observe(Sent(7));
        acks.observe(Acked(7));
        assert!(acks.complete() && !acks.lost());
    }

    #[test]
    fn a_lost_session_with_publishes_out_is_lost_but_not_when_idle() {
        let mut idle = Acks::default();
        idle.observe(Connected {
            session_present: false,
        });
        assert!(!idle.lost() && idle.complete());
        let mut acks = Acks::default();
        batch(&mut acks, 1);
        acks.observe(Connected {
            session_present: false,
        });
        assert!(acks.lost() && !acks.complete());
        let mut unexplained = Acks::default();
        unexplained.observe(Sent(3));
        assert!(unexplained.lost());
    }

    mod properties {
        use std::collections::{BTreeMap, VecDeque};

        use proptest::prelude::*;

        use super::*;

        /// What may happen next, for the model of the client below.
        #[derive(Debug, Clone)]
        enum Step {
            /// The batch in hand hands this many publishes to the client.
            Publish(u8),
            /// The client sends its next queued publish.
            Send,
            /// The broker acknowledges the n-th publish in flight (modulo their number).
            Ack(u8),
            /// The connection drops and comes back with the session: resends.
            Reconnect,
            /// The batch in hand gives up; the next one starts.
            Abandon,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                1 => (1u8..4).prop_map(Step::Publish),
                3 => Just(Step::Send),
                3 => any::<u8>().prop_map(Step::Ack),
                1 => Just(Step::Reconnect),
                1 => Just(Step::Abandon),
            ]
        }

        proptest! {
            /// Against a model of rumqttc (in-order sends, ids 1..=4 reused only after
            /// their ack, resends after a reconnect): the tracker says complete only
            /// when every publish of the batch in hand was acknowledged, and does say
            /// so once they all were.
            #[test]
            fn complete_exactly_when_every_publish_of_the_batch_is_acked(
                steps in proptest::collection::vec(step(), 0..80)
            ) {
                const MAX_INFLIGHT: u16 = 4;
                let mut acks = Acks::default();
                let mut batch = 0u32;
                let mut queue: VecDeque<u32> = VecDeque::new(); // batch of each queued publish
                let mut inflight: BTreeMap<u16, u32> = BTreeMap::new(); // pkid -> batch
                let mut unacked_of_batch = 0usize; // publishes of the batch in hand not acked
                let mut last = 0u16;
                for step in steps {
                    match step {
                        Step::Publish(n) => {
                            for _ in 0..n {
                                queue.push_back(batch);
                                acks.publishing();
                                unacked_of_batch += 1;
                            }
                        }
                        Step::Send => {
                            let next = last % MAX_INFLIGHT + 1;
                            if inflight.contains_key(&next) {
                                continue; // collision: the client waits for the ack
                            }
                            if let Some(owner) = queue.pop_front() {
                                last = next;
                                inflight.insert(next, owner);
                                acks.observe(Delivery::Sent(next));
                            }
                        }
                        Step::Ack(n) => {
                            if inflight.is_empty() {
                                continue;
                            }
                            let pkid = *inflight.keys().nth(n as usize % inflight.len()).unwrap();
                            if inflight.remove(&pkid) == Some(batch) {
                                unacked_of_batch -= 1;
                            }
                            acks.observe(Delivery::Acked(pkid));
                        }
                        Step::Reconnect => {
                            acks.observe(Delivery::Connected { session_present: true });
                            for pkid in inflight.keys() {
                                acks.observe(Delivery::Sent(*pkid));
                            }
                        }
                        Step::Abandon => {
                            acks.abandon();
                            batch += 1;
                            unacked_of_batch = 0;
                        }
                    }
                    prop_assert!(!acks.lost());
                    prop_assert_eq!(acks.complete(), unacked_of_batch == 0);
                    prop_assert_eq!(acks.awaiting(), unacked_of_batch);
                }
            }
        }
    }
}
