//! The panels: each is one `.sql` file of `dashboards/` (compiled in), with named
//! parameters `{org:String}`, `{phone_number_id:String}`, `{from:DateTime}` and
//! `{to:DateTime}` in ClickHouse's query-parameter syntax. ClickHouse 18.16 has no
//! server-side parameters, so [`bind_plan`] turns each into the client's `?`
//! placeholder and the values are bound (escaped by the `clickhouse` crate), never
//! spliced in as text.

use serde::Serialize;
use serde_json::{Map, Value};

use super::AnalyticsQuery;

/// One dashboard panel.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Panel {
    pub id: &'static str,
    pub title: &'static str,
    /// The question it answers.
    pub answers: &'static str,
    #[serde(skip)]
    pub sql: &'static str,
}

macro_rules! panel {
    ($id:literal, $title:literal, $answers:literal) => {
        Panel {
            id: $id,
            title: $title,
            answers: $answers,
            sql: include_str!(concat!("../../../dashboards/", $id, ".sql")),
        }
    };
}

/// Every panel, in the page's order.
pub const PANELS: &[Panel] = &[
    panel!(
        "messages_per_hour",
        "Messages per hour",
        "How many messages came in and went out each hour, by channel (customer, API, Business app) and type?"
    ),
    panel!(
        "delivery_funnel",
        "Delivery funnel per number",
        "Of the messages sent from each number, how many were accepted, sent, delivered, read, and how many failed?"
    ),
    panel!(
        "delivery_funnel_by_template",
        "Delivery funnel per template",
        "How far did each template's sends get (accepted, sent, delivered, read, failed)?"
    ),
    panel!(
        "delivery_latency",
        "Delivery latency",
        "How long from sent to delivered, and from delivered to read (p50, p90, p99 seconds)?"
    ),
    panel!(
        "failures_by_code",
        "Failures by error code",
        "Which Meta error codes make messages fail, and how often?"
    ),
    panel!(
        "conversations",
        "Conversations opened and resolved",
        "How many conversations opened and how many were resolved each day?"
    ),
    panel!(
        "agent_first_response",
        "Agent first response",
        "How long after being assigned a conversation does each agent first reply (p50, p90, p99 seconds)?"
    ),
    panel!(
        "agent_resolution",
        "Agent resolution time",
        "How long from a conversation opening to its resolution, by the agent who resolved it?"
    ),
    panel!(
        "agent_load",
        "Agent load",
        "How many conversations was each agent (or the Business app) handed each day?"
    ),
    panel!(
        "reply_share",
        "Business app vs API replies",
        "How many replies went out from the WhatsApp Business app versus through Coexist's API?"
    ),
];

/// A panel's result: its columns (name and ClickHouse type) and rows as JSON objects.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PanelData {
    pub id: String,
    pub columns: Vec<Column>,
    pub rows: Vec<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    #[error("no panel named {0:?}")]
    UnknownPanel(String),
    #[error("bad time range: {0}")]
    BadRange(String),
    #[error("the panel's SQL names an unknown parameter {0:?}")]
    UnknownParameter(String),
    #[error("clickhouse: {0}")]
    ClickHouse(#[from] clickhouse::error::Error),
    #[error("unreadable clickhouse answer: {0}")]
    Output(#[from] serde_json::Error),
}

/// Longest range a panel may be asked for: keeps one request from scanning years.
pub const MAX_RANGE_MS: i64 = 400 * 24 * 3600 * 1000;

/// A parameter's value, in the order the rewritten SQL binds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Text(String),
    /// Unix seconds, bound inside `toDateTime(...)` so no time zone is involved.
    Seconds(u32),
}

/// Rewrites `{name:Type}` placeholders to `?` (`toDateTime(?)` for `DateTime`) and
/// lists the values to bind, in order. Pure: the safety of every panel rests here.
pub fn bind_plan(
    sql: &str,
    query: &AnalyticsQuery,
) -> Result<(String, Vec<Param>), AnalyticsError> {
    let from = seconds_floor(query.from_ms)?;
    let to = seconds_ceil(query.to_ms)?;
    let mut out = String::with_capacity(sql.len());
    let mut params = Vec::new();
    let mut rest = sql;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let (name, kind) = after[..end].split_once(':').unwrap_or((&after[..end], ""));
        let (placeholder, value) = match (name, kind) {
            ("org", "String") => ("?", Param::Text(query.org.clone())),
            ("phone_number_id", "String") => (
                "?",
                Param::Text(query.phone_number_id.clone().unwrap_or_default()),
            ),
            ("from", "DateTime") => ("toDateTime(?)", Param::Seconds(from)),
            ("to", "DateTime") => ("toDateTime(?)", Param::Seconds(to)),
            _ => return Err(AnalyticsError::UnknownParameter(after[..end].to_string())),
        };
        out.push_str(placeholder);
        params.push(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok((out, params))
}

fn seconds_floor(ms: i64) -> Result<u32, AnalyticsError> {
    u32::try_from(ms.div_euclid(1000))
        .map_err(|_| AnalyticsError::BadRange(format!("{ms} is outside 1970..2106")))
}

fn seconds_ceil(ms: i64) -> Result<u32, AnalyticsError> {
    u32::try_from(ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0))
        .map_err(|_| AnalyticsError::BadRange(format!("{ms} is outside 1970..2106")))
}

