-- Per assignee: conversations resolved in [from, to) while they owned them, and the
-- time from the conversation opening to its resolution (seconds, p50/p90/p99,
-- exact). Episodes are cut as in conversations.sql.
SELECT
    owner AS assignee,
    count() AS resolved,
    quantilesExact(0.5, 0.9, 0.99)((toInt64(resolved_t) - toInt64(opened_t)) / 1000) AS resolution_s
FROM
(
    SELECT
        conversation_id,
        episode,
        min(t) AS opened_t,
        minIf(t, state = 'resolved') AS resolved_t,
        argMaxIf(assignee, t, state = 'assigned') AS owner
    FROM
    (
        SELECT
            conversation_id,
            tupleElement(ev, 1) AS t,
            tupleElement(ev, 2) AS state,
            tupleElement(ev, 3) AS assignee,
            tupleElement(ev, 4) AS episode
        FROM
        (
            SELECT
                conversation_id,
                arraySort(groupUniqArray((toUInt64(event_time) * 1000 + event_ms,
                    indexOf(['resolved', 'open', 'assigned'], state), state, assignee, event_id))) AS evs,
                arrayMap(e -> tupleElement(e, 3), evs) AS states,
                arrayPushFront(arrayPopBack(states), '') AS prevs,
                arrayCumSum(arrayMap((s, p) -> toUInt64(s != 'resolved' AND (p = '' OR p = 'resolved')),
                    states, prevs)) AS episodes,
                arrayMap((e, n) -> (tupleElement(e, 1), tupleElement(e, 3), tupleElement(e, 4), n),
                    evs, episodes) AS steps
            FROM assignments
            WHERE org = {org:String}
              AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
              AND rejected = '' AND event_time < {to:DateTime}
            GROUP BY conversation_id
        )
        ARRAY JOIN steps AS ev
    )
    WHERE episode > 0
    GROUP BY conversation_id, episode
)
WHERE resolved_t >= toUInt64(toUInt32({from:DateTime})) * 1000 AND owner != ''
GROUP BY owner
ORDER BY owner
