"""Security and data safety of the catalogue (issue 13, items 1, 4, 5, 6): crafted model
folders served from a local HTTP server on 127.0.0.1 (a random port, in a thread of the test)
never write outside the download cache, caps and deadlines hold, a hash mismatch leaves
nothing, shipped ids cannot be shadowed or forged, cards must fit their weights, concurrent
downloads both succeed, killed downloads leave nothing after the next start, and ``train
--out`` never replaces what is not a model folder."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from brainspineai import download
from brainspineai.catalogue import (DEFAULT_MODEL_ID, ZOO_DIR, check_out_dir, list_models, load_model, read_card,
                                    resolve_model, save_model, shadowed_models, sha256_file, shipped_pins)
from brainspineai.errors import ChecksumError, InputError, ModelError
from conftest import LIB_PARENT, run_cli

# --------------------------------------------------------------------------------------
# A local model server


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        self.server.requests.append(self.path)
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, opts = route
        self.send_response(200)
        if opts.get("length", True):
            self.send_header("Content-Length", str(opts.get("claim", len(body))))
        self.end_headers()
        chunk, delay = opts.get("chunk", 0), opts.get("delay", 0.0)
        try:
            if chunk:
                for i in range(0, len(body), chunk):
                    self.wfile.write(body[i:i + chunk])
                    self.wfile.flush()
                    time.sleep(delay)
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


class Server:
    def __init__(self):
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.routes, self.httpd.requests = {}, []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.root = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def requests(self):
        return self.httpd.requests

    def publish(self, name: str, card: dict, files: dict, card_bytes: bytes | None = None, **opts) -> str:
        """Serve ``card`` and ``files`` (name -> bytes) under /<name>/; ``opts`` apply to the files."""
        self.httpd.routes[f"/{name}/model.json"] = (card_bytes or json.dumps(card).encode(), {})
        for fname, data in files.items():
            self.httpd.routes[f"/{name}/{fname}"] = (data, dict(opts))
        return f"{self.root}/{name}"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fake_card(data: bytes, **over) -> dict:
    card = {"id": "remote-model", "version": 1, "task": "classification-2d", "architecture": "resnet18-w32",
            "class_names": ["a", "b"], "input_size": [32, 32], "in_channels": 1,
            "weights": "model.safetensors", "sha256": _sha(data)}
    card.update(over)
    return card


def tree(root: Path) -> dict:
    """Every entry under ``root``: relative path -> sha256 (files) or 'dir'."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else sha256_file(p) if p.is_file() else "other"
    return out


def cached(home: Path) -> list:
    """Names in the download cache (none when it was never created)."""
    cache = home / "cache"
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def one_error_line(r) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainspineai: error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "\x1b[" not in r.stderr
    return lines[0]


@pytest.fixture
def image(tmp_path) -> Path:
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(0)
    arr = (rng.random((64, 64)) * 200).astype("uint8")
    arr[16:48, 16:48] += 50
    path = tmp_path / "slice.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="module")
def default_bytes():
    folder = ZOO_DIR / DEFAULT_MODEL_ID
    return (folder / "model.json").read_bytes(), (folder / "model.safetensors").read_bytes()


def renamed_default(default_bytes, new_id="remote-default", **over) -> tuple:
    card = json.loads(default_bytes[0])
    card.update(id=new_id, **over)
    return card, {"model.safetensors": default_bytes[1]}


# --------------------------------------------------------------------------------------
# Item 1: names from a card


ESCAPES = ["../escape.bin", "../../escape.bin", "/tmp/brainspineai-abs-escape.bin", "..\\escape.bin", "sub/x.bin",
           "C:escape.bin", "a\x00b", "..", ".", "", "x" * 200, 7, None]


