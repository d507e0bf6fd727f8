# edgeruntime serving the functions/ and config.toml of the build context.
#   docker build -t edgeruntime .
#   docker run --init --stop-timeout 30 -p 127.0.0.1:54321:54321 edgeruntime
# More in docs/deployment.md ("Container"). Comments stay on lines of their own: after an
# instruction's arguments Docker would read them as more arguments.

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS builder
WORKDIR /src
RUN python -m pip install --no-cache-dir build==1.6.1
COPY pyproject.toml README.md ./
COPY edgeruntime ./edgeruntime
RUN python -m build --wheel --outdir dist .

FROM python:${PYTHON_VERSION}-slim
# Extras of the edgeruntime package to install; add `examples` to serve the bundled examples.
# (Uvicorn, uvloop and httptools, the default server, come with the package itself.)
ARG EXTRAS=postgres
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /src/dist /tmp/dist
# The wheel built above, not a package from an index: there is no version to pin.
# hadolint ignore=DL3013
RUN set -- /tmp/dist/edgeruntime-*.whl \
    && python -m pip install --no-cache-dir "$1[${EXTRAS}]"
# The server runs as an unprivileged user that cannot change the code it serves: it owns only
# the directory of the SQLite store (mount a volume there to keep it).
RUN groupadd --system --gid 10001 edge \
    && useradd --system --uid 10001 --gid edge --no-create-home --home-dir /app --shell /usr/sbin/nologin edge \
    && mkdir -p /app/.edgeruntime \
    && chown edge:edge /app/.edgeruntime
WORKDIR /app
COPY config.toml ./
COPY functions ./functions
USER 10001:10001
EXPOSE 54321
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:54321/_internal/health', timeout=4)"]
# One serving process per CPU the container may use, behind the one port.
CMD ["edgeruntime", "serve", "/app/functions", "--host", "0.0.0.0", "--port", "54321", "--no-watch", "--log-format", "json", "--workers", "auto"]
