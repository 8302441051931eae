//! Which faults `coexist chaos` injects, and when. Pure.

use std::time::Duration;

/// A role the run starts as a process of its own, so it can be SIGKILLed alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Role {
    /// How logs and reports name it.
    pub name: &'static str,
    /// Its `coexist` subcommand.
    pub args: &'static [&'static str],
}

/// Every role the traffic passes through: the webhook receiver, the processors and
/// the sinks that write what the run checks. The media and expo sinks carry none of
/// this traffic (media needs media messages, expo offline agents; their crash tests
/// are tests/media.rs and tests/expo.rs), so killing them here would prove nothing.
pub const ROLES: &[Role] = &[
    Role {
        name: "ingest",
        args: &["ingest"],
    },
    Role {
        name: "process-router",
        args: &["process", "router"],
    },
    Role {
        name: "process-status",
        args: &["process", "status"],
    },
    Role {
        name: "process-notifier",
        args: &["process", "notifier"],
    },
    Role {
        name: "sink-mongo",
        args: &["sink", "mongo"],
    },
    Role {
        name: "sink-clickhouse",
        args: &["sink", "clickhouse"],
    },
    Role {
        name: "sink-mqtt",
        args: &["sink", "mqtt"],
    },
    Role {
        name: "sink-whatsapp",
        args: &["sink", "whatsapp"],
    },
];

/// The stores restarted under load (`scripts/stack restart <name>`).
pub const STORES: &[&str] = &["mongo", "clickhouse"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL the role's process, then start it again.
    Kill(Role),
    /// Stop the server and start it again.
    RestartStore(&'static str),
}

impl Fault {
    pub fn describe(&self) -> String {
        match self {
            Fault::Kill(role) => format!("SIGKILL {}", role.name),
            Fault::RestartStore(store) => format!("restart {store}"),
        }
    }
}

/// Every fault once, in turn: each role, then each store.
pub fn every_fault() -> Vec<Fault> {
    ROLES
        .iter()
        .map(|r| Fault::Kill(*r))
        .chain(STORES.iter().map(|s| Fault::RestartStore(s)))
        .collect()
}

/// When each fault starts, spread evenly over the stream, leaving a quiet start (so
/// every role has joined) and a quiet end (so the last one recovers under load).
pub fn schedule(faults: Vec<Fault>, stream: Duration) -> Vec<(Duration, Fault)> {
    let slots = faults.len() as u32 + 1;
    faults
        .into_iter()
        .enumerate()
        .map(|(i, f)| (stream * (i as u32 + 1) / slots, f))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_and_store_is_hit_once_inside_the_stream() {
        let plan = schedule(every_fault(), Duration::from_secs(100));
        assert_eq!(plan.len(), ROLES.len() + STORES.len());
        let first = plan.first().map(|(at, _)| *at).unwrap_or_default();
        let last = plan.last().map(|(at, _)| *at).unwrap_or_default();
        assert!(first > Duration::ZERO && last < Duration::from_secs(100));
        assert!(plan.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(plan[0].1.describe(), "SIGKILL ingest");
        assert_eq!(plan[plan.len() - 1].1.describe(), "restart clickhouse");
    }
}