@pytest.mark.parametrize("bad", ESCAPES, ids=repr)
@pytest.mark.parametrize("field", ["weights", "files", "id"])
def test_crafted_names_never_write_outside_the_cache(server, tmp_path, isolated_catalogue, bad, field):
    w = b"weights"
    card = fake_card(w)
    if field == "weights":
        card["weights"] = bad
    elif field == "files":
        card["files"] = {bad if isinstance(bad, str) else str(bad): _sha(b"extra")}
        if not isinstance(bad, str):
            card["files"] = {"codebook.npy": bad}  # a non-string digest
    else:
        card["id"] = bad
    files = {"model.safetensors": w, "escape.bin": b"evil", "x.bin": b"evil", "extra": b"extra"}
    url = server.publish("m", card, files)
    before = tree(tmp_path)
    with pytest.raises(ModelError, match="not a plain file name|is not valid|not a sha256"):
        resolve_model(url)
    assert tree(tmp_path) == before
    assert not Path("/tmp/brainspineai-abs-escape.bin").exists()
    assert not (isolated_catalogue / "escape.bin").exists() and not (isolated_catalogue.parent / "escape.bin").exists()
    assert [p for p in isolated_catalogue.rglob("*") if p.name != "cache"] == []
    assert server.requests == ["/m/model.json"]  # nothing but the card was even fetched


def test_traversal_through_the_cli_is_one_line(server, image, isolated_catalogue):
    url = server.publish("m", fake_card(b"w", weights="../../../escape.bin"), {})
    r = run_cli("classify", image, "--model", url, "--device", "cpu")
    line = one_error_line(r)
    assert url in line and "not a plain file name" in line
    assert [p for p in isolated_catalogue.rglob("*") if p.name != "cache"] == []


def test_a_card_listing_itself_as_a_file_is_refused(server, isolated_catalogue):
    card = fake_card(b"w", files={"model.json": _sha(b"w")})
    with pytest.raises(ModelError, match="lists itself"):
        resolve_model(server.publish("self", card, {"model.safetensors": b"w"}))
    assert cached(isolated_catalogue) == []


def test_local_folder_with_a_traversing_card_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (tmp_path / "secret").write_bytes(b"secret")
    (folder / "model.json").write_text(json.dumps(fake_card(b"secret", weights="../secret")))
    with pytest.raises(ModelError, match="not a plain file name"):
        load_model(folder, "cpu")


def test_sicf_style_model_downloads_every_listed_file_each_verified(server, isolated_catalogue):
    forest, codebook, mask = b"forest-bytes", b"codebook-bytes", b"mask-bytes"
    files = {"forest.skops": forest, "codebook.npy": codebook, "mask.npy": mask}
    card = fake_card(forest, id="sicf-remote", task="sicf-2d", weights="forest.skops",
                     files={n: _sha(d) for n, d in files.items()})
    folder = resolve_model(server.publish("s", card, files))
    assert sorted(p.name for p in folder.iterdir()) == ["codebook.npy", "forest.skops", "mask.npy", "model.json"]
    assert all(sha256_file(folder / n) == _sha(d) for n, d in files.items())
    assert sorted(server.requests) == sorted(["/s/model.json", "/s/forest.skops", "/s/codebook.npy", "/s/mask.npy"])
    # one listed file that does not match its own digest: nothing is kept
    bad = dict(files, **{"mask.npy": b"tampered"})
    with pytest.raises(ChecksumError, match="mask.npy: checksum mismatch"):
        resolve_model(server.publish("s2", dict(card, id="sicf-remote-2"), bad))
    assert sorted(p.name for p in (isolated_catalogue / "cache").iterdir()) == [folder.name]


def test_hash_mismatch_leaves_nothing(server, image, isolated_catalogue):
    url = server.publish("h", fake_card(b"the real weights"), {"model.safetensors": b"other weights"})
    r = run_cli("classify", image, "--model", url, "--device", "cpu")
    line = one_error_line(r)
    assert "checksum mismatch" in line and f"{url}/model.safetensors" in line and ".download-" not in line
    assert cached(isolated_catalogue) == []


# --------------------------------------------------------------------------------------
# Item 5: caps and deadline


def test_card_larger_than_the_cap_is_refused(server, isolated_catalogue):
    card = fake_card(b"w", padding="x" * (download.MAX_CARD_BYTES + 10))
    with pytest.raises(ModelError, match="more than the 1048576 bytes"):
        resolve_model(server.publish("big", card, {"model.safetensors": b"w"}))
    url = server.publish("big2", card, {"model.safetensors": b"w"})
    server.httpd.routes["/big2/model.json"] = (json.dumps(card).encode(), {"length": False})
    with pytest.raises(ModelError, match="more than the 1048576 bytes"):
        resolve_model(url)
    assert cached(isolated_catalogue) == []


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_weights_larger_than_the_cap_are_stopped_while_streaming(server, monkeypatch, isolated_catalogue, length):
    big = os.urandom(3 << 20)
    monkeypatch.setattr(download, "MAX_FILE_BYTES", 1 << 20)
    url = server.publish("w", fake_card(big), {"model.safetensors": big}, length=length, chunk=1 << 16)
    with pytest.raises(ModelError, match="more than the 1048576 bytes allowed"):
        resolve_model(url)
    assert cached(isolated_catalogue) == []


