"""Whether the Hugging Face hub can be reached, decided once per process before the first download.

Without HF_HUB_OFFLINE, a machine without a network spends 30-60 s in the libraries' retries before
their error. So before the first hub call, one TCP connection to the hub (or to the proxy that
reaches it) is tried with a short timeout; when it fails, the process goes offline (HF_HUB_OFFLINE=1)
with one note, and the project's one-line offline errors follow at once. A local folder needs no hub.
"""
import os
import socket
import sys
import threading
import urllib.request
from urllib.parse import urlsplit

CONNECT_TIMEOUT_S = 3
_decided = False  # the check runs once per process


def connect_address(url):
    """(host, port) a connection to `url` goes to: its proxy's when one is set for it."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def reachable(host, port, timeout=CONNECT_TIMEOUT_S):
    """Whether a TCP connection to host:port opens within `timeout` seconds, name lookup included
    (run in a thread, since a lookup without a network can hang longer than any socket timeout)."""
    opened = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            opened.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(opened)


def go_offline():
    """HF_HUB_OFFLINE=1 for this process and its children. huggingface_hub and datasets read the
    variable once, at import, into module constants; those already imported are set as well."""
    from huggingface_hub import constants
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True  # is_offline_mode() (hub, transformers, timm, open_clip) reads this
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:  # imported later, it takes the value from the constant above
        datasets_config.HF_HUB_OFFLINE = datasets_config.HF_DATASETS_OFFLINE = True


def check_hub(source=None):
    """Before a hub call for `source` (a hub id or a local folder): the first time in this process,
    when no offline variable is set and the hub cannot be reached, go offline with one note."""
    global _decided
    if _decided or (source is not None and os.path.isdir(source)):
        return
    _decided = True
    from huggingface_hub import constants
    if constants.HF_HUB_OFFLINE:
        return
    host, port = connect_address(constants.ENDPOINT)
    if not reachable(host, port):
        go_offline()
        print(f"note: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached, so this run is offline "
              f"(HF_HUB_OFFLINE=1): only models and datasets already in the caches load", flush=True)
