"""Is a server reachable, and may we try? One bounded probe for weights (the Hub) and dataset
downloads alike, and the one reading of the Hugging Face offline switches.

Light on purpose (no torch, no huggingface_hub): it runs before those are imported, so an
offline machine fails in well under a second instead of retrying for half a minute.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys
import threading
from urllib.parse import urlparse


def endpoint(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) that a request for `url` would first connect to: the proxy if one is set
    for its scheme, else the URL's own host. Through a proxy the first bytes are an HTTP CONNECT,
    not TLS, so a TCP connect is the test there."""
    parsed = urlparse(url if "://" in url else f"http://{url}")
    scheme = parsed.scheme or "http"
    proxy = os.environ.get(f"{scheme.upper()}_PROXY") or os.environ.get(f"{scheme}_proxy")
    if proxy:
        p = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return p.hostname or "", p.port or (443 if p.scheme == "https" else 80), False
    return parsed.hostname or "", parsed.port or (443 if scheme == "https" else 80), scheme == "https"


def reachable(url: str, timeout: float = 2.0) -> bool:
    """Does `url`'s server (or proxy) answer? DNS, TCP connect and, for HTTPS, the TLS handshake,
    never longer than `timeout` seconds.

    The handshake matters: some sandboxes and firewalls accept every TCP connection and then
    never answer, which would fool a bare connect. The certificate is not checked (this tests
    reachability, not trust; the download itself verifies it). getaddrinfo has no timeout of its
    own (a broken resolver can block for many seconds), so the probe runs in a daemon thread and
    we stop waiting after `timeout`; a stuck thread dies with the process.
    """
    host, port, tls = endpoint(url)
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                if tls:
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    with context.wrap_socket(sock, server_hostname=host):
                        pass
            result.append(True)
        except OSError:  # includes DNS failures, refusals, timeouts and TLS errors
            result.append(False)

    thread = threading.Thread(target=probe, name="reachability-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_offline(datasets: bool = False) -> bool:
    """Whether Hub downloads are switched off: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE; with
    `datasets`, HF_DATASETS_OFFLINE too), or `go_offline()` after huggingface_hub was imported."""
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None and getattr(hub_constants, "HF_HUB_OFFLINE", False):
        return True
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") + (("HF_DATASETS_OFFLINE",) if datasets else ())
    return any(os.environ.get(k, "").upper() in ("1", "ON", "YES", "TRUE") for k in names)


def go_offline() -> None:
    """Make the Hub libraries use the local cache without trying the network.

    huggingface_hub reads HF_HUB_OFFLINE when it is imported, so setting the variable is enough
    before that (our CLI imports neither timm nor datasets before this check). If something
    imported it already, its module constant is switched too: huggingface_hub reads
    `constants.HF_HUB_OFFLINE` at call time.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants = sys.modules.get("huggingface_hub.constants")
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True


def hub_url() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
