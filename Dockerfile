# The OTT services image, ottlab/ott-services:<version of pyproject.toml>: every API service of
# k8s/base/apis runs from it as `python -m ott.<service>` (the Deployments set the command), and
# so do the transcoder of k8s/base/media and its transcode-sample Job (`python -m ott.transcoder`),
# which is why it carries ffmpeg, ffprobe and the sample clip's font (ott.media.sample.FONT), and the
# QoE collector of k8s/base/player (`python -m ott.qoe`), with the web player's files for its nginx.
#
#   make image              # docker build -t ottlab/ott-services:0.1.0 .  (podman if there is no docker)
#   ottlab image load       # kind load docker-image ... / minikube image load ... / k3d image import ...
#
# tests/kube/test_apis_manifests.py checks this file: pinned base, the pinned dependency set,
# no dev tools, a non-root user.
FROM python:3.11-slim

# No .pyc files (the pods' root filesystem is read-only); logs leave at once, not buffered.
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# The transcoder's tools: ffmpeg and ffprobe (Debian's ffmpeg package), and DejaVu Sans Mono,
# the font the sample clip burns its clock in. No recommends (no X, no docs), no apt lists left.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# What `pip install .` needs: the project metadata (its readme included), the pins, the services.
# labkit (the instruments) stays out: the image runs `python -m ott.<service>` and nothing else.
COPY pyproject.toml constraints.txt README.md ./
COPY ott/ ott/
# The same pins as the lab's virtualenv (constraints.txt): the services' own dependencies only,
# without the `lab` extra (Jupyter, Playwright, matplotlib, pandas) or the dev tools.
RUN pip install --no-cache-dir -c constraints.txt . \
    && groupadd --gid 10001 ott \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ott

# The web player's static files (labkit.platform.layers.player.KUBE_SITE): the player pod's init container copies
# them for its nginx (k8s/base/player/player.yaml). hls.min.js is the npm package `make bootstrap`
# installs (npm ci --prefix ott/player).
COPY ott/player/www/ /srv/ott-player/www/
COPY ott/player/node_modules/hls.js/dist/hls.min.js /srv/ott-player/vendor/hls.min.js

# `python -m` puts the working directory first on sys.path: an empty, root-owned one, so the
# installed packages are what runs.
WORKDIR /app
# Numeric, so the kubelet can check runAsNonRoot without reading /etc/passwd.
USER 10001:10001

# Harmless default: the Deployments choose the service.
CMD ["python", "-c", "print('ottlab/ott-services: run a service with python -m ott.<auth|catalog|subscription|license|cas|transcoder|qoe>')"]
