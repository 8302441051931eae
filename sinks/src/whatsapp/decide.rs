//! Whether an outbound command may go out, and if not, what to answer (pure).
//!
//! The sink gathers the facts (does this deployment hold the number's token, what the
//! [`ledger`](super::ledger) knows of the command, the [`window`](super::window) book,
//! the clock) and acts on the [`Verdict`]: the Graph API call, an answer on
//! `messages.outbound.results`, or nothing. Like the router's `machine.rs`, the rules
//! live here, in one function over plain data, tested without Kafka or HTTP.
//!
//! In order: another deployment's number is left alone; a command already answered
//! is not answered again; one whose answer was not published gets it published; one
//! tried without an answer is reported (with its wamid when a status webhook named
//! it), never resent; a fresh one is refused when too old, when its payload can never
//! be sent, or when it needs the customer service window and the window is closed.

use events::delivery::{OutboundMessage, OutboundResult};

use super::codes;
use super::config::WhatsAppConfig;
use super::ledger::Decision;
use super::payload::{self, Call};
use super::window::WindowBook;
use crate::graph::api_error;

/// What the sink does with one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Not this deployment's number (no token for it): another sink's to send.
    NotOurs,
    /// Answered already, and the answer is on Kafka.
    Done,
    /// Publish this answer; no Graph API call.
    Answer(Box<OutboundResult>),
    /// Make this Graph API call.
    Send(Call),
}

/// The verdict for `command` at `now_ms`. `ours`: this deployment holds the number's
/// token; `ledger`: what the ledger knows of the command's id.
pub fn decide(
    command: &OutboundMessage,
    ours: bool,
    ledger: Decision,
    window: &WindowBook,
    config: &WhatsAppConfig,
    now_ms: i64,
) -> Verdict {
    if !ours {
        return Verdict::NotOurs;
    }
    let refuse = |code: i64, title: &str, details: &str| {
        let error = api_error(code, title, details);
        Verdict::Answer(Box::new(command.result(None, Some(error), now_ms)))
    };
    match ledger {
        Decision::Answered => Verdict::Done,
        Decision::Republish(result) => Verdict::Answer(result),
        Decision::SentAs(wamid) => {
            Verdict::Answer(Box::new(command.result(Some(wamid), None, now_ms)))
        }
        Decision::InDoubt => refuse(
            codes::OUTCOME_UNKNOWN,
            "outcome unknown, not resent",
            "the sink stopped during the Graph API call; the message may or may not have been sent, and it is never sent twice",
        ),
        Decision::Fresh => {
            let age_ms = now_ms - command.at_ms;
            if age_ms > config.max_command_age_ms {
                let details = format!(
                    "the command is {} s old; older than {} ms is never sent",
                    age_ms / 1000,
                    config.max_command_age_ms
                );
                return refuse(codes::EXPIRED, "expired, not sent", &details);
            }
            let call = match payload::plan(command) {
                Ok(call) => call,
                Err(reason) => return refuse(codes::INVALID_PARAMETER, "invalid payload", &reason),
            };
            let open = window.check(
                &command.phone_number_id,
                &command.to,
                &command.payload,
                now_ms,
                config.window_hours,
            );
            match open {
                Ok(()) => Verdict::Send(call),
                Err(closed) => refuse(
                    codes::OUTSIDE_WINDOW,
                    "re-engagement message",
                    &closed.reason,
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use events::DeliveryStatus;
    use events::event::Origin;
    use events::semantics::samples;
    use serde_json::{Value, json};

    use super::*;

    const NOW: i64 = 100 * 3_600_000;

    fn command(payload: Value) -> OutboundMessage {
        let mut command = payload::tests::command(payload);
        command.at_ms = NOW - 1_000;
        command
    }

    fn text() -> Value {
        json!({"type": "text", "text": {"body": "hi"}})
    }

    fn template() -> Value {
        json!({"type": "template", "template": {"name": "hello", "language": {"code": "en"}}})
    }

    /// The customer wrote `hours_ago`.
    fn window(hours_ago: i64) -> WindowBook {
        let mut book = WindowBook::default();
        let sent_at = NOW / 1000 - hours_ago * 3600;
        book.observe(&samples::message(
            "acme",
            "111",
            "222",
            "wamid.in",
            Origin::Customer,
            sent_at,
        ));
        book
    }

    fn verdict(command: &OutboundMessage, ledger: Decision, window: &WindowBook) -> Verdict {
        decide(
            command,
            true,
            ledger,
            window,
            &WhatsAppConfig::default(),
            NOW,
        )
    }

    /// The refusal's code, or `None` when it is no refusal.
    fn refusal(verdict: &Verdict) -> Option<i64> {
        match verdict {
            Verdict::Answer(r) => r.error.as_ref().map(|e| e.code),
            _ => None,
        }
    }

    #[test]
    fn a_fresh_command_in_the_window_is_sent() {
        let v = verdict(&command(text()), Decision::Fresh, &window(1));
        assert!(matches!(v, Verdict::Send(Call::Message { .. })), "{v:?}");
    }

    #[test]
    fn another_deployments_number_is_left_alone_whatever_else_holds() {
        let v = decide(
            &command(text()),
            false,
            Decision::InDoubt,
            &window(1),
            &WhatsAppConfig::default(),
            NOW,
        );
        assert_eq!(v, Verdict::NotOurs);
    }

    #[test]
    fn the_ledger_is_asked_before_anything_is_sent() {
        let c = command(text());
        assert_eq!(verdict(&c, Decision::Answered, &window(1)), Verdict::Done);
        let saved = c.result(Some("wamid.old".into()), None, 5);
        assert_eq!(
            verdict(&c, Decision::Republish(Box::new(saved.clone())), &window(1)),
            Verdict::Answer(Box::new(saved))
        );
        let Verdict::Answer(sent) = verdict(&c, Decision::SentAs("wamid.S".into()), &window(1))
        else {
            panic!("not an answer");
        };
        assert_eq!(sent.outcome().status(), DeliveryStatus::Accepted);
        assert_eq!(sent.wamid.as_deref(), Some("wamid.S"));
        let doubt = verdict(&c, Decision::InDoubt, &window(1));
        assert_eq!(refusal(&doubt), Some(codes::OUTCOME_UNKNOWN));
    }

    #[test]
    fn an_old_a_malformed_and_an_out_of_window_command_are_refused_with_their_codes() {
        let mut old = command(text());
        old.at_ms = NOW - WhatsAppConfig::default().max_command_age_ms - 1;
        let v = verdict(&old, Decision::Fresh, &window(1));
        assert_eq!(refusal(&v), Some(codes::EXPIRED));
        let bad = command(json!({"type": "fax", "fax": {}}));
        let v = verdict(&bad, Decision::Fresh, &window(1));
        assert_eq!(refusal(&v), Some(codes::INVALID_PARAMETER));
        let late = verdict(&command(text()), Decision::Fresh, &window(25));
        assert_eq!(refusal(&late), Some(codes::OUTSIDE_WINDOW));
        let never = verdict(&command(text()), Decision::Fresh, &WindowBook::default());
        assert_eq!(refusal(&never), Some(codes::OUTSIDE_WINDOW));
    }

    #[test]
    fn a_template_needs_no_window() {
        let v = verdict(&command(template()), Decision::Fresh, &window(25));
        assert!(matches!(v, Verdict::Send(_)), "{v:?}");
        let v = verdict(
            &command(template()),
            Decision::Fresh,
            &WindowBook::default(),
        );
        assert!(matches!(v, Verdict::Send(_)), "{v:?}");
    }
}
