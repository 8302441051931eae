//! `coexist simulate scenario --week`: a realistic week of one org's traffic, so the
//! dashboards show something meaningful on a fresh stack. Several business numbers
//! and agents; thousands of conversations that customers open, agents (or the
//! Business app) answer and resolve; template campaigns; every send with its Graph
//! API answer and status transitions at real-world failure rates and latencies.
//!
//! It writes the normalized events straight to the topics the sinks read
//! (`whatsapp.events`, `messages.outbound`, `messages.outbound.results`,
//! `messages.status`, `conversations.assignments`): it plays the router's and the
//! status processor's parts too, so run it with the sinks alone (e.g. `coexist sink
//! clickhouse`), not `coexist all`, or the processors would answer its events again.
//!
//! Deterministic: the same seed and end time give the same events and ids (a rerun
//! is deduplicated by the sinks). Generation is pure ([`generate`]); only
//! [`run`] touches Kafka.

use std::time::Duration;

use anyhow::Context;
use events::delivery::{OutboundMessage, StatusTransition};
use events::event::{Direction, EventBody, MessageEvent, Origin};
use events::inbox::{AssignmentEvent, BUSINESS_APP, ConversationState};
use events::webhook::ApiError;
use events::{DeliveryStatus, WhatsAppEvent, ids, topics};
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Debug, Clone, clap::Args)]
pub struct ScenarioArgs {
    /// Spread the events over the past seven days (the only span so far).
    #[arg(long)]
    pub week: bool,
    /// Same seed (and --end-ms), same events.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    #[arg(long, default_value = "demo")]
    pub org: String,
    /// Business numbers of the org.
    #[arg(long, default_value_t = 3)]
    pub numbers: usize,
    #[arg(long, default_value_t = 6)]
    pub agents: usize,
    /// Customer conversations over the week.
    #[arg(long, default_value_t = 3000)]
    pub conversations: usize,
    /// Template sends per number and day (campaigns, outside conversations).
    #[arg(long, default_value_t = 120)]
    pub campaign_per_day: usize,
    /// End of the week, ms since the epoch (default: now).
    #[arg(long)]
    pub end_ms: Option<i64>,
}

/// One record to produce.
#[derive(Debug, Clone, PartialEq)]
pub struct Produced {
    pub topic: &'static str,
    pub key: String,
    pub value: Value,
}

