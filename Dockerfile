# One image for every role: the API (default CMD), the Celery workers, beat and migrations.
#
#   docker build -t captioner:latest .                        # CUDA TensorFlow (default)
#   docker build -t captioner:cpu --build-arg TF_EXTRA=cpu .  # CPU-only TensorFlow
#
# Roles (see docker-compose.yml):
#   gunicorn --config python:captioner.gunicorn_conf --bind 0.0.0.0:8000 "api:create_app()" (CMD)
#   captioner worker --queue inference --gpus all | --queue training | --queue webhooks
#   captioner beat
#   captioner migrate
# The API and the workers serve /metrics on METRICS_PORT (9100), apart from the API's port 8000.
FROM python:3.11-slim

# `gpu` installs tensorflow[and-cuda] (CUDA libraries come as pip wheels, so the slim base is
# enough; the host needs the NVIDIA driver and container toolkit). `cpu` installs tensorflow-cpu.
ARG TF_EXTRA=gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    CAPTIONER_DATA_DIR=/data \
    METRICS_PORT=9100 \
    PYTHONPATH=/app

WORKDIR /app

# Dependencies first, in their own layer, so code changes do not reinstall TensorFlow: the list
# is read from pyproject.toml (project dependencies plus the chosen extra).
COPY pyproject.toml README.md ./
RUN python -c "import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies'][sys.argv[1]]))" "${TF_EXTRA}" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY alembic.ini ./
COPY migrations/ migrations/
COPY core/ core/
COPY model/ model/
COPY captioner/ captioner/
COPY store/ store/
COPY api/ api/
COPY worker/ worker/
COPY client/ client/

# The package itself (and anything added to pyproject.toml since the layer above). PYTHONPATH
# keeps /app importable for the `captioner` console script too (api, worker, store, migrations).
RUN pip install --no-cache-dir ".[${TF_EXTRA}]" ./client \
    && rm -rf build ./*.egg-info client/build client/*.egg-info

# Non-root user; /data (CAPTIONER_DATA_DIR) and /models are the only places it writes or reads
# outside the code. Named volumes mounted there start with this ownership.
RUN groupadd --system --gid 10001 captioner \
    && useradd --system --uid 10001 --gid captioner --home-dir /home/captioner --create-home \
        --shell /usr/sbin/nologin captioner \
    && mkdir -p /data /models \
    && chown captioner:captioner /data /models
USER captioner

EXPOSE 8000
# Prometheus' /metrics (METRICS_PORT): for the cluster's network only, never published to the world.
EXPOSE 9100

# Only meaningful for the API role; compose disables it for workers, beat and migrate.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Threaded workers, timeouts above the 60 s `Prefer: wait` cap: captioner/gunicorn_conf.py.
CMD ["gunicorn", "--config", "python:captioner.gunicorn_conf", "--bind", "0.0.0.0:8000", "api:create_app()"]
