# hoststorage node agent and cluster controller: one image, `hoststorage agent` / `hoststorage controller`.
#
# Debian 12 because the project is built and tested on it. libvirt-python comes from Debian
# (python3-libvirt, the same 9.0 series pyproject.toml asks for) so the image needs no compiler. Only
# libvirt's files are linked into the virtualenv, not all of Debian's dist-packages: glusterfs-client
# pulls Debian's requests/urllib3, which would mix with the kubernetes client's newer urllib3.
#
# Build: scripts/build_image.sh (or `podman build -t hoststorage .`); tests/test_image.py builds it
# over a debootstrap base.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="hoststorage" \
      org.opencontainers.image.description="Declarative host storage for Kubernetes nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Exactly the host tools the agent runs (hostlib, hostlib/preflight.py HELPERS): mount/umount (mount),
# nsenter (util-linux), mount.nfs (nfs-common), mount.glusterfs (glusterfs-client), iscsiadm
# (open-iscsi), udevadm (udev), modprobe (kmod), dd and sync (coreutils, in the base), the file-system
# tools posixfs sources need (e2fsprogs, xfsprogs), and the libvirt client library (python3-libvirt
# pulls libvirt0). No libvirt daemon: the agent talks to the node's libvirtd through the /run/libvirt
# socket the chart mounts. No systemd-run: with host-namespace execution (the chart's default) it and
# every other tool run from the host's root file system; the copies here serve preflight and
# hostNamespaces=false.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-libvirt \
      util-linux mount e2fsprogs xfsprogs kmod udev \
      nfs-common glusterfs-client open-iscsi \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md /src/
COPY hostlib /src/hostlib
COPY reconcilers /src/reconcilers
COPY controller /src/controller
# The build-ca secret (optional) is a CA bundle for pip behind a TLS-intercepting proxy:
# scripts/build_image.sh passes it with --secret; a secret mount leaves nothing in the image.
RUN --mount=type=secret,id=build-ca \
    if [ -s /run/secrets/build-ca ]; then export PIP_CERT=/run/secrets/build-ca; fi \
 && python3 -m venv /opt/hoststorage \
 && site=$(/opt/hoststorage/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') \
 && ln -s /usr/lib/python3/dist-packages/libvirt* "$site"/ \
 && /opt/hoststorage/bin/pip install --no-cache-dir /src \
 && rm -rf /src

ENV PATH=/opt/hoststorage/bin:${PATH}
# No USER: the image runs as root on purpose. The agent mounts, logs in to iSCSI targets and enters
# the host's namespaces (docs/security.md); the chart runs the controller as a non-root user.
ENTRYPOINT ["hoststorage"]
CMD ["--help"]
