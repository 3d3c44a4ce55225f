# syntax=docker/dockerfile:1.7
# The Fathom operator image: kopf and fathom.api only (no torch, no ray), a few tens of MB.
# The chart runs `python -m fathom_operator` in it as uid 10001 with a read-only root filesystem.
#
#   docker build -f docker/operator.Dockerfile -t ghcr.io/fathom-serve/fathom-operator:0.1.0 .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY operators ./operators
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG FATHOM_VERSION=0.1.0
LABEL org.opencontainers.image.title="fathom-operator" \
      org.opencontainers.image.description="Fathom operator: ModelService and Tenant resources reconciled into KubeRay RayServices" \
      org.opencontainers.image.source="https://github.com/fathom-serve/fathom" \
      org.opencontainers.image.version="${FATHOM_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The package's own dependencies include torch and ray for the serving side; the operator
# needs only what operator-requirements.txt lists (a test checks it against its imports), so
# the wheel goes in without dependencies.
COPY docker/operator-requirements.txt /tmp/requirements.txt
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-cache-dir -r /tmp/requirements.txt \
 && pip install --no-cache-dir --no-deps /tmp/wheels/fathom_serve-*.whl \
 && rm -rf /tmp/wheels /tmp/requirements.txt \
 && python -c "import fathom_operator.__main__" \
 && groupadd --gid 10001 fathom \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin fathom
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "fathom_operator"]
CMD ["--liveness=http://0.0.0.0:8080/healthz"]
