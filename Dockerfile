# One image for every role: the worker (default command), `acs-transfer serve`, `acs-transfer emulator`.
# Configured only through environment variables (see README.md).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md celeryconfig.py ./
COPY worker ./worker
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 acs
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels acs-transfer && rm -rf /wheels
USER acs
WORKDIR /home/acs
ENV ACS_TRANSFER_HOME=/home/acs/data PYTHONUNBUFFERED=1
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
