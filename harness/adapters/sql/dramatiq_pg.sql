-- name: enqueue
-- Enqueue one message as PostgresBroker.enqueue does, and notify the queue's consumers.
WITH enqueued AS (
    INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
    VALUES (%(queue)s, %(message_id)s, 'queued', %(message)s)
    RETURNING queue_name, message
)
SELECT pg_notify('dramatiq.' || queue_name || '.enqueue', message::text)
FROM enqueued;

-- name: snapshot
-- State and retry count of the harness messages of the given keys.
SELECT message->'kwargs'->>'key' AS key, "state"::text AS state,
       coalesce((message->'options'->>'retries')::int, 0) AS retries
FROM dramatiq.queue
WHERE message->>'actor_name' = %(actor)s
  AND message->'kwargs'->>'key' = ANY(%(keys)s);
