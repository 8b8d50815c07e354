# The camera simulator: vms camsim. Build from the repository root:  docker build -f docker/camsim.Dockerfile .
# Clips are made with PyAV in the venv; the RTSP server runs under Debian's /usr/bin/python3, which
# has the GStreamer bindings, so the venv is made from that same interpreter. The `sim` extra only.
FROM debian:bookworm-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN /usr/bin/python3 -m venv /opt/vms
COPY pyproject.toml README.md /src/
COPY vms /src/vms
COPY camsim /src/camsim
RUN /opt/vms/bin/pip install "/src[sim]"

FROM debian:bookworm-slim
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-gi python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 \
       gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/vms/bin:$PATH PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 vms \
    && useradd --system --uid 10001 --gid vms --home-dir /var/lib/camsim --shell /usr/sbin/nologin vms \
    && install -d -o vms -g vms -m 0755 /var/lib/camsim
COPY --from=build /opt/vms /opt/vms
USER vms
WORKDIR /var/lib/camsim
# Clip cache (encoded once) and the RTSP server's log.
VOLUME ["/var/lib/camsim"]
# RTSP, then the HTTP fault-injection API.
EXPOSE 8554 8555
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ.get('CAMSIM_HEALTH_URL', 'http://127.0.0.1:8555/health'), timeout=3)"]
CMD ["vms", "camsim", "--cameras", "8", "--host", "0.0.0.0", "--rtsp-port", "8554", "--control-port", "8555", "--no-onvif", "--data-dir", "/var/lib/camsim"]
