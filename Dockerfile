# syntax=docker/dockerfile:1
# The query Lambda (infra/template.yaml's SearchFunction) on the AWS Lambda Python base image, in
# one of two variants chosen by a build argument:
#   ENCODER=onnx (default)  ONNX Runtime + tokenizers (locks/onnx.txt): no torch in the image.
#                           The model is exported to ONNX in a builder stage, the only stage
#                           with torch. Cold start about 0.5 s (bench/onnx_bench.py).
#   ENCODER=torch           CPU-only torch + transformers (locks/torch.txt, locks/torch-cpu.txt).
#                           Cold start about 4 s.
#
#   docker build --platform linux/amd64 --provenance=false -t clipsearch:TAG .
#       --build-arg ENCODER=onnx                            # or torch; deploy with Encoder= the same
#       --build-arg MODEL_ID=laion/CLIP-ViT-B-32-laion2B-s34B-b79K   # the model the index was built with
#       --build-arg ONNX_TEXT_INT8=true                     # onnx only: int8 text tower (faster, approximate)
#       --build-arg INDEX_DIR=data/index                    # optional: bake this index in (.dockerignore
#                                                           # admits data/index only)
#
# Base: public.ecr.aws/lambda/python:3.12, Python 3.12 on Amazon Linux 2023 with glibc 2.34
# ("Building Lambda functions with Python", https://docs.aws.amazon.com/lambda/latest/dg/lambda-python.html;
# "Improved toolchain: gcc, binutils, and glibc", https://docs.aws.amazon.com/linux/al2023/ug/glibc-gcc-and-binutils.html).
# python:3.11 is Amazon Linux 2, glibc 2.26: too old for onnxruntime's and torch's manylinux_2_28 wheels.
# Every stage uses the same base; its packages come only from the locks under locks/, resolved for
# this platform (`make lock`, scripts/locks.py) and installed with their hashes, binary wheels only.
# Each install ends with `pip check`: a lock missing a requirement fails the build, not the function.
#
# No credentials anywhere: nothing secret is a build argument or ENV. At run time the function
# reads the index from S3 (INDEX_S3_URI) or OpenSearch with its execution role.
ARG ENCODER=onnx
ARG MODEL_ID=laion/CLIP-ViT-B-32-laion2B-s34B-b79K
ARG ONNX_TEXT_INT8=false

# ---- torch: the torch variant's runtime, and the tools of the build stages below ---------------
FROM public.ecr.aws/lambda/python:3.12 AS torch-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch from PyTorch's CPU index (PyPI's linux build is the CUDA one, GBs of nvidia-* packages),
# without its requirements: they are in locks/torch.txt, installed from PyPI next.
COPY locks/torch-cpu.txt locks/torch.txt /tmp/locks/
RUN pip install --require-hashes --only-binary=:all: --no-deps \
        --index-url https://download.pytorch.org/whl/cpu -r /tmp/locks/torch-cpu.txt \
 && pip install --require-hashes --only-binary=:all: --index-url https://pypi.org/simple -r /tmp/locks/torch.txt \
 && pip check \
 && rm -r /tmp/locks

# ---- the weights, at build time; the function never reaches the hub (HF_HUB_OFFLINE=1) ---------
FROM torch-base AS weights
ARG MODEL_ID
COPY server/download_model.py /tmp/download_model.py
RUN python /tmp/download_model.py "${MODEL_ID}" /opt/model && rm /tmp/download_model.py

# ---- the ONNX export: text and image towers, tokenizer, model card naming MODEL_ID --------------
FROM weights AS onnx-export
ARG MODEL_ID
ARG ONNX_TEXT_INT8
COPY locks/export.txt /tmp/locks/
COPY clipsearch/ /tmp/export/clipsearch/
# locks/export.txt holds locks/torch.txt's pins (already installed) plus onnx and onnxruntime.
RUN pip install --require-hashes --only-binary=:all: --index-url https://pypi.org/simple -r /tmp/locks/export.txt \
 && pip check \
 && cd /tmp/export \
 && HF_HUB_OFFLINE=1 python -m clipsearch.export_onnx /opt/model /opt/model-onnx --model-id "${MODEL_ID}" \
        $(if [ "${ONNX_TEXT_INT8}" = "true" ]; then echo --int8-text; fi)

# ---- the two runtimes ----------------------------------------------------------------------------
FROM torch-base AS runtime-torch
COPY --from=weights /opt/model /opt/model
ENV ENCODER=torch MODEL_PATH=/opt/model

FROM public.ecr.aws/lambda/python:3.12 AS runtime-onnx
ARG ONNX_TEXT_INT8
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY locks/onnx.txt /tmp/locks/
RUN pip install --require-hashes --only-binary=:all: --index-url https://pypi.org/simple -r /tmp/locks/onnx.txt \
 && pip check \
 && rm -r /tmp/locks
COPY --from=onnx-export /opt/model-onnx /opt/model-onnx
ENV ENCODER=onnx ONNX_PATH=/opt/model-onnx ONNX_TEXT_INT8=${ONNX_TEXT_INT8}

# ---- the image: the chosen runtime, the code, optionally an index ---------------------------------
FROM runtime-${ENCODER}
ARG MODEL_ID
ARG INDEX_DIR=

# An embedded index baked into the image, when INDEX_DIR names one in the build context. To
# serve it, deploy with INDEX_PATH=/opt/index and no INDEX_S3_URI; the template's embedded mode
# instead copies s3://BUCKET/PREFIX to /tmp/index at init.
RUN --mount=type=bind,source=.,target=/ctx \
    if [ -n "${INDEX_DIR}" ]; then cp -r "/ctx/${INDEX_DIR}" /opt/index; fi

COPY clipsearch/ ${LAMBDA_TASK_ROOT}/clipsearch/
COPY server/ ${LAMBDA_TASK_ROOT}/server/

# Lambda's file system is read-only but for /tmp: any cache a library insists on goes there.
ENV MODEL_ID=${MODEL_ID} \
    INDEX_PATH=/opt/index \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/huggingface \
    TOKENIZERS_PARALLELISM=false

CMD ["server.handler.handler"]
