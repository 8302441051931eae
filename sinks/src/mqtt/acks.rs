//! Which publishes of the batches in flight the broker has acknowledged, matched by
//! packet id (pure). A batch is written only when every publish it made has its
//! PUBACK. Several batches may be in flight at once: the sink publishes the next
//! while the broker still acknowledges the previous ones, and commits them in order.
//!
//! The client (rumqttc) assigns packet ids itself and reports them on its event loop:
//! `Outgoing::Publish(pkid)` when a publish goes out, `Incoming::PubAck(pkid)` when
//! the broker acknowledges it. Publishes go out in the order they were handed to the
//! client, so the n-th new packet id reported belongs to the n-th publish. An id is
//! reused only after its PUBACK (the client waits on a collision), and after a
//! reconnect the client sends its unacknowledged publishes again with their ids.
//!
//! Batches that gave up (their acks came too late) leave publishes behind: some still
//! queued in the client, some in flight. Their ids and acks arrive while the retries
//! wait; counting acks would let a retry complete before its own publishes are
//! acknowledged. Here each publish is attributed to its batch's [`Ticket`], and the
//! tickets of abandoned batches never complete.

use std::collections::{HashMap, VecDeque};

/// One batch's claim on the publishes it made, in the order batches began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket(u64);

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
    /// The connection failed or dropped; the client is reconnecting. What is out
    /// stays out: with the session, it is sent again after the next `Connected`.
    Disconnected,
}

/// The acknowledgement state of every batch with publishes out.
#[derive(Debug, Default, Clone)]
pub struct Acks {
    /// The next batch's ticket.
    next: u64,
    /// Tickets below this were abandoned: they never complete.
    live_from: u64,
    /// Publishes handed to the client and not yet reported sent, in order: whose,
    /// and how many in a row.
    unsent: VecDeque<(Ticket, usize)>,
    /// Packet ids out, awaiting their PUBACK, and whose they are.
    pending: HashMap<u16, Ticket>,
    /// Per ticket, its publishes not yet acknowledged (unsent or pending).
    outstanding: HashMap<Ticket, usize>,
    /// The client lost its session, or reported what no publish explains: which id
    /// belongs to whom is unknown until the connection is made anew.
    lost: bool,
    /// Whether the client is connected (a `Connected` since the last `Disconnected`):
    /// only then is a missing PUBACK the broker's delay.
    connected: bool,
}

impl Acks {
    /// A new batch begins; its publishes are claimed with the ticket.
    pub fn begin(&mut self) -> Ticket {
        self.next += 1;
        Ticket(self.next - 1)
    }

    /// One more publish of `ticket`'s batch was handed to the client.
    pub fn publishing(&mut self, ticket: Ticket) {
        match self.unsent.back_mut() {
            Some((last, count)) if *last == ticket => *count += 1,
            _ => self.unsent.push_back((ticket, 1)),
        }
        *self.outstanding.entry(ticket).or_default() += 1;
    }

