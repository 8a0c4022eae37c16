-- name: enqueue
-- Defer one job through procrastinate's own function; its triggers notify workers.
SELECT procrastinate_defer_jobs_v1(ARRAY[
    ROW(%(queue)s, %(task)s, 0, NULL, NULL, %(args)s::jsonb, NULL)
        ::procrastinate_job_to_defer_v1
]);

-- name: snapshot
-- Status and attempts of the harness jobs of the given keys.
SELECT args->>'key' AS key, status::text AS status, attempts
FROM procrastinate_jobs
WHERE task_name = %(task)s AND args->>'key' = ANY(%(keys)s);
