# The `lab` service of docker-compose.yml: JupyterLab + the zdlab kit, as a non-root user.
# Same requirements.txt as `make lab`, so the container and a laptop run identical versions.
# Patch-level tag: requirements.txt needs Python >= 3.11.5 (soupsieve), and every pin has
# cp311 manylinux wheels (x86_64 and aarch64), so no compiler is needed.
FROM python:3.11.14-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PLOOMBER_STATS_ENABLED=false \
    ZDLAB_HOME=/home/jovyan/work \
    JUPYTER_PORT=8888

# tini is PID 1: it forwards `docker stop` to JupyterLab and reaps exited kernels.
# Not version-pinned (DL3008): Debian replaces versions on security updates, so a pin would
# break the build; the base image tag fixes the Debian release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

# uid 1000 `jovyan`, work in /home/jovyan/work: the layout of Jupyter's docker-stacks images.
# The work folder is created here, owned by jovyan: WORKDIR would create it owned by root, and
# the kit writes there (.zdlab, the embedded server's data, when DATABASE_URL is unset).
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash jovyan \
    && install -d -o jovyan -g jovyan /home/jovyan/work

# requirements-hub.txt = requirements.txt + jupyterhub (`jupyterhub-singleuser`, for Zero to JupyterHub).
COPY requirements.txt requirements-hub.txt /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements-hub.txt && rm /tmp/requirements*.txt

WORKDIR /home/jovyan/work
COPY --chown=jovyan:jovyan pyproject.toml ./
COPY --chown=jovyan:jovyan zdlab/ zdlab/
COPY --chown=jovyan:jovyan solutions/ solutions/
COPY --chown=jovyan:jovyan tools/ tools/
# Baseline copy; compose bind-mounts ./notebooks over it so a learner's work survives restarts.
COPY --chown=jovyan:jovyan notebooks/ notebooks/
COPY docker/entrypoint.sh /usr/local/bin/zdlab-entrypoint

# Dependencies came from requirements.txt above; install only the kit itself, then drop the
# build leftovers setuptools writes into the source folder.
RUN pip install --no-cache-dir --no-deps . \
    && rm -rf build zdlab.egg-info \
    && chmod 0755 /usr/local/bin/zdlab-entrypoint

# Numeric, so runtimes that enforce "non-root" (Kubernetes runAsNonRoot) can verify it.
USER 1000:1000
EXPOSE 8888
ENTRYPOINT ["tini", "-g", "--", "zdlab-entrypoint"]
