# One image for the whole platform: `cormorant-service SERVICE` runs any service, a replica
# (worker, kafka-bridge) or the migrations. Build: docker build -t cormorant:dev .
#
# Stage 1 installs the workspace (not editable) into a venv, pinned by constraints.txt.
FROM python:3.11-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1

WORKDIR /src
COPY constraints.txt ./
# uv's version is pinned by constraints.txt like everything else.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -c constraints.txt uv

COPY libs ./libs
COPY services ./services
# The SDK and CLI come too: flows and operators use `cormorant` from inside the image.
RUN /opt/venv/bin/uv pip install --python /opt/venv/bin/python -c constraints.txt \
        ./libs/common ./libs/sdk ./services/worker ./services/gateway ./services/deployer \
        ./services/predictlog ./services/feedback ./services/alerts ./services/kafka-bridge \
        ./services/batch ./services/fleet \
    && /opt/venv/bin/uv pip uninstall --python /opt/venv/bin/python uv

# Stage 2: the runtime, without build tools, as an unprivileged user. The local fleet (Compose)
# keeps its replicas' private directories beside the data directory (/var/lib/cormorant-replicas).
FROM python:3.11-slim-bookworm

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CORMORANT_DATA_DIR=/var/lib/cormorant

RUN groupadd --system --gid 10001 cormorant \
    && useradd --system --uid 10001 --gid cormorant --home-dir /var/lib/cormorant \
        --shell /usr/sbin/nologin cormorant \
    && mkdir -p /var/lib/cormorant /var/lib/cormorant-replicas \
    && chown cormorant:cormorant /var/lib/cormorant /var/lib/cormorant-replicas

COPY --from=builder /opt/venv /opt/venv
COPY deploy/docker/migrate.py /opt/cormorant/migrate.py
COPY deploy/docker/cormorant-service /usr/local/bin/cormorant-service

WORKDIR /var/lib/cormorant
USER 10001
EXPOSE 8080 8001 8081 8082 8083 8084 8085
ENTRYPOINT ["cormorant-service"]
CMD ["gateway"]