    /// Folds one report of the event loop.
    pub fn observe(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Sent(pkid) if self.pending.contains_key(&pkid) => {
                // Sent again after a reconnect: still the same publish.
            }
            Delivery::Sent(pkid) => match self.unsent.front_mut() {
                Some((ticket, count)) => {
                    self.pending.insert(pkid, *ticket);
                    *count -= 1;
                    if *count == 0 {
                        self.unsent.pop_front();
                    }
                }
                None => self.lost = true,
            },
            Delivery::Acked(pkid) => {
                // An id nobody waits for (a late ack of an id already answered) is ignored.
                if let Some(ticket) = self.pending.remove(&pkid)
                    && let Some(left) = self.outstanding.get_mut(&ticket)
                {
                    *left -= 1;
                    if *left == 0 {
                        self.outstanding.remove(&ticket);
                    }
                }
            }
            Delivery::Connected { session_present } => {
                if !session_present && !self.is_idle() {
                    self.lost = true;
                }
                self.connected = true;
            }
            Delivery::Disconnected => self.connected = false,
        }
    }

    /// Whether the client is connected: while it is not, nothing can be
    /// acknowledged, and waiting is no sign of a broker that will not answer.
    pub fn connected(&self) -> bool {
        self.connected
    }

    /// Whether every publish of `ticket`'s batch was acknowledged (never, once it
    /// was abandoned).
    pub fn complete(&self, ticket: Ticket) -> bool {
        !self.lost && ticket.0 >= self.live_from && !self.outstanding.contains_key(&ticket)
    }

    /// Whether ids can no longer be told apart: the connection must be made anew (and
    /// this state reset) before the batches are retried.
    pub fn lost(&self) -> bool {
        self.lost
    }

    /// How many publishes of `ticket`'s batch still await their PUBACK.
    pub fn awaiting(&self, ticket: Ticket) -> usize {
        self.outstanding.get(&ticket).copied().unwrap_or(0)
    }

    /// Every batch begun so far gave up: their publishes still out are stale, and
    /// only batches begun after this can complete.
    pub fn abandon(&mut self) {
        self.live_from = self.next;
    }

    /// The connection was made anew: nothing is out any more, and only batches
    /// begun after this can complete (tickets keep counting, so an old one never
    /// passes for a new one).
    pub fn reset(&mut self) {
        *self = Self {
            next: self.next,
            live_from: self.next,
            ..Self::default()
        };
        // A new client reports its own `Connected`.
    }

    fn is_idle(&self) -> bool {
        self.unsent.is_empty() && self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::Delivery::{Acked, Connected, Disconnected, Sent};
    use super::*;

    fn batch(acks: &mut Acks, publishes: usize) -> Ticket {
        let ticket = acks.begin();
        for _ in 0..publishes {
            acks.publishing(ticket);
        }
        ticket
    }

    #[test]
    fn a_batch_is_complete_when_each_of_its_ids_is_acked() {
        let mut acks = Acks::default();
        let t = batch(&mut acks, 2);
        assert!(!acks.complete(t));
        acks.observe(Sent(1));
        acks.observe(Sent(2));
        acks.observe(Acked(2));
        acks.observe(Acked(2)); // a repeat is not the other id's ack
        assert!(!acks.complete(t));
        assert_eq!(acks.awaiting(t), 1);
        acks.observe(Acked(1));
        assert!(acks.complete(t));
    }

    /// Pipelined batches: each completes on its own acks, whatever the order the
    /// broker answers in.
    #[test]
    fn batches_in_flight_complete_on_their_own_acks() {
        let mut acks = Acks::default();
        let first = batch(&mut acks, 2);
        let second = batch(&mut acks, 1);
        for d in [Sent(1), Sent(2), Sent(3), Acked(3)] {
            acks.observe(d);
        }
        assert!(acks.complete(second) && !acks.complete(first));
        assert_eq!(acks.awaiting(first), 2);
        acks.observe(Acked(1));
        acks.observe(Acked(2));
        assert!(acks.complete(first));
    }

    /// The case: a batch gives up with its publishes out; their acks come late,
    /// while the retry waits for its own.
    #[test]
    fn late_acks_of_an_abandoned_batch_do_not_complete_the_next() {
        let mut acks = Acks::default();
        let gave_up = batch(&mut acks, 2);
        acks.observe(Sent(1));
        acks.abandon(); // its second publish is still queued in the client
        let retry = batch(&mut acks, 2);
        for d in [Sent(2), Sent(3), Sent(4), Acked(1), Acked(2)] {
            acks.observe(d);
        }
        assert!(
            !acks.complete(retry),
            "two late acks completed a batch of two"
        );
        assert!(!acks.complete(gave_up), "an abandoned batch completed");
        acks.observe(Acked(4));
        acks.observe(Acked(3));
        assert!(acks.complete(retry));
    }

    #[test]
    fn connected_between_a_connack_and_a_drop() {
        let mut acks = Acks::default();
        assert!(!acks.connected(), "connected before the broker said so");
        acks.observe(Connected {
            session_present: false,
        });
        assert!(acks.connected());
        let t = batch(&mut acks, 1);
        acks.observe(Sent(1));
        acks.observe(Disconnected);
        assert!(
            !acks.connected() && !acks.lost(),
            "a drop loses nothing yet"
        );
        acks.observe(Connected {
            session_present: true,
        });
        acks.observe(Sent(1));
        acks.observe(Acked(1));
        assert!(acks.connected() && acks.complete(t));
    }

    #[test]
    fn a_resend_after_reconnect_is_the_same_publish() {
        let mut acks = Acks::default();
        let t = batch(&mut acks, 1);
        acks.observe(Sent(7));
        acks.observe(Connected {
            session_present: true,
        });
        acks.observe(Sent(7));
        acks.observe(Acked(7));
        assert!(acks.complete(t) && !acks.lost());
    }

    #[test]
    fn a_lost_session_with_publishes_out_is_lost_but_not_when_idle() {
        let mut idle = Acks::default();
        idle.observe(Connected {
            session_present: false,
        });
        assert!(!idle.lost());
        let mut acks = Acks::default();
        let t = batch(&mut acks, 1);
        acks.observe(Connected {
            session_present: false,
        });
        assert!(acks.lost() && !acks.complete(t));
        acks.reset();
        assert!(
            !acks.lost() && !acks.complete(t),
            "an old ticket passed after reset"
        );
        let after = batch(&mut acks, 1);
        assert_ne!(after, t);
        acks.observe(Sent(1));
        acks.observe(Acked(1));
        assert!(acks.complete(after));
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
            /// A new batch begins (the previous ones stay in flight).
            Begin,
            /// The newest batch hands this many publishes to the client.
            Publish(u8),
            /// The client sends its next queued publish.
            Send,
            /// The broker acknowledges the n-th publish in flight (modulo their number).
            Ack(u8),
            /// The connection drops and comes back with the session: resends.
            Reconnect,
            /// Every batch in flight gives up.
            Abandon,
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                1 => Just(Step::Begin),
                2 => (1u8..4).prop_map(Step::Publish),
                4 => Just(Step::Send),
                4 => any::<u8>().prop_map(Step::Ack),
                1 => Just(Step::Reconnect),
                1 => Just(Step::Abandon),
            ]
        }

        proptest! {
            /// Against a model of rumqttc (in-order sends, ids 1..=4 reused only after
            /// their ack, resends after a reconnect), with several batches in flight:
            /// each live batch is complete exactly when every publish it made was
            /// acknowledged, and an abandoned one never is.
            #[test]
            fn complete_exactly_when_every_publish_of_the_batch_is_acked(
                steps in proptest::collection::vec(step(), 0..120)
            ) {
                const MAX_INFLIGHT: u16 = 4;
                let mut acks = Acks::default();
                // Per batch: its ticket, unacked publishes, whether abandoned.
                let mut batches: Vec<(Ticket, usize, bool)> = vec![(acks.begin(), 0, false)];
                let mut queue: VecDeque<usize> = VecDeque::new(); // batch of each queued publish
                let mut inflight: BTreeMap<u16, usize> = BTreeMap::new(); // pkid -> batch
                let mut last = 0u16;
                for step in steps {
                    match step {
                        Step::Begin => batches.push((acks.begin(), 0, false)),
                        Step::Publish(n) => {
                            let newest = batches.len() - 1;
                            for _ in 0..n {
                                queue.push_back(newest);
                                acks.publishing(batches[newest].0);
                                batches[newest].1 += 1;
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
                            let owner = inflight.remove(&pkid).unwrap();
                            batches[owner].1 -= 1;
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
                            for batch in &mut batches {
                                batch.2 = true;
                            }
                            batches.push((acks.begin(), 0, false));
                        }
                    }
                    prop_assert!(!acks.lost());
                    for &(ticket, unacked, abandoned) in &batches {
                        prop_assert_eq!(acks.complete(ticket), unacked == 0 && !abandoned);
                        prop_assert_eq!(acks.awaiting(ticket), unacked);
                    }
                }
            }
        }
    }
}
