# syntax=docker/dockerfile:1
# inrreg BIDS App (`inrreg-bids`) on CUDA PyTorch, with ANTsPy and tiny-cuda-nn.
#
#   docker build -t inrreg:latest .                              # tinycudann for sm 70-90 (slow: ~30-60 min)
#   docker build --build-arg WITH_TCNN=0 -t inrreg:latest .      # pure-PyTorch hash encoding only (minutes)
#   docker build --build-arg TCNN_CUDA_ARCHITECTURES=86 ...      # one architecture (RTX 30xx / A40)
#   docker run --rm --gpus all -v /data/bids:/data:ro -v /data/out:/out inrreg:latest /data /out participant
#
# The package and its dependencies are installed by .ci/install, the same install step `make setup`
# (README, CI) runs; the base image's CUDA build of torch is kept (the package's range allows it).
# No USER line: run as any UID (Docker `-u`, Apptainer); $HOME is made writable for all of them.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel
FROM ${BASE_IMAGE}

ARG BASE_IMAGE
# 1: build tiny-cuda-nn's PyTorch bindings (needs the CUDA toolkit of the -devel base); 0: skip
ARG WITH_TCNN=1
# compute capabilities to build tinycudann for (no GPU at build time, so they cannot be detected):
# V100 70, T4/RTX 20xx 75, A100 80, RTX 30xx/A40/A10 86, L4/L40/RTX 40xx 89, H100/H200 90
ARG TCNN_CUDA_ARCHITECTURES="70;75;80;86;89;90"
# tiny-cuda-nn commit (pinned for reproducible images; override with --build-arg TCNN_REF=<tag or commit>)
ARG TCNN_REF=02919511e152ee1059b51b7825bd9a4de659645c
ARG TCNN_MAX_JOBS=4
ARG VERSION=dev
ARG VCS_REF=unknown
ARG BUILD_DATE=unknown
# what GeneratedBy.Container.Tag says in the derivatives' dataset_description.json: pass the tag you push
ARG CONTAINER_TAG=inrreg:${VERSION}

LABEL org.opencontainers.image.title="inrreg" \
      org.opencontainers.image.description="inrreg BIDS App: image registration with untrained implicit neural representations (CUDA, ANTsPy, tiny-cuda-nn)" \
      org.opencontainers.image.url="https://github.com/inrreg/inrreg" \
      org.opencontainers.image.source="https://github.com/inrreg/inrreg" \
      org.opencontainers.image.documentation="https://github.com/inrreg/inrreg#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends git ca-certificates \
    && rm -rf /var/lib/apt/lists/*

ENV HOME=/home/inrreg \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONNOUSERSITE=1 \
    PIP_NO_CACHE_DIR=1 \
    NIPYPE_NO_ET=1 \
    MPLCONFIGDIR=/home/inrreg/.config/matplotlib
RUN mkdir -p "$HOME"

# tiny-cuda-nn first: it only depends on the base image's torch, so changing inrreg does not rebuild it.
# Not on PyPI: built from source; libcuda is linked against the toolkit's stub (no driver at build time).
# Its run-time compilation cache lives in the package (rtc/): writable by any UID, as $HOME.
RUN if [ "$WITH_TCNN" = "1" ]; then \
        python -m pip install ninja \
        && LIBRARY_PATH="/usr/local/cuda/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}" \
           TCNN_CUDA_ARCHITECTURES="$TCNN_CUDA_ARCHITECTURES" MAX_JOBS="$TCNN_MAX_JOBS" \
           python -m pip install --no-build-isolation \
           "tinycudann @ git+https://github.com/NVlabs/tiny-cuda-nn@${TCNN_REF}#subdirectory=bindings/torch" \
        && python -m pip show tinycudann \
        && rtc="$(python -c 'import importlib.util as u, os; print(os.path.dirname(u.find_spec("tinycudann").origin))')/rtc" \
        && if [ -d "$rtc" ]; then chmod -R a+rwX "$rtc"; fi; \
    else \
        echo "WITH_TCNN=$WITH_TCNN: no tinycudann (inrreg uses its pure-PyTorch hash encoding)"; \
    fi

COPY . /opt/inrreg
# the one install step (as `make setup`): the package with the ants extra (antspyx) and the
# templateflow extra (--output-spaces; the templates themselves are bound in at $TEMPLATEFLOW_HOME)
RUN /opt/inrreg/.ci/install python ants,templateflow \
    && python -c "import torch, ants, inrreg_pipeline; assert torch.version.cuda, 'CPU torch replaced the CUDA build'" \
    && inrreg-bids --version \
    && python -c "import matplotlib.pyplot" \
    && chmod -R go=u "$HOME"

ENV INRREG_CONTAINER_TYPE=docker \
    INRREG_CONTAINER_TAG=${CONTAINER_TAG}

WORKDIR /home/inrreg
ENTRYPOINT ["inrreg-bids"]
CMD ["--help"]
