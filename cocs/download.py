"""Downloads that cannot hang: timeouts, bounded retries, a progress bar and checksums.

Data sets come from the network only as the last resort (see :mod:`cocs.data`); when they do,
a server that accepts a connection and never answers must end in a clear error, not in a
process that waits forever.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import requests
from tqdm.auto import tqdm

__all__ = ["DownloadError", "download"]

CONNECT_TIMEOUT = 15.0  # seconds to open the connection
READ_TIMEOUT = 60.0  # seconds without a byte before a read gives up
RETRIES = 3  # attempts in all


class DownloadError(OSError):
    """A download that failed, or whose file does not match its published checksum."""


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    md5: str = "",
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    retries: int = RETRIES,
    progress: bool = True,
    offline: str = "",
) -> Path:
    """Fetch ``url`` into the file ``dest``, written under a temporary name until complete.

    Args:
        md5: the checksum the source publishes; the file is verified against it (and a file
            already at ``dest`` that matches is kept without downloading).
        connect_timeout, read_timeout: seconds to connect, and to wait for the next bytes.
        retries: attempts in all, with a pause of 1, 2, 4, ... seconds between them.
        offline: what to do without the network, for the error message.
    Raises:
        DownloadError naming the URL, the timeouts, the attempts and ``offline``.
    """
    dest = Path(dest)
    if dest.is_file() and (not md5 or _md5(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    last = None
    for attempt in range(retries):
        if attempt:
            time.sleep(2 ** (attempt - 1))
        try:
            with requests.get(url, stream=True, timeout=(connect_timeout, read_timeout)) as r:
                r.raise_for_status()
                total = int(r.headers.get("content-length", 0)) or None
                bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name,
                           disable=not progress)  # fmt: skip
                with open(partial, "wb") as f, bar:
                    for chunk in r.iter_content(1 << 16):
                        f.write(chunk)
                        bar.update(len(chunk))
            break
        except requests.RequestException as err:
            last = err
    else:
        partial.unlink(missing_ok=True)
        hint = f" Without the network: {offline}" if offline else ""
        raise DownloadError(
            f"could not download {url} in {retries} attempts (connect timeout {connect_timeout} "
            f"s, read timeout {read_timeout} s); last error: {type(last).__name__}: {last}.{hint}"
        )
    if md5 and (got := _md5(partial)) != md5:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"{url} arrived with MD5 {got}, but its source publishes {md5}: the download is "
            "damaged or the file has changed; try again, or fetch it by hand and check it"
        )
    os.replace(partial, dest)
    return dest
