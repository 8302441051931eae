-- Coexistence: replies sent from the WhatsApp Business app versus through the API
-- (by agents in Coexist), per day.
SELECT
    toUInt32(toStartOfDay(event_time)) AS day,
    uniqExactIf(event_id, channel = 'api') AS api,
    uniqExactIf(event_id, channel = 'business_app') AS business_app
FROM replies
WHERE org = {org:String}
  AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
  AND event_time >= {from:DateTime} AND event_time < {to:DateTime}
GROUP BY day
ORDER BY day
