-- Load: conversations handed to each assignee per day, from the agent_daily view.
-- Whole days: every day touched by [from, to).
SELECT
    toUInt32(toDateTime(day)) AS day_start,
    assignee,
    sum(assigned) AS assigned
FROM agent_daily
WHERE org = {org:String}
  AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
  AND day >= toDate({from:DateTime}) AND day <= toDate({to:DateTime} - 1)
GROUP BY day_start, assignee
ORDER BY day_start, assignee
