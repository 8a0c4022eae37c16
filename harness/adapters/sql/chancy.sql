-- name: enqueue
-- Push one job as Chancy.push does: a row in chancy_jobs with its limits and meta.
INSERT INTO chancy_jobs
    (id, queue, func, kwargs, limits, meta, priority, max_attempts, unique_key)
VALUES
    (%(id)s, %(queue)s, %(func)s, %(kwargs)s, %(limits)s, %(meta)s, 0,
     %(max_attempts)s, NULL);

-- name: notify
-- Wake the workers of the queue, as Chancy.push does after inserting.
SELECT pg_notify('chancy_events', %(payload)s);

-- name: snapshot
-- State and attempts of the harness jobs of the given keys.
SELECT kwargs->>'key' AS key, state, attempts, max_attempts
FROM chancy_jobs
WHERE func = %(func)s AND kwargs->>'key' = ANY(%(keys)s);
