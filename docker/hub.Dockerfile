# The hub: vms serve. Build from the repository root:  docker build -f docker/hub.Dockerfile .
# FFmpeg comes inside the PyAV wheel, so no Debian media packages are needed. The `hub` extra has
# everything `vms serve` imports, the picture analysis (PyAV, OpenCV) included.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vms
COPY pyproject.toml README.md /src/
COPY vms /src/vms
RUN /opt/vms/bin/pip install "/src[hub]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/vms/bin:$PATH PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 vms \
    && useradd --system --uid 10001 --gid vms --home-dir /var/lib/vms --shell /usr/sbin/nologin vms \
    && install -d -o vms -g vms -m 0755 /var/lib/vms /run/vms-tokens
COPY --from=build /opt/vms /opt/vms
COPY --chmod=0755 docker/entrypoint-hub.sh /usr/local/bin/entrypoint-hub.sh
COPY docker/hub.yaml /etc/vms/hub.yaml
USER vms
WORKDIR /var/lib/vms
# Hub data (SQLite, recordings) and the tokens made on first start for the agent and Prometheus.
VOLUME ["/var/lib/vms", "/run/vms-tokens"]
EXPOSE 8700
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('VMS_HEALTH_URL', 'http://127.0.0.1:8700/healthz'), timeout=3)"]
ENTRYPOINT ["/usr/local/bin/entrypoint-hub.sh"]
CMD ["vms", "serve", "--config", "/etc/vms/hub.yaml", "--host", "0.0.0.0"]
