-- name: enqueue
-- Insert one available job as oban's insert does, and notify its queue's producers.
WITH inserted AS (
    INSERT INTO oban_jobs (args, max_attempts, queue, state, worker)
    VALUES (%(args)s, %(max_attempts)s, %(queue)s, 'available', %(worker)s)
    RETURNING queue
)
SELECT pg_notify('oban_insert', json_build_object('queue', queue)::text)
FROM inserted;

-- name: snapshot
-- State and attempt count of the harness jobs of the given keys.
SELECT args->>'key' AS key, state::text AS state, attempt
FROM oban_jobs
WHERE worker = %(worker)s AND args->>'key' = ANY(%(keys)s);
