# syntax=docker/dockerfile:1
# The query Lambda (infra/template.yaml's SearchFunction) on the AWS Lambda Python base image, in
# one of two variants chosen by a build argument:
#   ENCODER=onnx (default)  ONNX Runtime + tokenizers (requirements-onnx.txt): no torch in the
#                           image. The model is exported to ONNX in a builder stage, the only
#                           stage with torch. Cold start about 0.5 s (bench/onnx_bench.py).
#   ENCODER=torch           CPU-only torch + transformers (requirements.txt). Cold start about 4 s.
#
#   docker build --platform linux/amd64 --provenance=false -t clipsearch:TAG .
#       --build-arg ENCODER=onnx                            # or torch; deploy with Encoder= the same
#       --build-arg MODEL_ID=laion/CLIP-ViT-B-32-laion2B-s34B-b79K   # the model the index was built with
#       --build-arg ONNX_TEXT_INT8=true                     # onnx only: int8 text tower (faster, approximate)
#       --build-arg INDEX_DIR=data/index                    # optional: bake this index in (.dockerignore
#                                                           # admits data/index only)
#
# No credentials anywhere: nothing secret is a build argument or ENV. At run time the function
# reads the index from S3 (INDEX_S3_URI) or OpenSearch with its execution role.
ARG ENCODER=onnx
ARG MODEL_ID=laion/CLIP-ViT-B-32-laion2B-s34B-b79K
ARG ONNX_TEXT_INT8=false

# ---- torch: the torch variant's runtime, and the tools of the build stages below ---------------
FROM public.ecr.aws/lambda/python:3.11 AS torch-base
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, from PyTorch's CPU index (PyPI's default build drags in GBs of CUDA); then the
# rest of requirements.txt, whose torch pin is already satisfied.
COPY requirements.txt ${LAMBDA_TASK_ROOT}/
RUN pip install "$(grep -E '^torch==' ${LAMBDA_TASK_ROOT}/requirements.txt)" \
        --index-url https://download.pytorch.org/whl/cpu \
 && pip install -r ${LAMBDA_TASK_ROOT}/requirements.txt

# ---- the weights, at build time; the function never reaches the hub (HF_HUB_OFFLINE=1) ---------
FROM torch-base AS weights
ARG MODEL_ID
COPY server/download_model.py /tmp/download_model.py
RUN python /tmp/download_model.py "${MODEL_ID}" /opt/model && rm /tmp/download_model.py

# ---- the ONNX export: text and image towers, tokenizer, manifest naming MODEL_ID ----------------
FROM weights AS onnx-export
ARG MODEL_ID
ARG ONNX_TEXT_INT8
COPY requirements-onnx.txt /tmp/export/
COPY clipsearch/ /tmp/export/clipsearch/
RUN pip install "onnx>=1.16" "$(grep -E '^onnxruntime' /tmp/export/requirements-onnx.txt)" \
 && cd /tmp/export \
 && HF_HUB_OFFLINE=1 python -m clipsearch.export_onnx /opt/model /opt/model-onnx --model-id "${MODEL_ID}" \
        $(if [ "${ONNX_TEXT_INT8}" = "true" ]; then echo --int8-text; fi)

# ---- the two runtimes ----------------------------------------------------------------------------
FROM torch-base AS runtime-torch
COPY --from=weights /opt/model /opt/model
ENV ENCODER=torch MODEL_PATH=/opt/model

FROM public.ecr.aws/lambda/python:3.11 AS runtime-onnx
ARG ONNX_TEXT_INT8
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements-onnx.txt ${LAMBDA_TASK_ROOT}/
RUN pip install -r ${LAMBDA_TASK_ROOT}/requirements-onnx.txt
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
