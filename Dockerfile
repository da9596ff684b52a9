# gateway-metrics: the same entry point as the README's quick start, as a non-root user.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GATEWAY_METRICS_HOST=0.0.0.0 \
    GATEWAY_METRICS_PORT=8000

# A normal install: the wheel carries what the app reads (the PromQL guide, package data),
# so the sources are removed once it is built and the service runs from site-packages.
COPY pyproject.toml README.md /tmp/src/
COPY app /tmp/src/app
COPY docs /tmp/src/docs
RUN pip install /tmp/src \
    && rm -rf /tmp/src \
    && useradd --system --uid 10001 --no-create-home gateway

WORKDIR /srv/gateway-metrics
# The example gateway (examples/openai_gateway.py), which deploy/kubernetes/overlays/example-gateway
# runs from this working directory; it imports the installed package.
COPY examples ./examples

USER 10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('GATEWAY_METRICS_PORT', '8000')}/health\", timeout=2)"]
CMD ["gateway-metrics"]
