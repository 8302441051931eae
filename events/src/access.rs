//! Who may read and write which MQTT topic: the one rule for a device's access.
//!
//! Every place that enforces it calls this module: the Mosquitto dynamic-security
//! roles (`api::mqtt_access`), EMQX's HTTP authorization hook, and the browser's live
//! feed. A device belongs to one agent of one org and may
//! - subscribe to its agent's inbox, and to the org's conversations and presence;
//! - publish only its own agent's presence and conversation activity (the presence
//!   bridge takes the agent from the topic, so no one can speak for a colleague).
//!
//! Nothing ever reaches another org's topics: every grant starts `{prefix}/{org}/`.

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Subscribe with a topic filter (may hold `+` and `#`).
    Subscribe,
    /// Publish to a topic name (no wildcards).
    Publish,
}

/// One permission: `action` on the topics `filter` covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub action: Action,
    pub filter: String,
}

/// Everything an agent's device may do, as topic filters.
pub fn grants(prefix: &str, org: &str, agent_id: &str) -> Vec<Grant> {
    let grant = |action, filter: String| Grant { action, filter };
    vec![
        grant(
            Action::Subscribe,
            format!("{prefix}/{org}/agents/{agent_id}/inbox"),
        ),
        grant(Action::Subscribe, format!("{prefix}/{org}/conversations/#")),
        grant(Action::Subscribe, format!("{prefix}/{org}/presence/#")),
        grant(
            Action::Publish,
            format!("{prefix}/{org}/presence/{agent_id}"),
        ),
        grant(
            Action::Publish,
            format!("{prefix}/{org}/conversations/+/activity/{agent_id}"),
        ),
    ]
}

/// Whether an agent's device may do `action` with `topic` (a filter when
/// subscribing, a name when publishing). Ids must be valid ids: a wildcard or a
/// separator smuggled into an org or agent id would widen the grants.
pub fn may(prefix: &str, org: &str, agent_id: &str, action: Action, topic: &str) -> bool {
    if !crate::ids::is_valid_id(org) || !crate::ids::is_valid_id(agent_id) {
        return false;
    }
    if action == Action::Publish && (topic.contains('+') || topic.contains('#')) {
        return false;
    }
    grants(prefix, org, agent_id)
        .iter()
        .any(|g| g.action == action && covers(&g.filter, topic))
}

/// Whether every topic that `requested` matches is matched by `granted` (MQTT topic
/// filter semantics, as Mosquitto applies to subscribe ACLs): a literal level matches
/// only itself; a granted `+` covers any one level, `+` included but not `#`; a
/// granted `#` covers the rest. A topic name is a filter without wildcards.
pub fn covers(granted: &str, requested: &str) -> bool {
    if requested.is_empty() || requested.starts_with('$') {
        return false;
    }
    let mut want = requested.split('/');
    for level in granted.split('/') {
        if level == "#" {
            return true;
        }
        match want.next() {
            None => return false,
            Some("#") => return false,
            Some(w) if level == "+" => {
                if w.contains('#') {
                    return false;
                }
            }
            Some(w) => {
                if w != level {
                    return false;
                }
            }
        }
    }
    want.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: &str = "coexist";

    #[test]
    fn a_device_reads_its_inbox_and_its_orgs_shared_topics_only() {
        let yes = [
            "coexist/acme/agents/ann/inbox",
            "coexist/acme/conversations/#",
            "coexist/acme/conversations/c1",
            "coexist/acme/conversations/+/activity/bob",
            "coexist/acme/presence/#",
            "coexist/acme/presence/bob",
        ];
        let no = [
            "coexist/acme/agents/bob/inbox",
            "coexist/acme/agents/+/inbox",
            "coexist/acme/#",
            "coexist/#",
            "#",
            "coexist/other/conversations/#",
            "coexist/+/conversations/#",
            "$SYS/#",
            "$CONTROL/dynamic-security/v1",
        ];
        for t in yes {
            assert!(may(P, "acme", "ann", Action::Subscribe, t), "{t}");
        }
        for t in no {
            assert!(!may(P, "acme", "ann", Action::Subscribe, t), "{t}");
        }
    }

    #[test]
    fn a_device_speaks_only_for_its_own_agent() {
        assert!(may(
            P,
            "acme",
            "ann",
            Action::Publish,
            "coexist/acme/presence/ann"
        ));
        assert!(may(
            P,
            "acme",
            "ann",
            Action::Publish,
            "coexist/acme/conversations/c1/activity/ann"
        ));
        for t in [
            "coexist/acme/presence/bob",
            "coexist/acme/presence/+",
            "coexist/acme/conversations/c1/activity/bob",
            "coexist/acme/conversations/c1",
            "coexist/acme/agents/ann/inbox",
            "coexist/other/presence/ann",
        ] {
            assert!(!may(P, "acme", "ann", Action::Publish, t), "{t}");
        }
    }

    #[test]
    fn ids_cannot_widen_the_grants() {
        assert!(!may(
            P,
            "+",
            "ann",
            Action::Subscribe,
            "coexist/+/conversations/#"
        ));
        assert!(!may(
            P,
            "acme",
            "#",
            Action::Subscribe,
            "coexist/acme/agents/#"
        ));
        assert!(!may(
            P,
            "acme/x",
            "ann",
            Action::Subscribe,
            "coexist/acme/x/presence/#"
        ));
    }

    proptest! {
        /// Whatever the topic, nothing outside `{prefix}/{org}/` is ever allowed.
        #[test]
        fn nothing_leaves_the_org(topic in "[a-z+#/$]{0,30}", publish in any::<bool>()) {
            let action = if publish { Action::Publish } else { Action::Subscribe };
            if may(P, "acme", "ann", action, &topic) {
                prop_assert!(topic.starts_with("coexist/acme/"), "{}", topic);
            }
        }

        /// A granted filter covers itself, and a covered filter's concrete topics are
        /// covered too (the relation is consistent with matching).
        #[test]
        fn covering_is_reflexive_and_closed_under_narrowing(
            levels in proptest::collection::vec("[a-c]{1,2}", 1..5),
        ) {
            let topic = levels.join("/");
            prop_assert!(covers(&topic, &topic));
            let plus: Vec<&str> = levels.iter().map(|_| "+").collect();
            prop_assert!(covers(&plus.join("/"), &topic));
            prop_assert!(covers("#", &topic));
            prop_assert!(!covers(&topic, "#"));
        }
    }
}
