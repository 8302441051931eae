-- Conversations opened and resolved per day. A conversation opens when it leaves
-- `resolved` (or first appears) and is resolved when it enters `resolved`; events at
-- the same millisecond are ordered resolved, open, assigned (the router's order).
SELECT
    toUInt32(toStartOfDay(toDateTime(intDiv(t, 1000)))) AS day,
    sum(toUInt64(state != 'resolved' AND (prev = '' OR prev = 'resolved'))) AS opened,
    sum(toUInt64(state = 'resolved' AND prev != 'resolved')) AS resolved
FROM
(
    SELECT
        tupleElement(ev, 1) AS t,
        tupleElement(ev, 2) AS state,
        tupleElement(ev, 3) AS prev
    FROM
    (
        SELECT
            arraySort(groupUniqArray((toUInt64(event_time) * 1000 + event_ms,
                indexOf(['resolved', 'open', 'assigned'], state), state, event_id))) AS evs,
            arrayMap(e -> tupleElement(e, 3), evs) AS states,
            arrayPushFront(arrayPopBack(states), '') AS prevs,
            arrayMap((e, p) -> (tupleElement(e, 1), tupleElement(e, 3), p), evs, prevs) AS steps
        FROM assignments
        WHERE org = {org:String}
          AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
          AND rejected = '' AND event_time < {to:DateTime}
        GROUP BY conversation_id
    )
    ARRAY JOIN steps AS ev
)
WHERE t >= toUInt64(toUInt32({from:DateTime})) * 1000
GROUP BY day
ORDER BY day
