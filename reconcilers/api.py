"""The API's identity: group, version and apiVersion of every hoststorage kind, defined once.

Plain constants with no imports, so that every program may read them: the kind modules check a
manifest's ``apiVersion`` against :data:`API_VERSION`, and the cluster controller builds request paths
from them without loading the host stack.
"""

from __future__ import annotations

GROUP = "hoststorage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
