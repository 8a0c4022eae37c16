-- name: enqueue
-- Insert a ready job; workers of its queue are notified when the caller commits.
WITH job AS (
    INSERT INTO refqueue_jobs (queue, key, args, max_attempts)
    VALUES (%(queue)s, %(key)s, %(args)s, %(max_attempts)s)
    RETURNING id, queue
)
SELECT id, pg_notify('refqueue', queue) FROM job;


-- name: claim
-- Lease up to limit due jobs (ready, or running on an expired lease); count attempts.
WITH due AS (
    SELECT id, state = 'running' AND attempts >= max_attempts AS lost_final_attempt
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
          -- a running job whose lease expired lost its worker: claim it again
          OR (state = 'running' AND lease_expires_at <= now())
      )
    ORDER BY run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE refqueue_jobs AS job
    SET state = 'running',
        attempts = job.attempts + 1,
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        worker = %(worker)s
    FROM due
    WHERE job.id = due.id AND NOT due.lost_final_attempt
    RETURNING job.*
),
-- an expired lease on the final attempt ends the job: that attempt was used up
exhausted AS (
    UPDATE refqueue_jobs AS job
    SET state = 'dead',
        last_error = 'lease expired during the final attempt',
        lease_token = NULL,
        lease_expires_at = NULL,
        finished_at = now()
    FROM due
    WHERE job.id = due.id AND due.lost_final_attempt
    RETURNING job.*
)
SELECT id, key, queue, args, state, attempts, max_attempts, lease_token FROM claimed
UNION ALL
SELECT id, key, queue, args, state, attempts, max_attempts, lease_token FROM exhausted;


-- name: heartbeat
-- Extend the still valid ones of a worker's leases by lease_s; return their job ids.
UPDATE refqueue_jobs
SET lease_expires_at = now() + make_interval(secs => %(lease_s)s)
WHERE id = ANY(%(ids)s::bigint[])
  AND lease_token = ANY(%(lease_tokens)s::uuid[])
  AND lease_expires_at > now()
RETURNING id;


-- name: complete
-- Mark a job done, only while the caller's lease on it is valid.
UPDATE refqueue_jobs
SET state = 'done',
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = now()
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: fail
-- Record a failed attempt under a valid lease: ready again after retry_in_s, or dead.
UPDATE refqueue_jobs
SET state = CASE WHEN attempts < max_attempts THEN 'ready' ELSE 'dead' END,
    run_after = now() + make_interval(secs => %(retry_in_s)s),
    last_error = %(error)s,
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: snapshot
-- Every job of a queue with its state, attempts and last error, in enqueue order.
SELECT key, state, attempts, max_attempts, last_error
FROM refqueue_jobs
WHERE queue = %(queue)s
ORDER BY id;


-- name: schema_installed
-- Whether install has created the job table in this database.
SELECT to_regclass('refqueue_jobs') IS NOT NULL AS installed;


-- name: listen
-- Subscribe this connection to the notifications that enqueue sends.
LISTEN refqueue;
