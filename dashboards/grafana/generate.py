#!/usr/bin/env python3
"""Writes dashboards/grafana/coexist.json from the panel SQL in dashboards/*.sql.

The SQL is the one source: Grafana's ClickHouse plugin gets each panel's query with
{org:String} and {phone_number_id:String} bound to the dashboard variables ${org} and
${phone_number_id}, and {from:DateTime}/{to:DateTime} as the plugin's $__fromTime /
$__toTime. The plugin cannot send query parameters, so a variable reaches the SQL only
percent-encoded (Grafana's `percentencode` format leaves [A-Za-z0-9-_.~] and %XX, no quote
or backslash) inside decodeURLComponent('...'): whatever a URL sets it to, it stays one
string literal. The variables list the orgs and numbers ClickHouse has, filtered by a
regex of valid ids. Grafana queries as the read-only user (deploy/clickhouse).
Run it after changing a panel: python3 dashboards/grafana/generate.py
"""
import json
import pathlib
import re

HERE = pathlib.Path(__file__).resolve().parent
SQL = HERE.parent

# id, title, visualization, x column (or None for a table), grid width
PANELS = [
    ("messages_per_hour", "Messages per hour", "table", 24),
    ("delivery_funnel", "Delivery funnel per number", "bargauge", 12),
    ("delivery_funnel_by_template", "Delivery funnel per template", "table", 12),
    ("delivery_latency", "Delivery latency (s: p50, p90, p99)", "table", 12),
    ("failures_by_code", "Failures by Meta error code", "barchart", 12),
    ("conversations", "Conversations opened / resolved per day", "table", 12),
    ("reply_share", "Business app vs API replies per day", "table", 12),
    ("agent_first_response", "Agent first response (s: p50, p90, p99)", "table", 8),
    ("agent_resolution", "Agent resolution time (s: p50, p90, p99)", "table", 8),
    ("agent_load", "Agent load per day", "table", 8),
]


# Valid ids (events::ids): what the variables may list.
ID_REGEX = "/^[A-Za-z0-9_.@=-]{1,128}$/"


def grafana_sql(sql: str) -> str:
    sql = "\n".join(l for l in sql.splitlines() if not l.startswith("--"))
    sql = sql.replace("{org:String}", "decodeURLComponent('${org:percentencode}')")
    sql = sql.replace(
        "{phone_number_id:String}", "decodeURLComponent('${phone_number_id:percentencode}')"
    )
    sql = sql.replace("{from:DateTime}", "$__fromTime").replace("{to:DateTime}", "$__toTime")
    assert not re.search(r"(?<!\$)\{\w+:\w+\}", sql), sql
    return sql.strip()


def panel(index, pid, title, kind, width, x, y):
    return {
        "id": index + 1,
        "title": title,
        "description": (SQL / f"{pid}.sql").read_text().splitlines()[0].lstrip("- "),
        "type": kind,
        "datasource": {"type": "grafana-clickhouse-datasource", "uid": "coexist-clickhouse"},
        "gridPos": {"h": 9, "w": width, "x": x, "y": y},
        "targets": [{
            "refId": "A",
            "datasource": {"type": "grafana-clickhouse-datasource", "uid": "coexist-clickhouse"},
            "editorType": "sql",
            "format": 1,
            "queryType": "table",
            "rawSql": grafana_sql((SQL / f"{pid}.sql").read_text()),
        }],
        "options": {},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }


def main():
    panels, x, y = [], 0, 0
    for i, (pid, title, kind, width) in enumerate(PANELS):
        if x + width > 24:
            x, y = 0, y + 9
        panels.append(panel(i, pid, title, kind, width, x, y))
        x += width
    dashboard = {
        "uid": "coexist-analytics",
        "title": "Coexist analytics",
        "tags": ["coexist", "whatsapp"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "1m",
        "time": {"from": "now-7d", "to": "now"},
        "templating": {"list": [
            {"name": "org", "label": "Org", "type": "query", "refresh": 1,
             "datasource": {"type": "grafana-clickhouse-datasource", "uid": "coexist-clickhouse"},
             "query": "SELECT DISTINCT org FROM message_events ORDER BY org",
             "regex": ID_REGEX, "current": {"text": "demo", "value": "demo"}},
            {"name": "phone_number_id", "label": "Number (empty: all)", "type": "query", "refresh": 1,
             "datasource": {"type": "grafana-clickhouse-datasource", "uid": "coexist-clickhouse"},
             "query": "SELECT DISTINCT phone_number_id FROM message_events"
                      " WHERE org = decodeURLComponent('${org:percentencode}') ORDER BY phone_number_id",
             "regex": ID_REGEX, "includeAll": True, "allValue": "",
             "current": {"text": "All", "value": ""}},
        ]},
        "panels": panels,
    }
    out = HERE / "coexist.json"
    out.write_text(json.dumps(dashboard, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
