# syntax=docker/dockerfile:1
# The query Lambda (infra/template.yaml's SearchFunction): AWS Lambda Python base image, CPU-only
# torch, requirements.txt only (no test or UI packages), model weights baked in at build time.
#
#   docker build --platform linux/amd64 --provenance=false -t clipsearch:TAG .
#       --build-arg MODEL_ID=openai/clip-vit-base-patch32   # the model the index was built with
#       --build-arg INDEX_DIR=data/index                    # optional: bake this index in (.dockerignore
#                                                           # admits data/index only)
#
# No credentials anywhere: nothing secret is a build argument or ENV. At run time the function
# reads the index from S3 (INDEX_S3_URI) or OpenSearch with its execution role.
FROM public.ecr.aws/lambda/python:3.11

ARG MODEL_ID=openai/clip-vit-base-patch32
ARG INDEX_DIR=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, from PyTorch's CPU index (PyPI's default build drags in GBs of CUDA); then the
# rest of requirements.txt, whose torch pin is already satisfied.
COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install "$(grep -E '^torch==' ${LAMBDA_TASK_ROOT}/requirements.txt)" \
        --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r ${LAMBDA_TASK_ROOT}/requirements.txt

# Weights at build time; the function never reaches the hub (HF_HUB_OFFLINE=1 below).
COPY server/download_model.py /tmp/download_model.py
RUN python /tmp/download_model.py "${MODEL_ID}" /opt/model && rm /tmp/download_model.py

# An embedded index baked into the image, when INDEX_DIR names one in the build context. To
# serve it, deploy with INDEX_PATH=/opt/index and no INDEX_S3_URI; the template's embedded mode
# instead copies s3://BUCKET/PREFIX to /tmp/index at init.
RUN --mount=type=bind,source=.,target=/ctx \
    if [ -n "${INDEX_DIR}" ]; then cp -r "/ctx/${INDEX_DIR}" /opt/index; fi

COPY clipsearch/ ${LAMBDA_TASK_ROOT}/clipsearch/
COPY server/ ${LAMBDA_TASK_ROOT}/server/

ENV MODEL_PATH=/opt/model \
    MODEL_ID=${MODEL_ID} \
    INDEX_PATH=/opt/index \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

CMD ["server.handler.handler"]
