# The edge agent: edge-agent run. Build from the repository root:  docker build -f docker/agent.Dockerfile .
# FFmpeg comes inside the PyAV wheel, so no Debian media packages are needed. Only the `agent` extra
# is installed (vms supplies its shared kernel and analysis core, none of the hub's frameworks).
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vms
COPY pyproject.toml README.md /src/
COPY vms /src/vms
COPY edge_agent /src/edge_agent
RUN /opt/vms/bin/pip install "/src[agent]"

FROM python:3.11-slim-bookworm
ENV PATH=/opt/vms/bin:$PATH PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 vms \
    && useradd --system --uid 10001 --gid vms --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin vms \
    && install -d -o vms -g vms -m 0755 /var/lib/edge-agent
COPY --from=build /opt/vms /opt/vms
COPY --chmod=0755 docker/entrypoint-agent.sh /usr/local/bin/entrypoint-agent.sh
COPY docker/agent.yaml /etc/vms/agent.yaml
USER vms
WORKDIR /var/lib/edge-agent
# Camera registry and the store-and-forward spool.
VOLUME ["/var/lib/edge-agent"]
ENTRYPOINT ["/usr/local/bin/entrypoint-agent.sh"]
CMD ["edge-agent", "run", "--config", "/etc/vms/agent.yaml"]
