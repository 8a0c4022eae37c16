-- name: enqueue
-- Enqueue one task result row as the database backend's enqueue does, ready now.
INSERT INTO django_tasks_database_dbtaskresult
    (id, status, enqueued_at, args_kwargs, priority, task_path, worker_ids,
     queue_name, backend_name, run_after, return_value, exception_class_path,
     traceback)
VALUES
    (gen_random_uuid(), 'READY', now(), %(args_kwargs)s, 0, %(task)s, '[]',
     'default', 'default', now(), 'null', '', '');

-- name: snapshot
-- Status and worker count of the harness tasks of the given keys.
SELECT args_kwargs->'kwargs'->>'key' AS key, status,
       jsonb_array_length(worker_ids::jsonb) AS runs
FROM django_tasks_database_dbtaskresult
WHERE task_path = %(task)s AND args_kwargs->'kwargs'->>'key' = ANY(%(keys)s);
