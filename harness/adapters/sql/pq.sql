-- name: enqueue
-- Put one task as pq.tasks' wrapper does; pq's insert trigger notifies the queue.
INSERT INTO queue (q_name, data) VALUES (%(queue)s, %(data)s);

-- name: snapshot
-- Per key: the newest row's dequeued flag and retry number, and how many rows ran.
SELECT DISTINCT ON (data->'kwargs'->>'key')
       data->'kwargs'->>'key' AS key,
       dequeued_at IS NOT NULL AS dequeued,
       (data->>'retried')::int AS retried,
       count(dequeued_at) OVER (PARTITION BY data->'kwargs'->>'key') AS ran
FROM queue
WHERE q_name = %(queue)s AND data->'kwargs'->>'key' = ANY(%(keys)s)
ORDER BY data->'kwargs'->>'key', id DESC;
