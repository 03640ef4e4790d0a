"""#14: your own image folders through train and eval, in each layout, meaning what users mean."""

import json
import os
import shutil

import pytest
from conftest import run_cnn
from fixtures import write_image_folder

COLOURS = ("red", "green", "blue")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny folder (3 classes x 12 images of clearly different colours) trained with no flags at all."""
    root = tmp_path_factory.mktemp("folders")
    flat = write_image_folder(str(root / "flat"), classes=COLOURS, per_class=12, size=(32, 32))
    p = run_cnn("train", "smallcnn", "--data", f"folder:{flat}", "--project", root / "runs", "--json", check=0)
    return {
        "root": root,
        "flat": flat,
        "result": json.loads(p.stdout),
        "log": p.stderr,
        "best": str(root / "runs" / "train" / "best.pt"),
    }


def _eval(*args):
    p = run_cnn("eval", *map(str, args), "--json", "--device", "cpu", check=0)
    return json.loads(p.stdout), p.stderr


def test_a_tiny_folder_trains_well_with_no_flags(trained):
    res, log = trained["result"], trained["log"]
    assert res["best_accuracy"] >= 0.9
    assert "batch 4" in log and "3x32x32" in log  # the batch shrank to small data; the image size is said
    assert res["test_accuracy"] is None  # no test/ folder: no test figure (the val split chose best.pt)


def test_a_folder_of_classes_is_evaluated_whole(trained):
    res, log = _eval(trained["best"], "--data", f"folder:{trained['flat']}")
    assert res["samples"] == 36 and res["split"] == "all" and "evaluated whole" in log
    res, _ = _eval(trained["best"], "--data", f"folder:{trained['flat']}", "--split", "val")
    assert res["samples"] == 7  # the seeded 20% that chose best.pt, when asked for


def test_split_folders_give_test_then_val(trained, tmp_path):
    root = tmp_path / "split"
    write_image_folder(str(root), classes=COLOURS, per_class=4, size=(32, 32), with_val=True)  # train/ and val/
    res, log = _eval(trained["best"], "--data", f"folder:{root}")
    assert res["split"] == "val" and res["samples"] == 12 and "no test/ folder" in log
    shutil.copytree(root / "val", root / "test")
    for f in os.listdir(root / "test" / "red")[:2]:
        os.remove(root / "test" / "red" / f)
    res, _ = _eval(trained["best"], "--data", f"folder:{root}")
    assert res["split"] == "test" and res["samples"] == 10


def test_a_folder_with_test_only_is_evaluated_and_not_trained_on(trained, tmp_path):
    root = tmp_path / "only"
    write_image_folder(str(root / "test"), classes=COLOURS, per_class=3, size=(32, 32))
    res, _ = _eval(trained["best"], "--data", f"folder:{root}")
    assert res["samples"] == 9 and sorted(res["per_class"]) == sorted(COLOURS)  # not one class named "test"
    p = run_cnn("train", "smallcnn", "--data", f"folder:{root}", "--project", tmp_path / "runs")
    assert p.returncode == 2 and "no train/ folder" in p.stderr and not (tmp_path / "runs").exists()


def test_a_subset_of_the_classes_is_matched_by_name(trained, tmp_path):
    root = tmp_path / "subset"
    write_image_folder(str(root), classes=COLOURS, per_class=5, size=(32, 32))
    shutil.rmtree(root / "red")  # green and blue only: positions 0, 1 here, 1, 2 in the model
    res, _ = _eval(trained["best"], "--data", f"folder:{root}")
    assert res["samples"] == 10 and res["accuracy"] >= 0.9
    assert res["per_class"]["red"] is None and res["per_class"]["green"] is not None  # red: no images to score


def test_a_class_the_model_does_not_know_is_refused(trained, tmp_path):
    root = tmp_path / "other"
    write_image_folder(str(root), classes=("green", "purple"), per_class=2, size=(32, 32))
    p = run_cnn("eval", trained["best"], "--data", f"folder:{root}")
    assert p.returncode == 2 and "'purple'" in p.stderr and p.stdout == ""


def test_home_and_variables_expand_in_folder_paths(trained):
    p = run_cnn(
        "eval", trained["best"], "--data", "folder:~/flat", "--json", env={"HOME": str(trained["root"])}, check=0
    )
    assert json.loads(p.stdout)["samples"] == 36
    p = run_cnn(
        "eval", trained["best"], "--data", "folder:$PICS/flat", "--json", env={"PICS": str(trained["root"])}, check=0
    )
    assert json.loads(p.stdout)["samples"] == 36


def test_the_table_says_when_there_is_no_test_split(tmp_path):
    flat = write_image_folder(str(tmp_path / "f"), classes=COLOURS, per_class=4, size=(16, 16))
    p = run_cnn(
        "train", "smallcnn", "--data", f"folder:{flat}", "--epochs", "1", "--project", tmp_path / "runs", check=0
    )
    assert "no test split: the folder has no test/, and val chose best.pt" in p.stdout


def _train_one_step(model, folder, tmp_path, *extra):
    p = run_cnn(
        "train",
        model,
        "--data",
        f"folder:{folder}",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--project",
        tmp_path / "runs",
        "--json",
        *extra,
    )
    assert p.returncode == 0, p.stderr
    from cnncli.checkpoint import Checkpoint

    return list(Checkpoint.load(json.loads(p.stdout)["best_checkpoint"]).preprocess.input_size), p.stderr


def test_the_image_size_is_the_folders_median_not_its_first_image(tmp_path):
    from PIL import Image

    folder = write_image_folder(str(tmp_path / "imgs"), per_class=6, size=(40, 48))
    # the file listed first is an odd one out
    first = sorted(os.listdir(os.path.join(folder, "cats")))[0]
    Image.new("RGB", (10, 12), (200, 0, 0)).save(os.path.join(folder, "cats", first))
    size, _ = _train_one_step("smallcnn", folder, tmp_path)
    assert size == [3, 40, 48]


def test_camera_sized_photos_train_at_a_capped_size_with_their_aspect(tmp_path):
    from PIL import Image

    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        os.makedirs(tmp_path / "photos" / cls)
        for i in range(4):  # 1200x900 landscape JPEGs
            Image.new("RGB", (1200, 900), colour).save(tmp_path / "photos" / cls / f"{i}.jpg", quality=50)
    size, err = _train_one_step("smallcnn", tmp_path / "photos", tmp_path)  # capped at 224: a 32x32 design is smaller
    assert size == [3, 168, 224]
    assert "median size 900x1200, its longer side capped at 224" in err
    given, _ = _train_one_step("smallcnn", tmp_path / "photos", tmp_path, "--img-size", "96")
    assert given == [3, 96, 96]


def test_an_exif_turned_photo_counts_upright(tmp_path):
    from PIL import Image

    from cnncli.data.images import upright_size

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 1200 wide, shown 1200 tall
    Image.new("RGB", (1200, 900)).save(tmp_path / "p.jpg", exif=exif.tobytes())
    assert upright_size(str(tmp_path / "p.jpg")) == (1200, 900)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert upright_size(str(tmp_path / "bad.jpg")) is None
