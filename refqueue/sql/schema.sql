-- name: install
-- Create the job table and its indexes if they do not exist; safe to run concurrently.
SELECT pg_advisory_xact_lock(hashtext('refqueue_install'));

CREATE TABLE IF NOT EXISTS refqueue_jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue text NOT NULL,
    key text,
    args jsonb NOT NULL,
    state text NOT NULL DEFAULT 'ready'
        CHECK (state IN ('ready', 'running', 'done', 'dead')),
    -- attempts started so far, counted at claim (docs/leases.md)
    attempts integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL CHECK (max_attempts >= 1),
    -- a ready job is claimable from this time on
    run_after timestamptz NOT NULL DEFAULT now(),
    -- the current lease: set by claim, extended by heartbeat, cleared at the end
    lease_token uuid,
    lease_expires_at timestamptz,
    worker text,
    last_error text,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE INDEX IF NOT EXISTS refqueue_jobs_claimable
    ON refqueue_jobs (queue, run_after, id)
    WHERE state IN ('ready', 'running');
