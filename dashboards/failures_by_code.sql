-- Failed messages by Meta error code (and title), most frequent first, from the
-- failures_daily view. Whole days: every day touched by [from, to).
SELECT
    error_code,
    error_title,
    sum(failures) AS failures
FROM failures_daily
WHERE org = {org:String}
  AND ({phone_number_id:String} = '' OR phone_number_id = {phone_number_id:String})
  AND day >= toDate({from:DateTime}) AND day <= toDate({to:DateTime} - 1)
GROUP BY error_code, error_title
ORDER BY failures DESC, error_code
