# energy-meter-exporter container image.
#   docker build -t energy-meter-exporter .
#   docker run -p 9896:9896 -v $PWD/config.yaml:/etc/energy-meter-exporter/config.yaml:ro \
#              -v emx-state:/var/lib/energy-meter-exporter energy-meter-exporter
# The image carries the exporter alone; `--target demo` adds the device simulators and `python -m demo`
# (docker-compose.yml's demo profile).
FROM python:3.11-slim AS exporter

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1

RUN useradd --system --uid 10001 --home-dir /var/lib/energy-meter-exporter --create-home exporter \
 && mkdir -p /etc/energy-meter-exporter \
 && chmod 0700 /var/lib/energy-meter-exporter

WORKDIR /src
# The pinned versions of requirements/app.lock, then the exporter without resolving anything again.
COPY requirements/app.lock ./requirements/
RUN pip install -r requirements/app.lock
COPY pyproject.toml README.md ./
COPY exporter ./exporter
RUN pip install --no-deps . && rm -rf /src

USER exporter
WORKDIR /var/lib/energy-meter-exporter
EXPOSE 9896
VOLUME ["/var/lib/energy-meter-exporter"]

# The configuration is mounted here; its state_directory should be /var/lib/energy-meter-exporter.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9896/-/healthy', timeout=4).status == 200 else 1)"

ENTRYPOINT ["energy-meter-exporter", "--config.file=/etc/energy-meter-exporter/config.yaml"]
CMD ["--web.listen-address=:9896"]

# The simulators and the demo run from their source folders (they are not part of the installed package).
FROM exporter AS demo
USER root
COPY requirements/demo.lock /tmp/demo.lock
RUN pip install -r /tmp/demo.lock && rm /tmp/demo.lock
USER exporter
COPY simulators /opt/energy-meter-exporter-demo/simulators
COPY demo /opt/energy-meter-exporter-demo/demo
ENV PYTHONPATH=/opt/energy-meter-exporter-demo
ENTRYPOINT ["python", "-m", "demo"]
CMD ["--host", "0.0.0.0", "--port", "9896"]

# Last, so that a plain `docker build .` yields the exporter-only image.
FROM exporter
