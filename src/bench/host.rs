//! What the bench reads about processes on this machine: CPU time and resident
//! memory from `/proc` (Linux), which process listens on a port (the broker), and
//! the stage histograms a pipeline's `/metrics` exposes. The arithmetic is pure and
//! tested; the reads are thin.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

/// Clock ticks a second (`getconf CLK_TCK`, 100 on every Linux the bench runs on).
const TICKS_PER_S: f64 = 100.0;

/// CPU time (user + system, in clock ticks) of `pid` and its threads.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Fields 14 and 15 of `/proc/<pid>/stat`, counted after the `comm` field (which
/// may hold spaces and parentheses, so it is skipped up to its last `)`).
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU of each of `pids` over `window`, in % of one core (`None` for a process
/// that could not be read).
pub async fn cpu_percent(pids: &[u32], window: Duration) -> Vec<Option<f64>> {
    let meter = CpuMeter::start(pids);
    tokio::time::sleep(window).await;
    meter.stop().0
}

/// CPU time of some processes and of the whole machine from one moment on: what a
/// run cost each of them, read when it ends.
pub struct CpuMeter {
    pids: Vec<u32>,
    before: Vec<Option<u64>>,
    machine_before: Option<MachineTicks>,
    started: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            before: pids.iter().map(|p| cpu_ticks(*p)).collect(),
            machine_before: machine_ticks(),
            started: std::time::Instant::now(),
        }
    }

    /// Each process's CPU since the start, in % of one core (`None` where it could
    /// not be read), the whole machine's, in % of one core too (200% is two cores
    /// fully busy), and the seconds measured.
    pub fn stop(self) -> (Vec<Option<f64>>, Option<f64>, f64) {
        let seconds = self.started.elapsed().as_secs_f64();
        let per_process = self
            .pids
            .iter()
            .zip(self.before)
            .map(|(pid, before)| {
                let after = cpu_ticks(*pid)?;
                Some((after.checked_sub(before?)? as f64 / TICKS_PER_S) / seconds * 100.0)
            })
            .collect();
        let machine = self
            .machine_before
            .zip(machine_ticks())
            .and_then(|(before, after)| machine_busy_pct(before, after, seconds));
        (per_process, machine, seconds)
    }
}

/// Busy and idle clock ticks of every core together (the `cpu` line of `/proc/stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub busy: u64,
    pub idle: u64,
}

fn machine_ticks() -> Option<MachineTicks> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The first line of `/proc/stat`: `cpu user nice system idle iowait irq softirq
/// steal ...`. Idle and iowait are idle; the rest (up to steal) is busy.
pub fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    Some(MachineTicks {
        busy: user + nice + system + irq + softirq + steal,
        idle: idle + iowait,
    })
}

/// The machine's busy time between two readings, in % of one core.
pub fn machine_busy_pct(before: MachineTicks, after: MachineTicks, seconds: f64) -> Option<f64> {
    let busy = after.busy.checked_sub(before.busy)?;
    (seconds > 0.0).then(|| busy as f64 / TICKS_PER_S / seconds * 100.0)
}

/// The process listening on TCP `port` on this machine (the local broker), found
/// through the socket's inode in `/proc/net/tcp{,6}` and `/proc/*/fd`. `None` if it
/// is elsewhere or not readable.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(listening_inodes(&text, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let targets: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && targets.iter().any(|t| link.as_os_str() == t.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// The inodes of sockets listening (state `0A`) on `port` in a `/proc/net/tcp` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *f.get(3)? == "0A").then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Cumulative bucket counts of one histogram: upper bound (s) → count.
pub type Buckets = BTreeMap<u64, f64>;

/// The buckets of `metric` (e.g. `coexist_path_seconds`) by the value of `label`,
/// summed over every other label, from a Prometheus text exposition. Upper bounds
/// are kept in nanoseconds so they sort; `+Inf` is `u64::MAX`.
pub fn histograms(text: &str, metric: &str, label: &str) -> BTreeMap<String, Buckets> {
    let prefix = format!("{metric}_bucket{{");
    let mut out: BTreeMap<String, Buckets> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let get = |name: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k.trim() == name).then(|| v.trim_matches('"').to_string())
            })
        };
        let (Some(key), Some(le), Ok(count)) = (get(label), get("le"), value.trim().parse::<f64>())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            u64::MAX
        } else {
            match le.parse::<f64>() {
                Ok(s) => (s * 1e9).round() as u64,
                Err(_) => continue,
            }
        };
        *out.entry(key).or_default().entry(bound).or_default() += count;
    }
    out
}

/// `after - before`, bucket by bucket: what was observed between two scrapes.
pub fn delta(after: &Buckets, before: Option<&Buckets>) -> Buckets {
    after
        .iter()
        .map(|(bound, count)| {
            let was = before.and_then(|b| b.get(bound)).copied().unwrap_or(0.0);
            (*bound, (count - was).max(0.0))
        })
        .collect()
}