def test_card_declared_size_caps_the_download(server, image, isolated_catalogue):
    big = os.urandom(1 << 20)
    url = server.publish("d", fake_card(big, sizes={"model.safetensors": 1000}), {"model.safetensors": big},
                         length=False, chunk=4096)
    line = one_error_line(run_cli("classify", image, "--model", url, "--device", "cpu"))
    assert "more than the 1000 bytes allowed" in line
    assert cached(isolated_catalogue) == []


@pytest.mark.slow
def test_overall_deadline_stops_a_trickling_server(server, image, isolated_catalogue):
    w = os.urandom(200_000)
    url = server.publish("slow", fake_card(w), {"model.safetensors": w}, chunk=100, delay=0.05)
    t0 = time.monotonic()
    r = run_cli("classify", image, "--model", url, "--device", "cpu", env={"BRAINSPINEAI_DOWNLOAD_DEADLINE_S": "2"})
    line = one_error_line(r)
    assert "did not finish within 2 s" in line and time.monotonic() - t0 < 60
    assert cached(isolated_catalogue) == []


def test_unreachable_server_and_404_are_one_line(server, image, isolated_catalogue):
    line = one_error_line(run_cli("classify", image, "--model", server.root + "/nothing-here", "--device", "cpu"))
    assert "HTTP 404" in line and server.root in line
    url = server.publish("half", fake_card(b"w"), {})
    line = one_error_line(run_cli("classify", image, "--model", url, "--device", "cpu"))
    assert "HTTP 404" in line and "model.safetensors" in line
    assert cached(isolated_catalogue) == []


def test_truncated_transfer_is_refused(server, isolated_catalogue):
    w = os.urandom(100_000)
    url = server.publish("t", fake_card(w), {"model.safetensors": w[:50_000]}, claim=100_000)
    with pytest.raises(ModelError):
        resolve_model(url)
    assert cached(isolated_catalogue) == []