/// SplitMix64: small, fast and deterministic; enough for a simulation.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    /// Milliseconds, log-uniform between `lo` and `hi` seconds: most waits are short,
    /// a few are long, as real latencies are.
    fn wait_ms(&mut self, lo: f64, hi: f64) -> i64 {
        ((lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp() * 1000.0) as i64
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const AGENT_NAMES: &[&str] = &["ann", "bob", "cara", "dev", "eli", "fay", "gus", "hana"];
const TEMPLATES: &[&str] = &[
    "order_update",
    "shipping_notice",
    "appointment_reminder",
    "feedback_request",
];
/// Meta error codes after a message was sent, with their share of sent messages.
const DELIVERY_FAILURES: &[(i64, &str, f64)] = &[
    (131026, "Message undeliverable", 0.015),
    (131049, "Meta chose not to deliver", 0.007),
    (131000, "Something went wrong", 0.002),
];
/// Errors the Graph API answers a send with, with their share of sends.
const SEND_FAILURES: &[(i64, &str, f64)] = &[
    (131047, "Re-engagement message", 0.008),
    (131056, "Pair rate limit hit", 0.003),
    (100, "Invalid parameter", 0.002),
];
/// Customers write more in the daytime: relative weight of each UTC hour.
const HOURLY: [u32; 24] = [
    1, 1, 1, 1, 1, 2, 3, 5, 8, 10, 10, 9, 8, 9, 10, 10, 9, 8, 7, 6, 5, 4, 3, 2,
];

struct Generator<'a> {
    args: &'a ScenarioArgs,
    rng: Rng,
    out: Vec<Produced>,
    sequence: u64,
}

/// Every record of the scenario, in no particular order (the sinks do not care;
/// each topic's records of one conversation keep their order).
pub fn generate(args: &ScenarioArgs, end_ms: i64) -> Vec<Produced> {
    let mut g = Generator {
        args,
        rng: Rng(args.seed),
        out: Vec::new(),
        sequence: 0,
    };
    let numbers = numbers(args.numbers);
    let agents: Vec<String> = (0..args.agents.max(1))
        .map(|i| match AGENT_NAMES.get(i) {
            Some(name) => (*name).to_string(),
            None => format!("agent{i}"),
        })
        .collect();
    let start_ms = end_ms - 7 * 86_400_000;
    for c in 0..args.conversations {
        let number = g.rng.pick(&numbers).clone();
        let at = g.daytime(start_ms, end_ms - 3 * 3_600_000);
        g.conversation(&number, c, &agents, at);
    }
    for number in &numbers {
        for day in 0..7 {
            for _ in 0..args.campaign_per_day {
                let at = g.daytime(
                    start_ms + day * 86_400_000,
                    start_ms + (day + 1) * 86_400_000 - 3_600_000,
                );
                let template = *g.rng.pick(TEMPLATES);
                let contact = format!("1555{:07}", g.rng.below(9_000_000));
                let conversation = ids::conversation_id(number, &contact);
                g.send(
                    number,
                    &conversation,
                    &contact,
                    "campaign",
                    Some(template),
                    at,
                );
            }
        }
    }
    g.out
}

/// `{prefix}0..n`: the demo number first, as in coexist.example.toml.
fn numbers(n: usize) -> Vec<String> {
    (0..n.max(1))
        .map(|i| format!("1065403522{:05}", 42922 + i))
        .collect()
}

impl Generator<'_> {
    fn id(&mut self, what: &str) -> String {
        self.sequence += 1;
        format!("sim{}.{what}.{}", self.args.seed, self.sequence)
    }

    /// A time in `[from, to)` on a random day, at an hour drawn from [`HOURLY`].
    fn daytime(&mut self, from: i64, to: i64) -> i64 {
        let day_ms = 86_400_000;
        // Every calendar day the range touches; draws outside the range are redrawn.
        let days = to.div_euclid(day_ms) - from.div_euclid(day_ms) + 1;
        let total: u32 = HOURLY.iter().sum();
        let mut at = from;
        for _ in 0..32 {
            let mut ticket = self.rng.below(u64::from(total)) as u32;
            let mut hour = 0;
            while ticket >= HOURLY[hour] {
                ticket -= HOURLY[hour];
                hour += 1;
            }
            let day_start =
                from - from.rem_euclid(day_ms) + self.rng.below(days as u64) as i64 * day_ms;
            at = day_start + hour as i64 * 3_600_000 + self.rng.below(3_600_000) as i64;
            if (from..to).contains(&at) {
                return at;
            }
        }
        at.clamp(from, to - 1)
    }

    fn push<T: serde::Serialize>(&mut self, topic: &'static str, key: &str, value: &T) {
        self.out.push(Produced {
            topic,
            key: key.to_string(),
            value: serde_json::to_value(value).unwrap_or(Value::Null),
        });
    }

    fn message(&mut self, number: &str, contact: &str, origin: Origin, kind: &str, at_ms: i64) {
        let wamid = format!("wamid.{}", self.id("m"));
        let event = WhatsAppEvent {
            id: wamid.clone(),
            org: self.args.org.clone(),
            phone_number_id: number.to_string(),
            display_phone_number: String::new(),
            waba_id: String::new(),
            received_at_ms: at_ms + 400,
            body: EventBody::Message(MessageEvent {
                wamid,
                conversation_id: ids::conversation_id(number, contact),
                contact_wa_id: contact.to_string(),
                contact_name: None,
                direction: if origin == Origin::Customer {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                origin,
                sent_at: at_ms / 1000,
                message_type: kind.to_string(),
                preview: None,
                reply_to: None,
                media: None,
                history_status: None,
                errors: vec![],
                raw: json!({}),
            }),
        };
        self.push(topics::WHATSAPP_EVENTS, number, &event);
    }

    fn assign(
        &mut self,
        number: &str,
        conversation: &str,
        state: ConversationState,
        assignee: Option<&str>,
        at_ms: i64,
    ) {
        let event = AssignmentEvent {
            id: self.id("a"),
            org: self.args.org.clone(),
            phone_number_id: number.to_string(),
            conversation_id: conversation.to_string(),
            state,
            assignee: assignee.map(str::to_string),
            command_id: None,
            issued_by: None,
            rejected: None,
            note: None,
            at_ms,
        };
        self.push(topics::CONVERSATION_ASSIGNMENTS, number, &event);
    }

    /// One customer conversation: messages in, an owner, replies, a resolution.
    fn conversation(&mut self, number: &str, index: usize, agents: &[String], at: i64) {
        let contact = format!("1650{:07}", index);
        let conversation = ids::conversation_id(number, &contact);
        let mut t = at;
        let kinds = [
            "text", "text", "text", "text", "text", "text", "image", "audio", "document", "sticker",
        ];
        for _ in 0..1 + self.rng.below(3) {
            let kind = *self.rng.pick(&kinds);
            self.message(number, &contact, Origin::Customer, kind, t);
            t += self.rng.wait_ms(5.0, 120.0);
        }
        let opened = at + 150;
        self.assign(number, &conversation, ConversationState::Open, None, opened);
        // About one conversation in six is answered from the Business app.
        let (owner, mut reply_at) = if self.rng.chance(0.17) {
            let echo_at = at + self.rng.wait_ms(20.0, 1800.0);
            self.message(number, &contact, Origin::BusinessApp, "text", echo_at);
            self.assign(
                number,
                &conversation,
                ConversationState::Assigned,
                Some(BUSINESS_APP),
                echo_at + 200,
            );
            (
                BUSINESS_APP.to_string(),
                echo_at + self.rng.wait_ms(30.0, 900.0),
            )
        } else {
            // Busy hours queue some conversations before an agent is free.
            let assigned_at = if self.rng.chance(0.3) {
                opened + self.rng.wait_ms(10.0, 900.0)
            } else {
                opened
            };
            let agent = self.rng.pick(agents).clone();
            self.assign(
                number,
                &conversation,
                ConversationState::Assigned,
                Some(&agent),
                assigned_at,
            );
            (agent, assigned_at + self.rng.wait_ms(15.0, 2400.0))
        };
        for _ in 0..1 + self.rng.below(3) {
            if owner == BUSINESS_APP {
                self.message(number, &contact, Origin::BusinessApp, "text", reply_at);
            } else {
                let template = self.rng.chance(0.08).then(|| *self.rng.pick(TEMPLATES));
                self.send(number, &conversation, &contact, &owner, template, reply_at);
            }
            reply_at += self.rng.wait_ms(30.0, 600.0);
        }
        if self.rng.chance(0.85) {
            let resolved_at = reply_at + self.rng.wait_ms(60.0, 7200.0);
            self.assign(
                number,
                &conversation,
                ConversationState::Resolved,
                None,
                resolved_at,
            );
        }
    }

    /// A send through the API: the command, the Graph API's answer, and the statuses.
    fn send(
        &mut self,
        number: &str,
        conversation: &str,
        contact: &str,
        by: &str,
        template: Option<&str>,
        at_ms: i64,
    ) {
        let org = self.args.org.clone();
        let id = self.id("out");
        let payload = match template {
            Some(name) => {
                json!({"type": "template", "template": {"name": name, "language": {"code": "en_US"}}})
            }
            None => json!({"type": "text", "text": {"body": "Thanks for writing, let me check."}}),
        };
        let message = OutboundMessage {
            id: id.clone(),
            org: org.clone(),
            phone_number_id: number.to_string(),
            conversation_id: conversation.to_string(),
            to: contact.to_string(),
            sent_by: by.to_string(),
            at_ms,
            payload,
        };
        self.push(topics::MESSAGES_OUTBOUND, number, &message);
        let answered = at_ms + 200 + self.rng.below(800) as i64;
        let refused = self.failure(SEND_FAILURES);
        let wamid = refused.is_none().then(|| format!("wamid.{id}"));
        let result = message.result(wamid.clone(), refused.clone(), answered);
        self.push(topics::OUTBOUND_RESULTS, number, &result);
        let Some(wamid) = wamid else {
            let wamid = events::delivery::unsent_id(&id);
            self.transition(
                number,
                conversation,
                &wamid,
                None,
                DeliveryStatus::Failed,
                answered,
                refused,
            );
            return;
        };
        let mut t = answered;
        self.transition(
            number,
            conversation,
            &wamid,
            None,
            DeliveryStatus::Accepted,
            t,
            None,
        );
        t += self.rng.wait_ms(0.5, 4.0);
        self.transition(
            number,
            conversation,
            &wamid,
            Some(DeliveryStatus::Accepted),
            DeliveryStatus::Sent,
            t,
            None,
        );
        if let Some(error) = self.failure(DELIVERY_FAILURES) {
            t += self.rng.wait_ms(5.0, 3600.0);
            self.transition(
                number,
                conversation,
                &wamid,
                Some(DeliveryStatus::Sent),
                DeliveryStatus::Failed,
                t,
                Some(error),
            );
            return;
        }
        // A phone that is off delivers hours later; a few never come online this week.
        if self.rng.chance(0.03) {
            return;
        }
        let slow = self.rng.chance(0.08);
        t += if slow {
            self.rng.wait_ms(300.0, 28_800.0)
        } else {
            self.rng.wait_ms(0.8, 20.0)
        };
        let read = self.rng.chance(if template.is_some() { 0.55 } else { 0.8 });
        // Meta sometimes reports read without delivered first.
        if read && self.rng.chance(0.04) {
            t += self.rng.wait_ms(5.0, 3600.0);
            self.transition(
                number,
                conversation,
                &wamid,
                Some(DeliveryStatus::Sent),
                DeliveryStatus::Read,
                t,
                None,
            );
            return;
        }
        self.transition(
            number,
            conversation,
            &wamid,
            Some(DeliveryStatus::Sent),
            DeliveryStatus::Delivered,
            t,
            None,
        );
        if read {
            t += self.rng.wait_ms(3.0, 7200.0);
            self.transition(
                number,
                conversation,
                &wamid,
                Some(DeliveryStatus::Delivered),
                DeliveryStatus::Read,
                t,
                None,
            );
        }
    }

    /// One of `failures` at its rate, or none.
    fn failure(&mut self, failures: &[(i64, &str, f64)]) -> Option<ApiError> {
        let mut ticket = self.rng.unit();
        for (code, title, rate) in failures {
            if ticket < *rate {
                return serde_json::from_value(json!({"code": code, "title": title})).ok();
            }
            ticket -= rate;
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        number: &str,
        conversation: &str,
        wamid: &str,
        from: Option<DeliveryStatus>,
        to: DeliveryStatus,
        at_ms: i64,
        error: Option<ApiError>,
    ) {
        let transition = StatusTransition {
            id: ids::status_id(wamid, to.as_str()),
            org: self.args.org.clone(),
            phone_number_id: number.to_string(),
            conversation_id: conversation.to_string(),
            wamid: wamid.to_string(),
            from,
            to,
            at: at_ms / 1000,
            error,
        };
        self.push(topics::MESSAGES_STATUS, number, &transition);
    }
}

/// Generates the week and produces it, with a progress bar.
pub async fn run(config: &crate::Config, args: ScenarioArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.week,
        "pass --week: a week is the only span simulated so far"
    );
    let end_ms = args.end_ms.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    });
    let records = generate(&args, end_ms);
    let contract = crate::topics::contract()?;
    crate::topics::apply(&config.kafka, &contract, &config.topics).await?;
    let publisher = config.kafka.publisher("simulate-scenario").await?;
    let bar = indicatif::ProgressBar::new(records.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:40}] {pos}/{len} records {per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    // In causal order, as the real writers produce them: sends and messages, then the
    // Graph API's answers, then what the processors derive (statuses, assignments).
    // The sink labels a status with its send's template only once the answer is in.
    let phases: [&[&str]; 3] = [
        &[topics::WHATSAPP_EVENTS, topics::MESSAGES_OUTBOUND],
        &[topics::OUTBOUND_RESULTS],
        &[topics::MESSAGES_STATUS, topics::CONVERSATION_ASSIGNMENTS],
    ];
    for phase in phases {
        let mut sends = futures::stream::iter(
            records
                .iter()
                .filter(|r| phase.contains(&r.topic))
                .map(|r| {
                    let publisher = publisher.clone();
                    async move {
                        publisher
                            .send_json(r.topic, &r.key, &r.value, vec![])
                            .await
                            .with_context(|| format!("producing to {}", r.topic))
                    }
                }),
        )
        .buffered(512);
        while let Some(sent) = sends.next().await {
            sent?;
            bar.inc(1);
        }
    }
    publisher.flush(Duration::from_secs(10));
    bar.finish();
    let count = |topic: &str| records.iter().filter(|r| r.topic == topic).count();
    println!(
        "simulated a week for org {}: {} conversations over {} numbers and {} agents; {} messages, {} sends, {} status transitions, {} assignment changes",
        args.org,
        args.conversations,
        args.numbers,
        args.agents,
        count(topics::WHATSAPP_EVENTS),
        count(topics::MESSAGES_OUTBOUND),
        count(topics::MESSAGES_STATUS),
        count(topics::CONVERSATION_ASSIGNMENTS),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ScenarioArgs {
        ScenarioArgs {
            week: true,
            seed: 3,
            org: "demo".into(),
            numbers: 3,
            agents: 4,
            conversations: 400,
            campaign_per_day: 20,
            end_ms: None,
        }
    }

    const END: i64 = 1_700_000_000_000;

    #[test]
    fn the_same_seed_gives_the_same_week() {
        assert_eq!(generate(&args(), END), generate(&args(), END));
        let other = ScenarioArgs { seed: 4, ..args() };
        assert_ne!(generate(&args(), END), generate(&other, END));
    }

    #[test]
    fn every_record_decodes_as_its_topic_type_within_the_week() {
        for r in generate(&args(), END) {
            let bytes = serde_json::to_vec(&r.value).unwrap();
            let at_ms = match r.topic {
                topics::WHATSAPP_EVENTS => {
                    let e: WhatsAppEvent = serde_json::from_slice(&bytes).unwrap();
                    e.received_at_ms
                }
                topics::MESSAGES_OUTBOUND => {
                    serde_json::from_slice::<OutboundMessage>(&bytes)
                        .unwrap()
                        .at_ms
                }
                topics::OUTBOUND_RESULTS => {
                    serde_json::from_slice::<events::delivery::OutboundResult>(&bytes)
                        .unwrap()
                        .at_ms
                }
                topics::MESSAGES_STATUS => {
                    serde_json::from_slice::<StatusTransition>(&bytes)
                        .unwrap()
                        .at
                        * 1000
                }
                topics::CONVERSATION_ASSIGNMENTS => {
                    serde_json::from_slice::<AssignmentEvent>(&bytes)
                        .unwrap()
                        .at_ms
                }
                other => panic!("unexpected topic {other}"),
            };
            // Late statuses may trail the week's end by hours; nothing starts before it.
            assert!(
                (END - 7 * 86_400_000..END + 86_400_000).contains(&at_ms),
                "{r:?}"
            );
        }
    }

    #[test]
    fn statuses_move_forward_and_fail_at_a_realistic_rate() {
        let records = generate(
            &ScenarioArgs {
                conversations: 3000,
                ..args()
            },
            END,
        );
        let mut last: std::collections::HashMap<String, DeliveryStatus> = Default::default();
        let (mut sends, mut failed) = (0, 0);
        for r in &records {
            match r.topic {
                topics::MESSAGES_OUTBOUND => sends += 1,
                topics::MESSAGES_STATUS => {
                    let t: StatusTransition = serde_json::from_value(r.value.clone()).unwrap();
                    assert_eq!(t.from, last.get(&t.wamid).copied(), "{t:?}");
                    assert!(t.from.is_none_or(|f| f.advances_to(t.to)));
                    failed += usize::from(t.to == DeliveryStatus::Failed);
                    last.insert(t.wamid.clone(), t.to);
                }
                _ => {}
            }
        }
        let rate = failed as f64 / sends as f64;
        assert!(
            (0.02..0.06).contains(&rate),
            "failure rate {rate} over {sends} sends"
        );
    }
}
