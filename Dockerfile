# One image for every RobustFL service: SuperLink, SuperNodes, ServerApp/ClientApp executors
# and the flwr CLI. It holds Python, the flwr version pinned in pyproject.toml and the project's
# dependencies; the app code itself arrives with each `flwr run` (a FAB), so the image changes
# only with pyproject.toml.
#   docker compose build                                  CPU torch (default)
#   docker compose -f docker-compose.yml -f docker-compose.gpu.yml build   CUDA torch
FROM python:3.11-slim

# Where torch and torchvision come from: the CPU wheels by default (small, no CUDA);
# https://pypi.org/simple gives PyPI's CUDA build (docker-compose.gpu.yml).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# The uid the services run as: match the owner of the results folder you bind-mount.
ARG APP_UID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1

WORKDIR /opt/robustfl
COPY pyproject.toml .
# The project's own dependency list, flwr at the exact version pyproject.toml pins (the one the
# tests run; the build stops if the pin is not exact) and without its [simulation] extra (Ray):
# a deployment never simulates. torch first, from TORCH_INDEX, so that the rest of the list
# finds it satisfied instead of pulling another build from PyPI.
RUN python -c "import re, tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(re.sub(r'^flwr\[[^]]*\]', 'flwr', d.replace(' ', '')) if d.startswith('flwr') else d for d in deps))" > requirements.txt \
    && { grep -E '^flwr==[0-9.]+$' requirements.txt > flwr.txt \
         || { echo 'pyproject.toml must pin flwr exactly, e.g. flwr[simulation]==1.42.0' >&2; exit 1; }; } \
    && grep -E '^(torch|torchvision)([<>=!~ ]|$)' requirements.txt > torch.txt \
    && pip install --index-url "$TORCH_INDEX" -r torch.txt \
    && pip install -r requirements.txt \
    && python -c "import flwr, torch; pin = open('flwr.txt').read().split('==')[1].strip(); assert flwr.__version__ == pin, (flwr.__version__, pin)"

# Non-root. FABs are installed under $HOME/.flwr; the SuperLink keeps its state database in
# /var/lib/flwr (a named volume, which starts with this folder's owner).
RUN useradd --create-home --uid "$APP_UID" app \
    && mkdir -p /var/lib/flwr /data /results \
    && chown app:app /var/lib/flwr /results
USER app
WORKDIR /home/app
