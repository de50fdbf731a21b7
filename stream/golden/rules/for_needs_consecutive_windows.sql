-- for: 2m
SELECT device_id, value_mean AS value FROM aggregates_1m WHERE value_mean > 50