/// The `q` quantile (0..=1) of cumulative `buckets`, in ms, interpolated linearly
/// within its bucket (as Prometheus' `histogram_quantile`). `None` when empty.
pub fn quantile_ms(buckets: &Buckets, q: f64) -> Option<f64> {
    let total = buckets
        .get(&u64::MAX)
        .copied()
        .or_else(|| buckets.values().last().copied())?;
    if total <= 0.0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let (mut lower, mut below) = (0u64, 0.0);
    for (&bound, &count) in buckets {
        if count >= rank {
            if bound == u64::MAX {
                return Some(lower as f64 / 1e6);
            }
            let inside = count - below;
            let fraction = if inside > 0.0 {
                (rank - below) / inside
            } else {
                1.0
            };
            return Some((lower as f64 + (bound - lower) as f64 * fraction) / 1e6);
        }
        (lower, below) = (bound, count);
    }
    Some(lower as f64 / 1e6)
}

/// One stage of the real-time path, as the pipeline measured it during the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StageSummary {
    pub stage: String,
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The stages observed between two scrapes, in `order` (stages not in it after).
pub fn stage_summaries(before: &str, after: &str, order: &[&str]) -> Vec<StageSummary> {
    let (before, after) = (
        histograms(before, "coexist_path_seconds", "stage"),
        histograms(after, "coexist_path_seconds", "stage"),
    );
    let mut stages: Vec<&String> = after.keys().collect();
    stages.sort_by_key(|s| order.iter().position(|o| o == s).unwrap_or(order.len()));
    stages
        .into_iter()
        .filter_map(|stage| {
            let d = delta(&after[stage], before.get(stage));
            let count = d.get(&u64::MAX).copied().unwrap_or(0.0);
            Some(StageSummary {
                stage: stage.clone(),
                count: count as u64,
                p50_ms: quantile_ms(&d, 0.5)?,
                p99_ms: quantile_ms(&d, 0.99)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_past_a_comm_with_spaces() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 56 0 0 20 0 30 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn machine_ticks_count_iowait_as_idle_and_steal_as_busy() {
        let before = "cpu  100 5 50 1000 20 3 2 10 0 0\ncpu0 50 2 25 500 10 1 1 5 0 0\n";
        let after = "cpu  300 5 150 1100 40 3 2 10 0 0\n";
        let (b, a) = (
            parse_machine_ticks(before).unwrap(),
            parse_machine_ticks(after).unwrap(),
        );
        assert_eq!(
            b,
            MachineTicks {
                busy: 170,
                idle: 1020
            }
        );
        assert_eq!(a.busy - b.busy, 300);
        // 300 ticks in 2 s: 1.5 cores busy.
        assert_eq!(machine_busy_pct(b, a, 2.0), Some(150.0));
        assert_eq!(
            machine_busy_pct(a, b, 2.0),
            None,
            "a counter that went back"
        );
        assert_eq!(parse_machine_ticks("cpu  1 2 3\n"), None);
    }

    #[test]
    fn the_listener_of_a_port_is_found_by_state_and_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2384 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0 100 0 0 10 0\n\
   1: 0100007F:2384 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4444 1 0 100 0 0 10 0\n\
   2: 0100007F:075B 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5555 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 9092), vec![31337]);
        assert_eq!(listening_inodes(table, 1883), vec![5555]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn stage_quantiles_come_from_the_difference_of_two_scrapes() {
        let scrape = |a: u32, b: u32, c: u32| {
            format!(
                "# TYPE coexist_path_seconds histogram\n\
                 coexist_path_seconds_bucket{{stage=\"produced_consumed\",le=\"0.01\"}} {a}\n\
                 coexist_path_seconds_bucket{{stage=\"produced_consumed\",le=\"0.02\"}} {b}\n\
                 coexist_path_seconds_bucket{{stage=\"produced_consumed\",le=\"+Inf\"}} {c}\n"
            )
        };
        // 100 before the run (all under 10 ms), then 100 more, all in 10..20 ms.
        let stages = stage_summaries(&scrape(100, 100, 100), &scrape(100, 200, 200), &[]);
        assert_eq!(stages.len(), 1);
        let s = &stages[0];
        assert_eq!((s.stage.as_str(), s.count), ("produced_consumed", 100));
        assert!((s.p50_ms - 15.0).abs() < 1e-6, "{s:?}");
        assert!((s.p99_ms - 19.9).abs() < 1e-6, "{s:?}");
        // Nothing observed during the run: no figure rather than a made-up one.
        assert!(stage_summaries(&scrape(1, 2, 3), &scrape(1, 2, 3), &[]).is_empty());
    }
}
