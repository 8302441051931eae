-- Sent -> delivered and delivered -> read latency per business number, in seconds
-- (p50, p90, p99), over the transitions of every day touched by [from, to), from
-- the latency_daily view. Exact below 1024 s, in 16 s steps up to 30000 s, longer
-- waits count as 30000 s. A message that skipped a step (read reported before
-- delivered) has no pair for it.
SELECT
    phone_number_id,
    countIfMerge(delivered_pairs) AS delivered_pairs,
    quantilesTimingIfMerge(0.5, 0.9, 0.99)(sent_to_delivered) AS sent_to_delivered_s,
    countIfMerge(read_pairs) AS read_pairs,
    quantilesTimingIfMerge(0.5, 0.9, 0.99)(delivered_to_read) AS delivered_to_read_s
FROM latency_daily
WHERE org = {org:String}
  AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
  AND day >= toDate({from:DateTime}) AND day <= toDate({to:DateTime} - 1)
GROUP BY phone_number_id
ORDER BY phone_number_id
