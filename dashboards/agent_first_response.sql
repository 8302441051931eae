-- Per assignee (agent id, or business_app): conversations handed to them in
-- [from, to), how many they answered, and the time from being assigned to their
-- first reply in that conversation (seconds, p50/p90/p99, exact).
SELECT
    assignee,
    count() AS assigned,
    countIf(first_reply > 0) AS answered,
    quantilesExactIf(0.5, 0.9, 0.99)((toInt64(first_reply) - toInt64(t0)) / 1000, first_reply > 0) AS first_response_s
FROM
(
    SELECT conversation_id, assignee, t0, minIf(rt, rt >= t0) AS first_reply
    FROM
    (
        SELECT DISTINCT conversation_id, assignee, toUInt64(event_time) * 1000 + event_ms AS t0
        FROM assignments
        WHERE org = {org:String}
          AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
          AND state = 'assigned' AND rejected = ''
          AND event_time >= {from:DateTime} AND event_time < {to:DateTime}
    )
    ALL LEFT JOIN
    (
        SELECT conversation_id, replier AS assignee, toUInt64(event_time) * 1000 + event_ms AS rt
        FROM replies
        WHERE org = {org:String}
          AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
          AND event_time >= {from:DateTime}
    ) USING (conversation_id, assignee)
    GROUP BY conversation_id, assignee, t0
)
GROUP BY assignee
ORDER BY assignee
