"""`cnn eval`'s reported metrics: macro precision/recall/F1, balanced accuracy and per-class figures equal to
scikit-learn's on the same predictions; `--gallery` lists exactly the images `cnn predict` gets wrong."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, run_cnn
from fixtures import write_image_folder


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_class_report_is_scikit_learns(seed):
    from sklearn.metrics import balanced_accuracy_score, classification_report

    from cnncli.engine.evaluate import metrics_from_logits

    rng = np.random.default_rng(seed)
    k, n = 7, 60
    labels = rng.integers(0, k - 2, n)  # classes 5 and 6 have no images; 6 is never predicted either
    logits = torch.tensor(rng.normal(size=(n, k)), dtype=torch.float32)
    logits[:, 6] -= 100
    logits[np.arange(n // 2), labels[: n // 2]] += 3  # half are right, to be realistic
    res = metrics_from_logits(logits, torch.tensor(labels), [f"c{i}" for i in range(k)], 1.0)
    pred = logits.argmax(1).numpy()
    names = sorted(set(labels) | set(pred))
    ref = classification_report(labels, pred, output_dict=True, zero_division=0)
    assert set(res.per_class_metrics) == {f"c{i}" for i in names}
    for i in names:
        got, want = res.per_class_metrics[f"c{i}"], ref[str(i)]
        for key in ("precision", "recall", "f1-score"):
            assert got["f1" if key == "f1-score" else key] == pytest.approx(want[key], abs=1e-12)
        assert got["support"] == want["support"]
    macro = ref["macro avg"]
    assert (res.precision, res.recall, res.f1) == pytest.approx(
        (macro["precision"], macro["recall"], macro["f1-score"]), abs=1e-12
    )
    assert res.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, pred), abs=1e-12)
    assert res.accuracy == pytest.approx(ref["accuracy"])


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    data = write_image_folder(str(root / "photos"), classes=("c0", "c1", "c2"), per_class=6, size=(36, 30))
    return data, make_checkpoint(root / "m.pt", "smallcnn", num_classes=4)


def test_gallery_lists_what_predict_gets_wrong(folder_and_model, tmp_path):
    data, ck = folder_and_model
    out = tmp_path / "mistakes"
    p = run_cnn("eval", ck, "--data", f"folder:{data}", "--gallery", out, "--json", check=0)
    res = json.loads(p.stdout)
    for key in ("precision", "recall", "f1", "balanced_accuracy", "per_class_metrics"):
        assert key in res
    pred = json.loads(run_cnn("predict", ck, data, "--json", check=0).stdout)["predictions"]
    wrong = {
        p["image"]: p["topk"][0] for p in pred if p["topk"][0]["class"] != os.path.basename(os.path.dirname(p["image"]))
    }
    with open(out / "misclassified.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["image"] for r in rows} == set(wrong)  # eval and predict agree image by image
    for r in rows:
        assert r["predicted"] == wrong[r["image"]]["class"]
        assert float(r["confidence"]) == pytest.approx(wrong[r["image"]]["prob"], abs=1e-3)
        assert r["true"] == os.path.basename(os.path.dirname(r["image"]))
    confs = [float(r["confidence"]) for r in rows]
    assert confs == sorted(confs, reverse=True)  # the most confident mistakes first
    assert res["samples"] - round(res["accuracy"] * res["samples"]) == len(rows)
    from PIL import Image

    assert Image.open(out / "misclassified.png").size[0] > 100
    # the table on the terminal
    text = run_cnn("eval", ck, "--data", f"folder:{data}", check=0).stdout
    assert "macro precision" in text and "support" in text


def test_gallery_never_replaces_files(folder_and_model, tmp_path):
    data, ck = folder_and_model
    out = tmp_path / "g"
    out.mkdir()
    (out / "misclassified.csv").write_text("mine")
    p = run_cnn("eval", ck, "--data", f"folder:{data}", "--gallery", out)
    assert p.returncode == 2 and p.stderr.startswith("error:") and "exists" in p.stderr
    assert (out / "misclassified.csv").read_text() == "mine"
    (tmp_path / "afile").write_text("x")
    p = run_cnn("eval", ck, "--data", f"folder:{data}", "--gallery", tmp_path / "afile")
    assert p.returncode == 2 and "not a folder" in p.stderr
    run_cnn("eval", ck, "--data", f"folder:{data}", "--gallery", out, "--force", check=0)
    assert (out / "misclassified.csv").read_text() != "mine"
