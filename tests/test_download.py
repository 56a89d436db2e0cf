"""Downloads end: a server that never answers gives a bounded, clear failure; a good one gives a
verified file; a damaged one is refused."""

import hashlib
import http.server
import socket
import threading
import time

import pytest

from cocs.download import DownloadError, download


@pytest.fixture
def silent_server():
    """A loopback server that accepts connections and never sends a byte."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/cifar-10-python.tar.gz"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    sock.close()


@pytest.fixture
def file_server(tmp_path):
    """A loopback HTTP server for the files in a folder."""
    (tmp_path / "site").mkdir()
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "site"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path / "site", f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_never_answers_fails_in_bounded_time(silent_server, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        download(silent_server, tmp_path / "x.tar.gz", read_timeout=0.5, retries=2,
                 progress=False, offline="copy cifar10-jpeg.tar.gz into COCS_ARCHIVES")  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert elapsed < 10, f"took {elapsed:.1f} s"  # two 0.5 s reads and a 1 s pause
    message = str(err.value)
    assert silent_server in message and "read timeout 0.5 s" in message and "2 attempts" in message
    assert "COCS_ARCHIVES" in message, "the offline alternative is named"
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


def test_a_download_is_verified_against_its_checksum(file_server, tmp_path):
    site, base = file_server
    payload = bytes(range(256)) * 1000
    (site / "data.tgz").write_bytes(payload)
    md5 = hashlib.md5(payload).hexdigest()
    path = download(f"{base}/data.tgz", tmp_path / "out" / "data.tgz", md5=md5, progress=False)
    assert path.read_bytes() == payload
    (site / "data.tgz").write_bytes(b"damaged" + payload[7:])
    with pytest.raises(DownloadError, match="MD5"):
        download(f"{base}/data.tgz", tmp_path / "other.tgz", md5=md5, progress=False)
    assert not (tmp_path / "other.tgz").exists() and not (tmp_path / "other.tgz.part").exists()
    # a verified file already in place is kept without asking the server
    assert download("http://127.0.0.1:9/never", path, md5=md5, progress=False) == path


def test_a_missing_file_is_an_error_that_names_it(file_server, tmp_path):
    _, base = file_server
    with pytest.raises(DownloadError, match="404"):
        download(f"{base}/nothing.tgz", tmp_path / "n.tgz", retries=1, progress=False)
