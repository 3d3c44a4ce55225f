# syntax=docker/dockerfile:1.7
# The Fathom platform image: Ray (with CUDA) plus Fathom. The Ray head and workers of every
# ModelService run it; the chart's `platformImage` points at it.
#
#   docker build -f docker/platform.Dockerfile -t ghcr.io/fathom-serve/fathom:0.1.0 .
#
# The Ray version must match `ray[serve]` in pyproject.toml and KubeRay's expectations.
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu

# Build the wheel in a throwaway stage so the runtime image holds no sources or build tools.
FROM python:3.11-slim AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY platform ./platform
COPY operators ./operators
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${RAY_IMAGE}
ARG FATHOM_VERSION=0.1.0
LABEL org.opencontainers.image.title="fathom" \
      org.opencontainers.image.description="Fathom: DeepSeek-style MoE serving on Ray Serve (platform image)" \
      org.opencontainers.image.source="https://github.com/fathom-serve/fathom" \
      org.opencontainers.image.version="${FATHOM_VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# rayproject/ray images run as the unprivileged user `ray` (uid 1000, group users) with Python in
# /home/ray/anaconda3; installing as that user keeps the image non-root. Ray and its CUDA
# libraries come from the base image; pip adds torch, transformers' tokenizers and the rest.
COPY --from=wheel --chown=1000:100 /wheels /tmp/wheels
RUN pip install --no-cache-dir /tmp/wheels/fathom_serve-*.whl \
 && rm -rf /tmp/wheels \
 && python -c "import fathom, fathom.serve, ray; print('fathom', fathom.__version__, 'ray', ray.__version__)"
ENV PYTHONUNBUFFERED=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0
USER 1000
WORKDIR /home/ray
# KubeRay supplies the command (`ray start ...`); standalone it serves the demo model.
CMD ["fathom", "serve", "--host", "0.0.0.0", "--port", "8000"]