def test_two_processes_download_the_same_model_at_once(server, isolated_catalogue):
    w = os.urandom(400_000)
    url = server.publish("c", fake_card(w), {"model.safetensors": w}, chunk=20_000, delay=0.05)
    code = "import sys; from brainspineai.catalogue import resolve_model; print(resolve_model(sys.argv[1]))"
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT), BRAINSPINEAI_HOME=str(isolated_catalogue))
    procs = [subprocess.Popen([sys.executable, "-c", code, url], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = {o[0].strip() for o in outs}
    assert len(folders) == 1
    assert server.requests.count("/c/model.safetensors") == 2  # both really downloaded concurrently
    cache = isolated_catalogue / "cache"
    assert [p.name for p in cache.iterdir()] == [Path(folders.pop()).name]
    assert sha256_file(next(cache.iterdir()) / "model.safetensors") == _sha(w)


def test_a_corrupt_cached_copy_is_replaced_and_a_good_one_reused(server, isolated_catalogue):
    w = os.urandom(50_000)
    card = fake_card(w)
    url = server.publish("r", card, {"model.safetensors": w})
    folder = resolve_model(url)
    assert folder.name == f"remote-model-{_sha(json.dumps(card).encode())[:12]}"
    assert resolve_model(url) == folder and server.requests.count("/r/model.safetensors") == 1  # reused
    (folder / "model.safetensors").write_bytes(b"corrupted in the cache")
    assert resolve_model(url) == folder and server.requests.count("/r/model.safetensors") == 2
    assert sha256_file(folder / "model.safetensors") == _sha(w) and cached(isolated_catalogue) == [folder.name]


def _start_slow_classify(server, image, isolated_catalogue, default_bytes):
    card, files = renamed_default(default_bytes)
    url = server.publish("slow", card, files, chunk=1 << 14, delay=0.05)  # about 30 s for the weights
    env = dict(os.environ, PYTHONPATH=str(LIB_PARENT), BRAINSPINEAI_HOME=str(isolated_catalogue))
    proc = subprocess.Popen([sys.executable, "-m", "brainspineai", "classify", str(image), "--model", url,
                             "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    cache, deadline = isolated_catalogue / "cache", time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        partial = list(cache.glob(".download-*/model.safetensors")) if cache.is_dir() else []
        if partial and partial[0].stat().st_size > 100_000:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the download finished or failed before it could be interrupted"
    return proc, url, card


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_killed_download_leaves_nothing_after_the_next_start(server, image, isolated_catalogue, default_bytes, sig):
    proc, url, card = _start_slow_classify(server, image, isolated_catalogue, default_bytes)
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=60)
    assert proc.returncode == -getattr(signal, sig)
    cache = isolated_catalogue / "cache"
    left = sorted(p.name for p in cache.iterdir())
    if sig == "SIGTERM":
        assert left == [], left  # the handler removed the partial download at once
    else:
        assert len(left) == 1 and left[0].startswith(".download-")  # nothing could run: cleaned by the next start
    assert not any((p / "model.json").is_file() and not p.name.startswith(".") for p in cache.iterdir())
    # the next start (served fast now) cleans up and succeeds
    server.publish("slow", card, {"model.safetensors": default_bytes[1]})
    r = run_cli("classify", image, "--model", url, "--device", "cpu", env={"BRAINSPINEAI_HOME": str(isolated_catalogue)})
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in cache.iterdir())
    assert len(names) == 1 and names[0].startswith("remote-default-"), names
    assert sha256_file(cache / names[0] / "model.safetensors") == card["sha256"]


def test_stale_download_of_a_live_process_is_kept(tmp_path):
    mine = tmp_path / f".download-{os.getpid()}-abc"
    mine.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    theirs = tmp_path / f".download-{dead.pid}-xyz"
    theirs.mkdir()
    (theirs / "model.safetensors").write_bytes(b"partial")
    other = tmp_path / "some-model-123456789abc"
    other.mkdir()
    assert download.clean_stale(tmp_path) == [theirs]
    assert mine.is_dir() and other.is_dir() and not theirs.exists()


# --------------------------------------------------------------------------------------
# Item 4: pins, shadowing, card / weights consistency


def test_every_shipped_model_is_pinned_and_matches():
    pins = shipped_pins()
    shipped = {read_card(p)["id"]: p for p in ZOO_DIR.iterdir() if (p / "model.json").is_file()}
    assert set(pins) == set(shipped) and DEFAULT_MODEL_ID in pins
    for mid, folder in shipped.items():
        assert sha256_file(folder / "model.json") == pins[mid]["card"]
        assert sha256_file(folder / read_card(folder)["weights"]) == pins[mid]["weights"]
    assert "zoo/pins.json" in (LIB_PARENT.parent / "pyproject.toml").read_text()


def test_a_modified_shipped_card_is_refused(tmp_path, monkeypatch):
    from brainspineai import catalogue

    zoo = tmp_path / "zoo"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, zoo / DEFAULT_MODEL_ID)
    shutil.copy(ZOO_DIR / "pins.json", zoo / "pins.json")
    monkeypatch.setattr(catalogue, "ZOO_DIR", zoo.resolve())
    monkeypatch.setattr(catalogue, "PINS_FILE", zoo / "pins.json")
    assert load_model(None, "cpu").class_names[0] == "glioma"
    card_path = zoo / DEFAULT_MODEL_ID / "model.json"
    card = json.loads(card_path.read_text())
    card["class_names"] = ["meningioma", "glioma", "notumor", "pituitary"]  # swapped: every answer would change
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    with pytest.raises(ChecksumError, match="differs from it"):
        load_model(None, "cpu")


@pytest.mark.parametrize("where", ["user", "model-path"])
def test_a_user_model_never_shadows_a_shipped_id(tmp_path, monkeypatch, isolated_catalogue, caplog, where):
    root = isolated_catalogue / "models" if where == "user" else tmp_path / "path"
    if where == "model-path":
        monkeypatch.setenv("BRAINSPINEAI_MODEL_PATH", str(root))
    fake = root / DEFAULT_MODEL_ID
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, fake)
    card = json.loads((fake / "model.json").read_text())
    card["class_names"] = ["pituitary", "notumor", "meningioma", "glioma"]
    (fake / "model.json").write_text(json.dumps(card))
    renamed = root / "innocent-name"
    shutil.copytree(fake, renamed)
    with caplog.at_level(logging.WARNING, logger="brainspineai"):
        assert resolve_model(DEFAULT_MODEL_ID) == ZOO_DIR / DEFAULT_MODEL_ID
        assert resolve_model(None) == ZOO_DIR / DEFAULT_MODEL_ID
    assert "shadowed" in caplog.text and str(fake) in caplog.text
    listed = {c["id"]: c["path"] for c in list_models()}
    assert listed[DEFAULT_MODEL_ID] == str(ZOO_DIR / DEFAULT_MODEL_ID)
    assert {s["path"] for s in shadowed_models()} == {str(fake), str(renamed)}
    with pytest.raises(ModelError):  # its folder name is no way around it
        load_model("innocent-name", "cpu")
    with pytest.raises(ChecksumError, match="differs from it"):  # nor its path
        load_model(fake, "cpu")
    r = run_cli("models", env={"BRAINSPINEAI_HOME": str(isolated_catalogue),
                               "BRAINSPINEAI_MODEL_PATH": os.environ.get("BRAINSPINEAI_MODEL_PATH", "")})
    assert r.returncode == 0 and "shadowed" in r.stdout and str(fake) in r.stdout


