"""Celery workers: glue between `model/` and `store/`.

- `worker.app`        the Celery app (`create_worker_app`; `celery -A worker.app:celery_app`)
- `worker.tasks`      thin tasks: caption a job, sweep lost jobs
- `worker.inference`  the resident model behind a micro-batcher, and one job's path through it
- `worker.batcher`    the micro-batcher (max size, max wait, early close when nothing is coming)
- `worker.sweeper`    re-sends jobs whose lease expired or whose message never arrived, aborts
                      jobs past their deadline, purges old jobs and idempotency keys
- `worker.gpus`       one worker process per visible GPU
"""
