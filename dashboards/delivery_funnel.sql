-- The delivery funnel per business number: messages that crossed each step
-- (accepted by the Cloud API, sent, delivered, read) and that failed, from the
-- delivery_daily view. Whole days: every day touched by [from, to).
SELECT
    phone_number_id,
    sum(accepted) AS accepted,
    sum(sent) AS sent,
    sum(delivered) AS delivered,
    sum(read) AS read,
    sum(failed) AS failed
FROM delivery_daily
WHERE org = {org:String}
  AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
  AND day >= toDate({from:DateTime}) AND day <= toDate({to:DateTime} - 1)
GROUP BY phone_number_id
ORDER BY phone_number_id
