-- The delivery funnel per business number and template, for our API sends made in
-- [from, to): each send joined to its Graph API answer (the wamid) and to the
-- statuses that wamid reached (message_delivery view). Non-template sends are
-- under template ''.
SELECT
    number AS phone_number_id,
    template,
    count() AS attempted,
    countIf(wamid != '') AS accepted,
    countIf(s > 0 OR d > 0 OR r > 0) AS sent,
    countIf(d > 0 OR r > 0) AS delivered,
    countIf(r > 0) AS read,
    countIf(f > 0 OR api_error != 0) AS failed
FROM
(
    SELECT number, template, wamid, api_error, s, d, r, f
    FROM
    (
        SELECT
            outbound_id,
            any(phone_number_id) AS number,
            anyIf(template_name, kind = 'message') AS template,
            anyIf(wamid, kind = 'result') AS wamid,
            maxIf(error_code, kind = 'result') AS api_error
        FROM outbound_messages
        WHERE org = {org:String}
          AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
        GROUP BY outbound_id
        HAVING countIf(kind = 'message' AND event_time >= {from:DateTime} AND event_time < {to:DateTime}) > 0
    )
    ANY LEFT JOIN
    (
        SELECT
            wamid,
            toUInt32(minIfMerge(sent_at)) AS s,
            toUInt32(minIfMerge(delivered_at)) AS d,
            toUInt32(minIfMerge(read_at)) AS r,
            toUInt32(minIfMerge(failed_at)) AS f
        FROM message_delivery
        WHERE org = {org:String}
          AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
          AND wamid IN
          (
              SELECT wamid FROM outbound_messages
              WHERE org = {org:String} AND kind = 'result' AND wamid != ''
                AND event_time >= {from:DateTime}
          )
        GROUP BY wamid
    ) USING wamid
)
GROUP BY number, template
ORDER BY number, template
