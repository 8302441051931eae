-- Sent -> delivered and delivered -> read latency per business number, in seconds
-- (p50, p90, p99; exact), for messages sent in [from, to). Pairs come from the
-- message_delivery view; a message that skipped a step (read reported before
-- delivered) has no pair for it.
SELECT
    phone_number_id,
    countIf(d > 0 AND d >= s) AS delivered_pairs,
    quantilesExactIf(0.5, 0.9, 0.99)(toInt64(d) - toInt64(s), d > 0 AND d >= s) AS sent_to_delivered_s,
    countIf(r > 0 AND d > 0 AND r >= d) AS read_pairs,
    quantilesExactIf(0.5, 0.9, 0.99)(toInt64(r) - toInt64(d), r > 0 AND d > 0 AND r >= d) AS delivered_to_read_s
FROM
(
    SELECT
        phone_number_id,
        wamid,
        toUInt32(minIfMerge(sent_at)) AS s,
        toUInt32(minIfMerge(delivered_at)) AS d,
        toUInt32(minIfMerge(read_at)) AS r
    FROM message_delivery
    WHERE org = {org:String}
      AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
    GROUP BY phone_number_id, wamid
    HAVING s >= toUInt32({from:DateTime}) AND s < toUInt32({to:DateTime})
)
GROUP BY phone_number_id
ORDER BY phone_number_id
