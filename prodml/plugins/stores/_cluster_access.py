"""Helpers the built-in stores share to answer the cluster capabilities of ModelStore.

(``pod_environment``, ``reachable_from_cluster``, ``kserve_storage``: see
:class:`prodml.core.interfaces.ModelStore`.)
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

#: Host names that mean "this machine" (pods resolve them to themselves).
LOOPBACK_NAMES = frozenset({"localhost", "0.0.0.0"})


def endpoint_host(url: str) -> str:
    """The host of ``url`` (a bare ``host:port`` is read as http)."""
    return urlparse(url if "://" in url else f"http://{url}").hostname or ""


def is_loopback(url: str) -> bool:
    """Whether ``url`` points at the machine it is used on (unreachable for other pods)."""
    host = endpoint_host(url)
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def s3_secret_annotations(endpoint: str | None, region: str | None) -> dict[str, str]:
    """KServe's S3 annotations on the storage Secret (``pkg/credentials/s3`` reads these)."""
    annotations = {"serving.kserve.io/s3-region": region or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        https = parsed.scheme == "https"
        annotations["serving.kserve.io/s3-endpoint"] = parsed.netloc
        annotations["serving.kserve.io/s3-usehttps"] = "1" if https else "0"
        annotations["serving.kserve.io/s3-verifyssl"] = "1" if https else "0"
    return annotations