def test_a_remote_card_forging_a_shipped_id_is_refused(server, default_bytes, isolated_catalogue):
    card, files = renamed_default(default_bytes, new_id=DEFAULT_MODEL_ID, class_names=["b", "a", "c", "d"])
    with pytest.raises(ChecksumError, match="shipped model"):
        resolve_model(server.publish("forged", card, files))
    same = resolve_model(server.publish("same", None, files, card_bytes=default_bytes[0]))
    assert read_card(same)["id"] == DEFAULT_MODEL_ID  # the true shipped card is fine from anywhere


@pytest.mark.parametrize("change, message", [
    ({"class_names": ["glioma", "meningioma", "pituitary"]}, "lists 3 classes but the weights' final layer has 4"),
    ({"class_names": ["a", "b", "c", "d", "e"]}, "lists 5 classes but the weights' final layer has 4"),
    ({"in_channels": 3}, "3 input channel.* first convolution takes 1"),
    ({"architecture": "resnet10-w32"}, "weights do not fit"),
])
def test_cards_inconsistent_with_their_weights_are_refused(tmp_path, image, change, message):
    folder = tmp_path / "m"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, folder)
    card = json.loads((folder / "model.json").read_text())
    card.update(id="local-copy", **change)
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match=message):
        load_model(folder, "cpu")
    line = one_error_line(run_cli("classify", image, "--model", folder, "--device", "cpu"))
    assert "local-copy" in line


@pytest.mark.parametrize("change", [
    {"class_names": "glioma"}, {"class_names": []}, {"class_names": ["a", "a"]}, {"class_names": [1, 2]},
    {"input_size": [0, 0]}, {"input_size": "128"}, {"input_size": [True, 2]}, {"in_channels": "1"},
    {"sha256": "not-hex"}, {"sha256": 5}, {"task": ["x"]}, {"files": ["a"]}, {"sizes": {"model.safetensors": -1}},
    {"id": "a b"}, {"id": "a/b"},
])
def test_cards_with_odd_types_are_refused(tmp_path, change):
    folder = tmp_path / "m"
    folder.mkdir()
    card = json.loads((ZOO_DIR / DEFAULT_MODEL_ID / "model.json").read_text())
    card.update({"id": "odd", **change})
    (folder / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="model.json: "):
        read_card(folder)


def test_a_card_with_odd_types_is_one_line_in_the_cli(tmp_path, image):
    folder = tmp_path / "m"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, folder)
    card = json.loads((folder / "model.json").read_text())
    card.update(id="odd", input_size="128", class_names={"a": 1})
    (folder / "model.json").write_text(json.dumps(card))
    line = one_error_line(run_cli("classify", image, "--model", folder, "--device", "cpu"))
    assert "class_names" in line and "input_size" in line and str(folder) in line


# --------------------------------------------------------------------------------------
# Item 6: --out never replaces what is not a model folder


def _dataset(tmp_path) -> Path:
    data = tmp_path / "dataset"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        (data / c / "x.png").write_bytes(b"\x89PNG not really")
    return data


