-- Messages in and out per hour, by channel and message type.
-- Inbound: customers (whatsapp.events). Outbound: API sends (messages.outbound) and
-- Business-app replies (coexistence echoes). History imports are left out.
SELECT
    toUInt32(toStartOfHour(event_time)) AS hour,
    direction,
    channel,
    message_type,
    uniqExact(event_id) AS messages
FROM
(
    SELECT event_time, event_id, direction, origin AS channel, message_type
    FROM message_events
    WHERE org = {org:String}
      AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
      AND kind = 'message' AND origin IN ('customer', 'business_app')
      AND event_time >= {from:DateTime} AND event_time < {to:DateTime}
    UNION ALL
    SELECT event_time, event_id, 'outbound' AS direction, 'api' AS channel, message_type
    FROM outbound_messages
    WHERE org = {org:String}
      AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
      AND kind = 'message'
      AND event_time >= {from:DateTime} AND event_time < {to:DateTime}
)
GROUP BY hour, direction, channel, message_type
ORDER BY hour, direction, channel, message_type
