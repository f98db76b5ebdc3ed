# syntax=docker/dockerfile:1
# One image for every role, chosen by the command:
#   worker (default)        celery -A worker worker ...
#   intake/callback server  acs-transfer serve                      (SERVE_HOST/SERVE_PORT, 0.0.0.0:8080 here)
#   local ACS emulator      acs-transfer emulator --host 0.0.0.0 --port 8089
# Configured only through environment variables: README.md "Configuration" lists every one, and
# `acs-transfer config` prints the values a container actually sees. No secret is set here.

# --- build: the project and every dependency as wheels ------------------------------------------------------
# The full image has compilers, in case a dependency has no wheel for the target platform; none of it is copied on.
FROM python:3.11-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY worker ./worker
RUN pip wheel --wheel-dir /wheels .

# --- runtime: slim, no compilers, no pip cache, not root ----------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    ACS_TRANSFER_HOME=/var/lib/acs-transfer \
    SERVE_HOST=0.0.0.0
RUN groupadd --system --gid 10001 acs \
    && useradd --system --uid 10001 --gid acs --home-dir /var/lib/acs-transfer --create-home \
        --shell /usr/sbin/nologin acs
# The wheels are mounted from the build stage, not copied, so they leave no layer behind; --no-index proves
# that everything installed was built above.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels acs-transfer
WORKDIR /var/lib/acs-transfer
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
# Celery's warm shutdown: stop taking messages, finish the requests in flight; see docs/operations.md.
STOPSIGNAL SIGTERM
# The broker and the ledger answer (roles without them, like the emulator, override this).
HEALTHCHECK --interval=30s --timeout=15s --start-period=30s --retries=3 \
    CMD ["acs-transfer", "healthcheck", "--timeout", "5"]
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
