"""`cnn train --pretrained` / `--weights NAME`: published weights fetched through torch.hub's own download and cache,
from a real HTTP server on 127.0.0.1 standing in for download.pytorch.org (through CNN_WEIGHTS_MIRROR). The file it
serves is a real torchvision resnet18 state dict; its SHA-256 is not the published one, so the happy path patches
the expected hash in-process, and without the patch the published-hash check refuses it."""

import hashlib
import http.server
import os
import threading

import pytest
import torch
import torchvision
from conftest import run_cnn
from fixtures import write_image_folder

import cnncli.models.published as published

FILE = "resnet18-f37072fd.pth"  # torchvision's published name for ResNet18_Weights.IMAGENET1K_V1
IMAGENET_MEAN = [0.485, 0.456, 0.406]


class _Server:
    def __init__(self, root):
        self.requests = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *a):
                outer.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mirror")
    (root / "models").mkdir()
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, root / "models" / FILE)
    s = _Server(root)
    s.state = state
    s.sha256 = hashlib.sha256((root / "models" / FILE).read_bytes()).hexdigest()
    yield s
    s.httpd.shutdown()


@pytest.fixture(scope="module")
def pets(tmp_path_factory):
    return write_image_folder(str(tmp_path_factory.mktemp("pets")), per_class=8)


def _env(tmp_path, mirror):
    return {"TORCH_HOME": str(tmp_path / "torch"), "CNN_WEIGHTS_MIRROR": mirror}


def _train(tmp_path, pets, *extra, env):
    args = ("train", "resnet18", "--data", f"folder:{pets}", "--epochs", "1", "--precision", "32")
    return run_cnn(*args, "--img-size", "64x64", "--project", tmp_path / "runs", *extra, env=env)


def _cached(tmp_path):
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def test_pretrained_downloads_into_torch_hubs_cache_and_freezing_keeps_its_tensors(tmp_path, pets, server, monkeypatch):
    monkeypatch.setattr(published, "expected_hash", lambda url: server.sha256[:8])
    env = _env(tmp_path, server.url)
    r = _train(tmp_path, pets, "--pretrained", "--freeze", "backbone", env=env)
    assert r.returncode == 0, r.stderr
    assert f"/models/{FILE}" in server.requests[-1]
    assert _cached(tmp_path) == [FILE]  # torch.hub's own place, the name torchvision itself reads
    assert "ResNet18_Weights.IMAGENET1K_V1" in r.stderr and "loaded 120 tensors" in r.stderr
    best = torch.load(tmp_path / "runs" / "train" / "best.pt", weights_only=False)
    for k, v in server.state.items():  # the frozen backbone (BatchNorm statistics included) is the published one
        if not k.startswith("fc."):
            assert torch.equal(best["state_dict"][k], v), k
    assert best["state_dict"]["fc.weight"].shape == (2, 512)  # the head re-made for the folder's classes
    assert best["normalization"]["mean"] == IMAGENET_MEAN  # eval, predict and export read it from here
    rec = best["pretrained"]
    assert rec["name"] == "ResNet18_Weights.IMAGENET1K_V1" and (rec["crop_size"], rec["resize_size"]) == (224, 256)
    assert rec["url"] == "https://download.pytorch.org/models/" + FILE and rec["interpolation"] == "bilinear"

    # the second run takes the cached file (its hash checked again) without asking the server
    asked = len(server.requests)
    again = _train(tmp_path, pets, "--weights", "IMAGENET1K_V1", "--name", "again", env=env)
    assert again.returncode == 0, again.stderr
    assert len(server.requests) == asked
    # a resumed run goes on from last.pt: nothing is fetched, offline is fine, the record and mean/std stay
    offline = {**env, "CNN_WEIGHTS_MIRROR": "http://127.0.0.1:9", "TORCH_HOME": str(tmp_path / "empty")}
    more = run_cnn("train", "--resume", tmp_path / "runs" / "again", "--epochs", "2", env=offline)
    assert more.returncode == 0, more.stderr
    resumed = torch.load(tmp_path / "runs" / "again" / "best.pt", weights_only=False)
    assert resumed["pretrained"] == rec and resumed["normalization"]["mean"] == IMAGENET_MEAN
    ev = run_cnn("eval", tmp_path / "runs" / "again" / "best.pt", "--data", f"folder:{pets}", "--json")
    assert ev.returncode == 0, ev.stderr


