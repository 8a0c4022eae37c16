-- name: keys_table
-- The harness's own record of which pgqueuer job id carries which key.
CREATE TABLE IF NOT EXISTS queue_chaos_keys (
    key text PRIMARY KEY,
    job_id bigint NOT NULL
);

-- name: enqueue
-- Queue one job as pgqueuer does (row, 'queued' log entry); its trigger notifies.
WITH job AS (
    INSERT INTO pgqueuer (priority, entrypoint, payload, status)
    VALUES (0, %(task)s, convert_to(%(payload)s, 'UTF8'), 'queued')
    RETURNING id, entrypoint, priority
), logged AS (
    INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority)
    SELECT id, 'queued', entrypoint, priority FROM job
)
INSERT INTO queue_chaos_keys (key, job_id) SELECT %(key)s, id FROM job;

-- name: snapshot
-- Each key's job: its row while queued, picked or held, else its last logged status.
SELECT k.key, q.status::text AS live, q.attempts,
       (SELECT l.status::text FROM pgqueuer_log l
         WHERE l.job_id = k.job_id AND l.status <> 'queued'
         ORDER BY l.id DESC LIMIT 1) AS logged,
       (SELECT count(*) FROM pgqueuer_log l
         WHERE l.job_id = k.job_id AND l.status = 'queued') AS queued_count
FROM queue_chaos_keys k LEFT JOIN pgqueuer q ON q.id = k.job_id
WHERE k.key = ANY(%(keys)s);
