-- Deliberately broken variants of the queries in queue.sql, for refqueue.mutants.
-- An entry named MUTANT.QUERY replaces QUERY while MUTANT is selected; each one
-- differs from its original by the change that the mutant's name says.


-- name: delete_on_claim.claim
-- Delete the due jobs and hand them out: a job whose worker dies is gone.
WITH due AS (
    SELECT id
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
          OR (state = 'running' AND lease_expires_at <= now())
      )
    ORDER BY run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM refqueue_jobs AS job
USING due
WHERE job.id = due.id
RETURNING job.id, job.key, job.queue, job.args, 'running' AS state,
    job.attempts + 1 AS attempts, job.max_attempts, gen_random_uuid() AS lease_token;


-- name: no_lease_expiry.claim
-- Claim ready jobs only: a running job whose lease expired is never claimed again.
WITH due AS (
    SELECT id, state = 'running' AND attempts >= max_attempts AS lost_final_attempt
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
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


-- name: claim_without_lock.claim
-- Claim without locking the due rows: two workers can claim the same job at once.
WITH due AS (
    SELECT id, state = 'running' AND attempts >= max_attempts AS lost_final_attempt
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
          OR (state = 'running' AND lease_expires_at <= now())
      )
    ORDER BY run_after, id
    LIMIT %(limit)s
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


-- name: attempts_on_exception_only.claim
-- Claim without counting the attempt (fail counts it instead).
WITH due AS (
    SELECT id, state = 'running' AND attempts >= max_attempts AS lost_final_attempt
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
          OR (state = 'running' AND lease_expires_at <= now())
      )
    ORDER BY run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
claimed AS (
    UPDATE refqueue_jobs AS job
    SET state = 'running',
        lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => %(lease_s)s),
        worker = %(worker)s
    FROM due
    WHERE job.id = due.id AND NOT due.lost_final_attempt
    RETURNING job.*
),
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


-- name: attempts_on_exception_only.fail
-- Count the attempt when its failure is recorded (the claim no longer does).
UPDATE refqueue_jobs
SET state = CASE WHEN attempts + 1 < max_attempts THEN 'ready' ELSE 'dead' END,
    attempts = attempts + 1,
    run_after = now() + make_interval(secs => %(retry_in_s)s),
    last_error = %(error)s,
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN attempts + 1 < max_attempts THEN NULL ELSE now() END
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: client_clock_lease.claim
-- Claim with the lease's expiry computed from the worker's clock, not now().
WITH due AS (
    SELECT id, state = 'running' AND attempts >= max_attempts AS lost_final_attempt
    FROM refqueue_jobs
    WHERE queue = %(queue)s
      AND (
          (state = 'ready' AND run_after <= now())
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
        lease_expires_at = %(worker_now)s + make_interval(secs => %(lease_s)s),
        worker = %(worker)s
    FROM due
    WHERE job.id = due.id AND NOT due.lost_final_attempt
    RETURNING job.*
),
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


-- name: unfenced_completion.complete
-- Mark a job done by its id alone, whoever holds its lease now.
UPDATE refqueue_jobs
SET state = 'done',
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = now()
WHERE id = %(id)s
RETURNING state;


-- name: no_retry_limit.fail
-- Record a failed attempt and always retry it, however many attempts were used.
UPDATE refqueue_jobs
SET state = 'ready',
    run_after = now() + make_interval(secs => %(retry_in_s)s),
    last_error = %(error)s,
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN attempts < max_attempts THEN NULL ELSE now() END
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: retry_limit_off_by_one.fail
-- Record a failed attempt, counting the final attempt as one with attempts left.
UPDATE refqueue_jobs
SET state = CASE WHEN attempts <= max_attempts THEN 'ready' ELSE 'dead' END,
    run_after = now() + make_interval(secs => %(retry_in_s)s),
    last_error = %(error)s,
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN attempts <= max_attempts THEN NULL ELSE now() END
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: gives_up_one_early.fail
-- Record a failed attempt, counting the one before the final as the last.
UPDATE refqueue_jobs
SET state = CASE WHEN attempts + 1 < max_attempts THEN 'ready' ELSE 'dead' END,
    run_after = now() + make_interval(secs => %(retry_in_s)s),
    last_error = %(error)s,
    lease_token = NULL,
    lease_expires_at = NULL,
    finished_at = CASE WHEN attempts + 1 < max_attempts THEN NULL ELSE now() END
WHERE id = %(id)s
  AND lease_token = %(lease_token)s
  AND lease_expires_at > now()
RETURNING state;


-- name: dead_letter_deletes.fail
-- Record a failed attempt, deleting the job instead of keeping it dead.
WITH held AS (
    SELECT id, attempts < max_attempts AS has_attempt_left
    FROM refqueue_jobs
    WHERE id = %(id)s
      AND lease_token = %(lease_token)s
      AND lease_expires_at > now()
    FOR UPDATE
),
retried AS (
    UPDATE refqueue_jobs AS job
    SET state = 'ready',
        run_after = now() + make_interval(secs => %(retry_in_s)s),
        last_error = %(error)s,
        lease_token = NULL,
        lease_expires_at = NULL
    FROM held
    WHERE job.id = held.id AND held.has_attempt_left
    RETURNING job.state
),
deleted AS (
    DELETE FROM refqueue_jobs AS job
    USING held
    WHERE job.id = held.id AND NOT held.has_attempt_left
    RETURNING 'dead'::text AS state
)
SELECT state FROM retried
UNION ALL
SELECT state FROM deleted;


-- name: async_commit_enqueue.enqueue
-- Insert a ready job and turn off synchronous commit for the caller's transaction.
WITH job AS (
    INSERT INTO refqueue_jobs (queue, key, args, max_attempts)
    SELECT %(queue)s, %(key)s, %(args)s, %(max_attempts)s
    FROM (SELECT set_config('synchronous_commit', 'off', true)) AS async_commit
    RETURNING id, queue
)
SELECT id, pg_notify('refqueue', queue) FROM job;