/// Checks a query before it reaches ClickHouse.
pub fn validate(query: &AnalyticsQuery) -> Result<(), AnalyticsError> {
    if query.from_ms >= query.to_ms {
        return Err(AnalyticsError::BadRange("from must be before to".into()));
    }
    if query.to_ms - query.from_ms > MAX_RANGE_MS {
        return Err(AnalyticsError::BadRange("at most 400 days at once".into()));
    }
    seconds_floor(query.from_ms)?;
    seconds_ceil(query.to_ms)?;
    Ok(())
}

pub fn find(id: &str) -> Result<&'static Panel, AnalyticsError> {
    PANELS
        .iter()
        .find(|p| p.id == id)
        .ok_or_else(|| AnalyticsError::UnknownPanel(id.to_string()))
}

/// Runs panel `id` for `query` and returns its rows.
pub async fn run_panel(
    client: &clickhouse::Client,
    id: &str,
    query: &AnalyticsQuery,
) -> Result<PanelData, AnalyticsError> {
    let panel = find(id)?;
    validate(query)?;
    let (sql, params) = bind_plan(panel.sql, query)?;
    let mut q = client
        .query(&sql)
        // Numbers as JSON numbers, not strings, for the charts.
        .with_setting("output_format_json_quote_64bit_integers", "0");
    for param in params {
        q = match param {
            Param::Text(text) => q.bind(text),
            Param::Seconds(seconds) => q.bind(seconds),
        };
    }
    let bytes = q.fetch_bytes("JSON")?.collect().await?;
    parse_json_output(id, &bytes)
}

/// ClickHouse's `JSON` format: `{"meta": [{name, type}], "data": [{...}], ...}`.
fn parse_json_output(id: &str, bytes: &[u8]) -> Result<PanelData, AnalyticsError> {
    #[derive(serde::Deserialize)]
    struct Output {
        meta: Vec<Column>,
        data: Vec<Map<String, Value>>,
    }
    let output: Output = serde_json::from_slice(bytes)?;
    Ok(PanelData {
        id: id.to_string(),
        columns: output.meta,
        rows: output.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query() -> AnalyticsQuery {
        AnalyticsQuery {
            org: "acme' OR 1=1 --".into(),
            phone_number_id: None,
            from_ms: 1_000_500,
            to_ms: 2_000_001,
        }
    }

    #[test]
    fn placeholders_become_bound_parameters_in_order() {
        let sql = "WHERE org = {org:String} AND ({phone_number_id:String} = '' OR x = {phone_number_id:String}) AND t >= {from:DateTime} AND t < {to:DateTime}";
        let (rewritten, params) = bind_plan(sql, &query()).unwrap();
        assert_eq!(
            rewritten,
            "WHERE org = ? AND (? = '' OR x = ?) AND t >= toDateTime(?) AND t < toDateTime(?)"
        );
        assert_eq!(
            params,
            vec![
                Param::Text("acme' OR 1=1 --".into()),
                Param::Text(String::new()),
                Param::Text(String::new()),
                Param::Seconds(1000),
                Param::Seconds(2001),
            ]
        );
        assert!(
            !rewritten.contains("acme"),
            "user input never reaches the SQL text"
        );
    }

    #[test]
    fn unknown_parameters_are_refused() {
        assert!(matches!(
            bind_plan("SELECT {table:Identifier}", &query()),
            Err(AnalyticsError::UnknownParameter(_))
        ));
    }

    #[test]
    fn every_panel_uses_only_known_parameters_and_no_raw_placeholder() {
        for panel in PANELS {
            let (sql, params) = bind_plan(panel.sql, &query()).unwrap();
            assert!(!params.is_empty(), "{} is not scoped by org", panel.id);
            assert_eq!(
                params[0],
                Param::Text(query().org),
                "{}: org first",
                panel.id
            );
            // The crate reads `?` as a placeholder: a literal one would shift the binds.
            assert_eq!(sql.matches('?').count(), params.len(), "{}", panel.id);
        }
    }

    #[test]
    fn ranges_must_be_ordered_bounded_and_representable() {
        let ok = AnalyticsQuery {
            org: "a".into(),
            phone_number_id: None,
            from_ms: 0,
            to_ms: 1,
        };
        assert!(validate(&ok).is_ok());
        assert!(
            validate(&AnalyticsQuery {
                to_ms: 0,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            validate(&AnalyticsQuery {
                to_ms: MAX_RANGE_MS + 1,
                ..ok.clone()
            })
            .is_err()
        );
        assert!(
            validate(&AnalyticsQuery {
                from_ms: -5_000,
                ..ok
            })
            .is_err()
        );
    }

    #[test]
    fn clickhouse_json_output_parses() {
        let bytes =
            br#"{"meta":[{"name":"n","type":"UInt64"}],"data":[{"n":3}],"rows":1,"statistics":{}}"#;
        let data = parse_json_output("x", bytes).unwrap();
        assert_eq!(data.columns[0].kind, "UInt64");
        assert_eq!(data.rows[0]["n"], 3);
    }
}
