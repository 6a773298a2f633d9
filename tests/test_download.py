"""Dataset downloads against a local HTTP server on 127.0.0.1 serving fixture files in the real formats (gzipped IDX
files, an EMNIST-style ``gzip.zip``): files land only once complete and checked, progress is printed, every failure
is one line and leaves nothing behind. The fixtures' MD5 sums replace the published ones."""

from __future__ import annotations

import gzip
import hashlib
import io
import threading
import zipfile
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from hm2bp.data import download, idx
from hm2bp.data.download import Progress, folder_lock
from hm2bp.data.idx import DatasetFileError, load_emnist_balanced, load_mnist, write_idx


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.routes[path]``: bytes (200), an int (that HTTP status), or ``("truncate", body)`` (a
    Content-Length larger than the body, then the connection closes)."""

    def do_GET(self) -> None:  # http.server's name for it
        self.server.hits[self.path] += 1
        route = self.server.routes.get(self.path, 404)
        if isinstance(route, int):
            self.send_error(route)
            return
        body = route[1] if isinstance(route, tuple) else route
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (1000 if isinstance(route, tuple) else 0)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args) -> None:  # keep the test output clean
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.routes, srv.hits = {}, Counter()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """The default sources point at a closed local port: a URL that failed to travel can never reach the internet."""
    monkeypatch.setattr(idx, "MNIST_URL", "http://127.0.0.1:9/mnist/")
    monkeypatch.setattr(idx, "EMNIST_URL", "http://127.0.0.1:9/gzip.zip")


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mnist_fixture(server, monkeypatch, tmp_path: Path) -> dict[str, np.ndarray]:
    """Serve a tiny MNIST under ``/mnist/`` (the ``.gz`` files of the real layout) with its MD5 sums in place of the
    published ones; the arrays served, by stem."""
    rng = np.random.default_rng(0)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28)), "train-labels-idx1-ubyte": np.arange(6),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28)), "t10k-labels-idx1-ubyte": np.arange(3)}
    sums = {}
    for stem, array in arrays.items():
        data = write_idx(tmp_path / "served" / stem, array, compress=True).read_bytes()
        server.routes[f"/mnist/{stem}.gz"] = data
        sums[stem] = _md5(data)
    monkeypatch.setattr(idx, "MNIST_FILES", sums)
    return arrays


def emnist_fixture(server, monkeypatch, tmp_path: Path, labels: np.ndarray) -> np.ndarray:
    """Serve an EMNIST-style ``/emnist/gzip.zip`` (``gzip/<stem>.gz`` members, images stored transposed) with its MD5
    sum in place of the published one; the upright images served."""
    images = np.random.default_rng(1).integers(0, 256, (len(labels), 28, 28))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for split in ("train", "test"):
            for kind, array in (("images-idx3", images.transpose(0, 2, 1)), ("labels-idx1", labels)):
                stem = f"emnist-balanced-{split}-{kind}-ubyte"
                z.writestr(f"gzip/{stem}.gz", write_idx(tmp_path / "served" / stem, array, True).read_bytes())
        z.writestr("gzip/emnist-letters-train-labels-idx1-ubyte.gz", gzip.compress(b"another split"))
    server.routes["/emnist/gzip.zip"] = buf.getvalue()
    monkeypatch.setattr(idx, "EMNIST_ZIP_MD5", _md5(buf.getvalue()))
    return images


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mnist_download_lands_checked_files_and_shows_progress(server, monkeypatch, tmp_path, capsys):
    arrays = mnist_fixture(server, monkeypatch, tmp_path)
    x_tr, y_tr, x_te, y_te = load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist")
    assert np.array_equal(x_tr.numpy(), arrays["train-images-idx3-ubyte"].reshape(6, 784))
    assert y_tr.tolist() == list(range(6)) and y_te.tolist() == list(range(3))
    assert np.array_equal(x_te.numpy(), arrays["t10k-images-idx3-ubyte"].reshape(3, 784))
    assert _leftovers(tmp_path / "data" / "mnist") == sorted(stem + ".gz" for stem in arrays)
    err = capsys.readouterr().err
    for stem in arrays:
        size = download._size(len(server.routes[f"/mnist/{stem}.gz"]))
        assert f"downloading {server.url}/mnist/{stem}.gz ({size}) into {tmp_path / 'data' / 'mnist'}\n" in err
        assert f"\n{stem}.gz: {size} in " in err  # the summary line
    load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist")  # all in place: nothing fetched again
    assert set(server.hits.values()) == {1}


def _one_line_error(call) -> str:
    with pytest.raises(DatasetFileError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_wrong_checksum_keeps_nothing(server, monkeypatch, tmp_path):
    mnist_fixture(server, monkeypatch, tmp_path)
    served = server.routes["/mnist/train-images-idx3-ubyte.gz"]
    server.routes["/mnist/train-images-idx3-ubyte.gz"] = served[:-1] + bytes([served[-1] ^ 1])  # one bit flipped
    message = _one_line_error(lambda: load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist/"))
    url = f"{server.url}/mnist/train-images-idx3-ubyte.gz"
    assert message.startswith(f"download of {url} has MD5 ")
    assert f"expected {_md5(served)}" in message and "nothing was kept" in message
    assert _leftovers(tmp_path / "data" / "mnist") == []


def test_truncated_transfer_keeps_nothing(server, monkeypatch, tmp_path):
    mnist_fixture(server, monkeypatch, tmp_path)
    body = server.routes["/mnist/train-labels-idx1-ubyte.gz"]
    server.routes["/mnist/train-labels-idx1-ubyte.gz"] = ("truncate", body)
    message = _one_line_error(lambda: load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist/"))
    assert message.startswith(f"download of {server.url}/mnist/train-labels-idx1-ubyte.gz failed: the transfer "
                              f"stopped after {len(body)} of {len(body) + 1000} bytes; nothing was kept")
    # the file fetched before it is complete and checked: it stays; the truncated one left nothing
    assert _leftovers(tmp_path / "data" / "mnist") == ["train-images-idx3-ubyte.gz"]


@pytest.mark.parametrize("status", [404, 500])
def test_server_error_names_the_url(server, monkeypatch, tmp_path, status):
    mnist_fixture(server, monkeypatch, tmp_path)
    server.routes["/mnist/train-images-idx3-ubyte.gz"] = status
    message = _one_line_error(lambda: load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist/"))
    assert message.startswith(f"download of {server.url}/mnist/train-images-idx3-ubyte.gz failed: HTTP {status} ")
    assert message.endswith(f"fetch train-images-idx3-ubyte.gz by hand into {tmp_path / 'data' / 'mnist'}")
    assert _leftovers(tmp_path / "data" / "mnist") == []


def test_a_url_that_is_not_one_is_refused_before_any_work(tmp_path):
    message = _one_line_error(lambda: load_mnist(tmp_path, url="mirror.example.org/mnist"))
    assert message == ("dataset.url='mirror.example.org/mnist' is not a URL urllib can fetch: give an http://, "
                       "https://, ftp:// or file:// address")
    _one_line_error(lambda: load_emnist_balanced(tmp_path, url="gzip.zip"))


def test_emnist_download_extracts_the_balanced_split(server, monkeypatch, tmp_path, capsys):
    images = emnist_fixture(server, monkeypatch, tmp_path, np.arange(47))
    x_tr, y_tr, x_te, _ = load_emnist_balanced(tmp_path, download=True, url=server.url + "/emnist/gzip.zip")
    assert np.array_equal(x_tr.numpy(), images.reshape(47, 784)) and np.array_equal(x_te, x_tr)
    assert y_tr.tolist() == list(range(47))
    assert _leftovers(tmp_path / "emnist") == sorted([f"{s}.gz" for s in idx.EMNIST_FILES] + ["gzip.zip"])
    assert "extracting emnist-balanced-train-images-idx3-ubyte.gz: " in capsys.readouterr().err


class Killed(BaseException):
    """Stands for the process being interrupted (Ctrl-C, a job's time limit)."""


def test_interrupted_emnist_extraction_leaves_no_truncated_file_and_a_rerun_completes(server, monkeypatch,
                                                                                       tmp_path):
    images = emnist_fixture(server, monkeypatch, tmp_path, np.arange(47))
    copy = download._copy

    def killed_midway(src, dst, progress, digest=None):
        if progress.label == "extracting emnist-balanced-train-images-idx3-ubyte.gz":
            dst.write(src.read(100))  # part of the file is on disk when the process is stopped
            raise Killed
        return copy(src, dst, progress, digest)

    monkeypatch.setattr(download, "_copy", killed_midway)
    url = server.url + "/emnist/gzip.zip"
    with pytest.raises(Killed):
        load_emnist_balanced(tmp_path, download=True, url=url)
    assert _leftovers(tmp_path / "emnist") == ["gzip.zip"]  # the checked archive stays; no partial member
    monkeypatch.setattr(download, "_copy", copy)
    x_tr, _, _, _ = load_emnist_balanced(tmp_path, download=True, url=url)
    assert np.array_equal(x_tr.numpy(), images.reshape(47, 784))
    assert server.hits["/emnist/gzip.zip"] == 1  # the rerun extracted from the archive it had


def test_a_data_dir_that_cannot_hold_the_files_is_named(tmp_path):
    (tmp_path / "data").write_text("a file where the data folder should be")
    message = _one_line_error(lambda: load_mnist(tmp_path / "data", download=True))
    assert message.startswith(f"cannot download into {tmp_path / 'data' / 'mnist'}: ")


def test_a_damaged_archive_is_named(tmp_path):
    (tmp_path / "emnist").mkdir()
    (tmp_path / "emnist" / "gzip.zip").write_bytes(b"PK not really a zip")
    message = _one_line_error(lambda: load_emnist_balanced(tmp_path, download=True))
    assert message.startswith(f"cannot open {tmp_path / 'emnist' / 'gzip.zip'}: ")
    assert message.endswith("the archive is damaged; delete it to download it again")


def test_a_second_process_waits_and_finds_the_files_in_place(server, monkeypatch, tmp_path):
    """Ranks of a distributed run share the data folder: the one that waited for the lock fetches nothing."""
    arrays = mnist_fixture(server, monkeypatch, tmp_path)
    folder = tmp_path / "data" / "mnist"
    result = {}
    waiting = threading.Thread(target=lambda: result.update(
        x=load_mnist(tmp_path / "data", download=True, url=server.url + "/mnist/")[0]))
    with folder_lock(folder):  # held by "the first process", which writes the files meanwhile
        waiting.start()
        waiting.join(timeout=0.5)  # gives it the chance to start fetching, which the lock must prevent
        for stem in arrays:
            (folder / f"{stem}.gz").write_bytes(server.routes[f"/mnist/{stem}.gz"])
    waiting.join()
    assert np.array_equal(result["x"].numpy(), arrays["train-images-idx3-ubyte"].reshape(6, 784))
    assert sum(server.hits.values()) == 0


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _ticks(progress_stream, total: int | None, steps: int) -> str:
    """Feed a Progress ``steps`` equal updates 1 s apart up to ``total`` (or 1000 bytes), then finish it at once;
    what it printed."""
    clock = iter([*range(steps + 1), steps])
    progress = Progress("f.gz", total, progress_stream, clock=lambda: float(next(clock)))
    done = total or 1000
    for k in range(1, steps + 1):
        progress.update(done * k // steps)
    progress.finish(done)
    return progress_stream.getvalue()


def test_progress_in_a_log_is_sparse_whole_lines():
    lines = _ticks(io.StringIO(), 2_000_000, 40).splitlines()
    # one line per tenth (the 100% one is the summary), never more
    assert lines[0] == "f.gz: 200.0 kB/2.0 MB (10%), 50.0 kB/s, 36s left"
    assert lines[-2] == "f.gz: 1.8 MB/2.0 MB (90%), 50.0 kB/s, 4s left"
    assert lines[-1] == "f.gz: 2.0 MB in 40s, 50.0 kB/s" and len(lines) == 10
    # without a Content-Length: bytes and rate, a line every LOG_EVERY_S
    lines = _ticks(io.StringIO(), None, 12).splitlines()
    assert lines == ["f.gz: 416 B, 83 B/s", "f.gz: 833 B, 83 B/s", "f.gz: 1.0 kB in 12s, 83 B/s"]


def test_progress_on_a_terminal_is_one_line_redrawn():
    out = _ticks(_Terminal(), 2_000_000, 40)
    # the summary overwrites the longer progress line (blanks pad it) and ends it
    assert out.count("\n") == 1 and out.endswith("\rf.gz: 2.0 MB in 40s, 50.0 kB/s" + " " * 7 + "\n")
    assert out.count("\r") == 41 and "\rf.gz: 1.0 MB/2.0 MB (50%), 50.0 kB/s, 20s left" in out


def test_the_url_key_reaches_the_loader_and_stays_out_of_the_fingerprint(server, monkeypatch, tmp_path):
    from hm2bp.app.data import SpikeData
    from hm2bp.app.identity import fingerprint, run_config
    from hm2bp.app.prepare import compose_experiment, prepare

    mnist_fixture(server, monkeypatch, tmp_path)
    overrides = [f"data_dir={tmp_path / 'data'}", "dataset.download=true", f"dataset.url='{server.url}/mnist/'"]
    manifest = prepare("mnist_mlp", overrides)
    assert (manifest["n_train"], manifest["n_test"]) == (6, 3)
    assert fingerprint(run_config(compose_experiment("mnist_mlp", overrides))) == fingerprint(
        run_config(compose_experiment("mnist_mlp", [])))
    data = SpikeData("mnist", tmp_path / "other", steps=10, batch_size=2, seed=0, download=True,
                     url=server.url + "/mnist/")
    assert data.n_train == 6 and sum(server.hits.values()) == 8
    with pytest.raises(ValueError, match="url='http://x/' does not apply to dataset 'digits'"):
        SpikeData("digits", tmp_path, steps=10, batch_size=2, seed=0, url="http://x/")


def test_the_app_reports_a_failed_download_in_one_line(server, tmp_path):
    from test_app import _run

    proc = _run(["dataset=mnist", "dataset.download=true", f"dataset.url='{server.url}/mirror/'",
                 f"data_dir={tmp_path / 'data'}", f"output_root={tmp_path / 'runs'}"], tmp_path, check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: download of {server.url}/mirror/train-images-idx3-ubyte.gz failed: HTTP 404 Not Found; nothing "
        f"was kept; rerun to try again, or fetch train-images-idx3-ubyte.gz by hand into {tmp_path / 'data' / 'mnist'}")
