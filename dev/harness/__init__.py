"""The development harness (tests and benchmarks only; not in the service's wheel or image).

- `harness.stack`: production-mode settings on a fresh Postgres database, Redis database and
  moto S3 server, and the running service on them (workers, beat, the API, a light client), or
  the API alone as production runs it (`production_api`: the Dockerfile's gunicorn command).
- `harness.receiver`: a webhook receiver on loopback that answers from scripts and records.
- `harness.http`: waiting until a server answers, and free loopback ports.
"""
