# The serving image: `cascade serve` as a non-root user, healthy when gRPC health says SERVING.
# Models are built offline (`cascade train ...`, `cascade rebuild-index`) into the artifacts volume; the
# image holds code only. Build: docker build -t cascade . ; run with deploy/compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, pinned, from the CPU wheel index: PyPI's torch is a CUDA build of several GB
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY proto ./proto
COPY cascade ./cascade
RUN pip install '.[cpu,tracing]'

RUN useradd --create-home --uid 10001 cascade && mkdir -p /data /artifacts /var/lib/cascade \
    && chown -R cascade /data /artifacts /var/lib/cascade
USER cascade

ENV CASCADE_ARTIFACTS_DIR=/artifacts \
    CASCADE_DATA__DATA_DIR=/data \
    CASCADE_SERVING__HOST=0.0.0.0 \
    CASCADE_SERVING__AUTH__API_KEYS_PATH=/etc/cascade/keys.toml \
    CASCADE_SERVING__PORT=50051 \
    CASCADE_SERVING__METRICS_PORT=9464 \
    CASCADE_SERVING__EMBEDDED_REDIS_PATH=/var/lib/cascade/redis.db
EXPOSE 50051 9464
HEALTHCHECK --interval=5s --timeout=3s --start-period=120s --retries=3 CMD ["cascade", "health"]
# exec form: SIGTERM reaches the server, which drains (serving.drain_s) before it exits
ENTRYPOINT ["cascade"]
CMD ["serve"]
