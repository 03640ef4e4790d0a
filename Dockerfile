# CPU image with `cnn` as the entrypoint; installs the package exactly as README.md does (pip install .).
#   docker build -t cnncli .
#   docker run --rm cnncli shape --in 3x32x32 --k 5 --p 2 --out-channels 10
#   docker run --rm -v $PWD/runs:/work/runs cnncli train linenet --data lines
# For CUDA, build on a CUDA runtime base with Python 3.10+ (torch's default wheels bundle CUDA):
#   docker build --build-arg BASE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 -t cnncli:cuda .
ARG BASE=python:3.11-slim
FROM ${BASE}

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 CNN_DATA_DIR=/data
RUN if ! command -v python3 >/dev/null; then \
      apt-get update && apt-get install -y --no-install-recommends python3 python3-pip python3-venv && \
      rm -rf /var/lib/apt/lists/*; fi
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml README.md ./
COPY cnncli ./cnncli
RUN pip install --upgrade pip && pip install . && cnn --version

WORKDIR /work
VOLUME ["/data", "/work/runs"]
ENTRYPOINT ["cnn"]
CMD ["--help"]