def test_a_file_that_does_not_match_the_published_hash_is_refused_and_not_kept(tmp_path, pets, server):
    r = _train(tmp_path, pets, "--pretrained", env=_env(tmp_path, server.url))
    assert r.returncode == 2
    assert r.stderr.count("error:") == 1 and "does not match the published hash" in r.stderr and "f37072fd" in r.stderr
    assert _cached(tmp_path) == []  # no file, no .partial
    assert not (tmp_path / "runs").exists()


def test_a_wrong_file_put_in_the_cache_by_hand_is_named_and_left_alone(tmp_path, pets, server):
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    (folder / FILE).write_bytes(b"not the weights")
    r = _train(tmp_path, pets, "--pretrained", env=_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode == 2 and str(folder / FILE) in r.stderr and "published hash" in r.stderr
    assert (folder / FILE).read_bytes() == b"not the weights"


def test_offline_names_the_url_and_the_cache_path_where_the_file_can_be_put(tmp_path, pets, server, monkeypatch):
    monkeypatch.setattr(published, "expected_hash", lambda url: server.sha256[:8])
    r = _train(tmp_path, pets, "--pretrained", env=_env(tmp_path, "http://127.0.0.1:9"))
    assert r.returncode == 2 and r.stderr.count("error:") == 1
    path = tmp_path / "torch" / "hub" / "checkpoints" / FILE
    assert f"http://127.0.0.1:9/models/{FILE}" in r.stderr and str(path) in r.stderr
    assert not (tmp_path / "runs").exists() and _cached(tmp_path) == []
    # the file put there by hand is what the next run uses, still offline
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(server.state, path)
    monkeypatch.setattr(published, "expected_hash", lambda url: hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    ok = _train(tmp_path, pets, "--pretrained", env=_env(tmp_path, "http://127.0.0.1:9"))
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "model,args,needle",
    [
        ("resnet18", ["--weights", "NOPE"], "published for it: DEFAULT, IMAGENET1K_V1"),
        ("resnet18", ["--weights", "ResNet50_Weights.IMAGENET1K_V1"], "no published weights named"),
        ("lenet", ["--pretrained"], "has no published weights"),
        ("resnet18", ["--pretrained", "--weights", "DEFAULT"], "give one of them"),
        ("timm:resnet18", ["--weights", "zz_in1k"], "published tags for resnet18: DEFAULT, a1_in1k"),
    ],
)
def test_weights_that_are_not_published_exit_2_before_anything_is_fetched(tmp_path, pets, server, model, args, needle):
    asked = len(server.requests)
    r = run_cnn("train", model, "--data", f"folder:{pets}", *args, env=_env(tmp_path, server.url))
    assert r.returncode == 2 and needle in r.stderr and r.stderr.count("error:") == 1, r.stderr
    assert len(server.requests) == asked and _cached(tmp_path) == []


def test_timm_weights_offline_exit_2_naming_the_hugging_face_cache(tmp_path, pets, monkeypatch):
    from huggingface_hub import constants  # HF_HOME and HF_HUB_OFFLINE are read once, when it is imported

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    r = run_cnn("train", "timm:resnet18", "--pretrained", "--data", f"folder:{pets}", "--project", tmp_path / "runs")
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert (
        "resnet18.a1_in1k" in r.stderr and str(tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k") in r.stderr
    )
    assert not (tmp_path / "runs").exists()


def test_a_mirror_that_is_not_a_url_exits_2(tmp_path, pets):
    r = _train(tmp_path, pets, "--pretrained", env=_env(tmp_path, "ftp://somewhere"))
    assert r.returncode == 2 and "CNN_WEIGHTS_MIRROR" in r.stderr