def _model_folder(tmp_path) -> Path:
    folder = tmp_path / "existing-model"
    shutil.copytree(ZOO_DIR / DEFAULT_MODEL_ID, folder)
    card = json.loads((folder / "model.json").read_text())
    card["id"] = "existing-model"
    (folder / "model.json").write_text(json.dumps(card))
    return folder


TRAIN_COMMANDS = [["train", "classifier"], ["train", "affcl"], ["train", "simclr"], ["train", "finetune"],
                  ["train", "sicf"], ["train", "segmenter"]]
TARGETS = ["dataset", "file", "model", "model+overwrite-symlink", "home-like"]
# every target with one command, and the most dangerous one (a dataset) with every command
OUT_CASES = [(TRAIN_COMMANDS[0], t) for t in TARGETS] + [(c, "dataset") for c in TRAIN_COMMANDS[1:]]


@pytest.mark.parametrize("command, target", OUT_CASES, ids=lambda v: v[1] if isinstance(v, list) else v)
def test_train_out_refusals_leave_the_target_untouched(tmp_path, command, target):
    data = tmp_path / "missing-data"  # the --out check comes first, before the data are read
    if target == "dataset":
        out = _dataset(tmp_path)
    elif target == "file":
        out = tmp_path / "notes.txt"
        out.write_text("precious")
    elif target == "model":
        out = _model_folder(tmp_path)
    elif target == "home-like":
        out = tmp_path / "home"
        (out / ".config").mkdir(parents=True)
        (out / "model.json").write_text(json.dumps({"id": "x", "task": "y"}))  # not our card
    else:
        real = _model_folder(tmp_path)
        out = tmp_path / "link"
        out.symlink_to(real, target_is_directory=True)
    before = tree(tmp_path)
    extra = ["--overwrite"] if target == "model+overwrite-symlink" else []
    r = run_cli(*command, "--data", data, "--out", out, *extra)
    line = one_error_line(r)
    assert "--out" in line and str(out) in line
    expected = {"dataset": "not a model folder", "file": "is a file", "model": "pass --overwrite",
                "home-like": "not a model folder", "model+overwrite-symlink": "symbolic link"}[target]
    assert expected in line
    assert tree(tmp_path) == before


@pytest.mark.parametrize("name, args, message", [
    ("m", ["--model-id", "a/b"], "--model-id 'a/b'"),
    ("m", ["--model-id", DEFAULT_MODEL_ID], "id of a shipped model"),
    ("my model", [], "folder name"),
])
def test_train_refuses_bad_or_shipped_model_ids(tmp_path, name, args, message):
    line = one_error_line(run_cli("train", "classifier", "--data", tmp_path / "d", "--out", tmp_path / name, *args))
    assert message in line and not (tmp_path / name).exists()


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    line = one_error_line(run_cli("train", "classifier", "--data", tmp_path / "d", "--out", tmp_path / "f" / "m"))
    assert "is not a folder" in line and (tmp_path / "f").read_text() == "x"


def test_overwrite_replaces_only_a_model_folder(tmp_path):
    from conftest import KAGGLE, need

    src = need(KAGGLE)
    data = tmp_path / "tiny"
    for c in ("glioma", "notumor"):
        (data / c).mkdir(parents=True)
        for p in sorted((src / c).iterdir())[:8]:
            shutil.copy(p, data / c / p.name)
    out = _model_folder(tmp_path)
    r = run_cli("train", "classifier", "--data", data, "--out", out, "--overwrite", "--epochs", "1", "--image-size",
                "32", "--batch-size", "8", "--architecture", "resnet10-w32", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    card = read_card(out)
    assert card["id"] == "existing-model" and card["class_names"] == ["glioma", "notumor"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tiny", "existing-model", "existing-model.work"]) or \
        sorted(p.name for p in tmp_path.iterdir()) == sorted(["tiny", "existing-model"])


def test_library_write_refuses_a_non_model_folder(tmp_path, kaggle_model):
    data = _dataset(tmp_path)
    before = tree(tmp_path)
    card = {k: v for k, v in kaggle_model.card.items() if k not in ("sha256", "created")}
    with pytest.raises(InputError, match="not a model folder"):
        save_model(kaggle_model.network, dict(card, id="x"), data)
    with pytest.raises(InputError, match="pass --overwrite"):
        check_out_dir(_model_folder(tmp_path))
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("existing-model")} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_out_dir(empty) == empty and check_out_dir(tmp_path / "new") == tmp_path / "new"
