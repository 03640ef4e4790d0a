"""int8 and fp16 ONNX files (`cnn export --int8/--fp16`) and `cnn benchmark`: real quantized files in real ONNX
Runtime sessions, scored on real held-out images."""

import json
import os

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cnn

from cnncli.checkpoint import Checkpoint


@pytest.fixture(scope="module")
def int8_export(digits_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "d-int8.onnx"
    p = run_cnn("export", digits_run["best_checkpoint"], "--onnx", "--int8", "--data", "digits", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def _params(run):
    return sum(v.numel() for v in Checkpoint.load(run["best_checkpoint"]).state_dict.values())


def _eval(path, data="digits"):
    return json.loads(run_cnn("eval", path, "--data", data, "--json", check=0).stdout)


def test_int8_file_is_quantized_smaller_and_scored_as_cnn_eval_scores_it(int8_export, digits_run, tmp_path):
    res = int8_export
    fp32 = json.loads(
        run_cnn("export", digits_run["best_checkpoint"], "--onnx", "-o", tmp_path / "d.onnx", "--json", check=0).stdout
    )
    # the gate's figures are what cnn eval says of each file
    assert res["accuracy_int8"] == _eval(res["path"])["accuracy"]
    assert res["accuracy_fp32"] == _eval(fp32["path"])["accuracy"]
    assert res["accuracy_fp32"] > 0.8  # a model that is actually good
    assert res["accuracy_fp32"] - res["accuracy_int8"] <= 0.01
    assert res["calibration_images"] == 256 and res["precision"] == "int8"
    # really int8: quantize/dequantize nodes around int8 weights
    m = onnx.load(res["path"])
    ops = {n.op_type for n in m.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8_weights = [t for t in m.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sum(int(np.prod(t.dims)) for t in int8_weights) > 0.9 * _params(digits_run)
    assert res["size_bytes"] < fp32["size_bytes"] / 2.5
    # the metadata says how it was made and what it scored; preprocessing is carried over
    meta = res["metadata"]
    assert meta["precision"] == "int8" and meta["quantization"]["calibration_images"] == 256
    assert meta["quantization"]["accuracy_int8"] == res["accuracy_int8"]
    assert meta["mean"] == fp32["metadata"]["mean"] and meta["classes"] == fp32["metadata"]["classes"]
    # cnn summary says what it is and counts the weights, not the scales
    s = json.loads(run_cnn("summary", res["path"], "--json", check=0).stdout)
    s32 = json.loads(run_cnn("summary", fp32["path"], "--json", check=0).stdout)
    assert s["precision"] == "int8" and s32["precision"] == "fp32"
    assert s["params"] == s32["params"]
    text = run_cnn("summary", res["path"], check=0).stdout
    assert "int8" in text and "calibrated (MinMax) on 256 digits training images" in text


def _with_an_outlier_channel(src, dst, scale=1e4):
    """The same function in fp32 (conv1's channel 0 scaled up, conv2's weights reading it scaled down: ReLU and max
    pooling commute with a positive scale), with one activation channel 10,000x the others: per-tensor int8
    activations lose the rest. Real models have such outlier channels."""
    ck = Checkpoint.load(src)
    sd = dict(ck.state_dict)
    sd["features.0.weight"] = sd["features.0.weight"].clone()
    sd["features.0.bias"] = sd["features.0.bias"].clone()
    sd["features.3.weight"] = sd["features.3.weight"].clone()
    sd["features.0.weight"][0] *= scale
    sd["features.0.bias"][0] *= scale
    sd["features.3.weight"][:, 0] /= scale
    ck.state_dict = sd
    ck.save(str(dst))
    return str(dst)


def test_an_int8_file_that_loses_accuracy_is_refused_and_not_written(digits_run, tmp_path):
    ck = _with_an_outlier_channel(digits_run["best_checkpoint"], tmp_path / "outlier.pt")
    # the fp32 model is unchanged...
    fp32 = _eval(ck)
    assert abs(fp32["accuracy"] - _eval(digits_run["best_checkpoint"])["accuracy"]) <= 1 / 360
    # ...and its int8 file is refused
    p = run_cnn("export", ck, "--onnx", "--int8", "--data", "digits", "-o", tmp_path / "q.onnx")
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the int8 file loses") and "--max-drop 0.01" in last and "no file was written" in last
    assert sorted(os.listdir(tmp_path)) == ["outlier.pt"]  # no file, no temp file
    # a drop the user accepts is theirs to accept
    ok = run_cnn(
        "export", ck, "--onnx", "--int8", "--data", "digits", "-o", tmp_path / "q.onnx", "--max-drop", "1", "--json"
    )
    assert ok.returncode == 0, ok.stderr
    res = json.loads(ok.stdout)
    assert res["accuracy_fp32"] - res["accuracy_int8"] > 0.01


def test_fp16_file_keeps_float32_io_and_close_logits(digits_run, tmp_path):
    p = run_cnn("export", digits_run["best_checkpoint"], "--onnx", "--fp16", "--json", "-o", tmp_path / "h.onnx")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert 0 < res["max_rel_diff"] <= 0.01 and res["precision"] == "fp16"
    assert "accuracy_fp32" not in res  # not measured without --data: not claimed
    m = onnx.load(res["path"])
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert m.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = sum(int(np.prod(t.dims)) for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert halves >= _params(digits_run)
    assert json.loads(run_cnn("summary", res["path"], "--json", check=0).stdout)["precision"] == "fp16"
    ev = _eval(res["path"])
    assert abs(ev["accuracy"] - _eval(digits_run["best_checkpoint"])["accuracy"]) <= 2 / 360
    # with --data it is scored too
    scored = run_cnn(
        "export",
        digits_run["best_checkpoint"],
        "--onnx",
        "--fp16",
        "--data",
        "digits",
        "--json",
        "-o",
        tmp_path / "h2.onnx",
    )
    assert json.loads(scored.stdout)["accuracy_fp16"] == ev["accuracy"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--int8"], "--int8 needs --data DATASET"),
        (["--int8", "--data", "digits", "--max-drop", "-0.1"], "--max-drop must be between 0 and 1"),
        (["--int8", "--data", "digits", "--max-drop", "nan"], "--max-drop must be between 0 and 1"),
        (["--int8", "--data", "digits", "--calib-images", "0"], "--calib-images must be at least 1"),
        (["--int8", "--fp16", "--data", "digits"], "--int8 and --fp16 disagree"),
        (["--data", "digits"], "--data is for --int8 and --fp16"),
        (["--int8", "--data", "nosuchset"], "nosuchset"),
        (["--int8", "--data", "cifar10", "--data-dir", "{tmp}/nothing"], "cifar10"),
        (["--int8", "--data", "lines"], "classes the model does not know"),
        (["--fp16", "--data", "lines"], "classes the model does not know"),
    ],
)
def test_bad_int8_options_are_exit_2_and_write_nothing(digits_run, tmp_path, extra, needle):
    (tmp_path / "nothing").mkdir()  # a --data-dir without the dataset in it
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    p = run_cnn("export", digits_run["best_checkpoint"], "--onnx", *extra, "-o", tmp_path / "x.onnx")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1] and "Traceback" not in p.stderr
    assert os.listdir(tmp_path) == ["nothing"]


def test_int8_is_for_onnx_only(digits_run, tmp_path):
    p = run_cnn(
        "export",
        digits_run["best_checkpoint"],
        "--format",
        "pt2",
        "--int8",
        "--data",
        "digits",
        "-o",
        tmp_path / "x.pt2",
    )
    assert p.returncode == 2 and "--int8 is for ONNX files" in p.stderr
    assert os.listdir(tmp_path) == []


def test_a_channel_mismatch_is_found_before_anything_is_written(lines_run, tmp_path):
    """linenet takes 1-channel images: cifar-like 3-channel calibration data does not fit."""
    from fixtures import write_image_folder

    folder = write_image_folder(str(tmp_path / "imgs"), per_class=4)
    p = run_cnn(
        "export",
        lines_run["best_checkpoint"],
        "--onnx",
        "--int8",
        "--data",
        f"folder:{folder}",
        "-o",
        tmp_path / "x.onnx",
    )
    assert p.returncode == 2 and "channel" in p.stderr.strip().splitlines()[-1], p.stderr
    assert not (tmp_path / "x.onnx").exists()


# ------------------------------------------------------------------------------------------------ cnn benchmark


def test_benchmark_rows_agree_with_cnn_eval_and_are_real_timings(digits_run, int8_export, tmp_path):
    formats = "torch,onnx,onnx-int8,onnx-fp16,openvino,onnx-cuda"
    p = run_cnn(
        "benchmark",
        digits_run["best_checkpoint"],
        "--data",
        "digits",
        "--formats",
        formats,
        "--batch-sizes",
        "1,4",
        "--seconds",
        "0.05",
        "--keep",
        tmp_path / "made",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)["rows"]
    assert [(r["format"], r["batch_size"]) for r in rows] == [(f, b) for f in formats.split(",") for b in (1, 4)]
    by = {(r["format"], r["batch_size"]): r for r in rows}
    made = tmp_path / "made"
    assert sorted(os.listdir(made)) == ["model-fp16.onnx", "model-int8.onnx", "model.onnx"]
    # every format's accuracy is cnn eval's on the file it ran
    assert by[("onnx", 1)]["accuracy"] == _eval(made / "model.onnx")["accuracy"]
    assert (
        by[("onnx-int8", 4)]["accuracy"] == _eval(made / "model-int8.onnx")["accuracy"] == int8_export["accuracy_int8"]
    )
    assert by[("onnx-fp16", 1)]["accuracy"] == _eval(made / "model-fp16.onnx")["accuracy"]
    assert abs(by[("torch", 1)]["accuracy"] - _eval(digits_run["best_checkpoint"])["accuracy"]) <= 1 / 360
    assert abs(by[("openvino", 1)]["accuracy"] - by[("onnx", 1)]["accuracy"]) <= 1 / 360
    for key, r in by.items():
        if key[0] == "onnx-cuda" and not torch.cuda.is_available():
            assert r["error"] and "CUDA" in r["error"] and r["latency_ms_p50"] is None
            continue
        assert r["error"] is None, r
        assert 0 < r["latency_ms_p50"] <= r["latency_ms_p95"] and r["runs"] >= 10
        # throughput is batch / the mean per-call time; half the calls take at least the median, so the mean is at
        # least half the median (on a busy machine it can be far more)
        assert 0 < r["images_per_second"] <= 2 * key[1] / (r["latency_ms_p50"] / 1e3) * (1 + 1e-9)
    assert by[("onnx-int8", 1)]["size_bytes"] < by[("onnx", 1)]["size_bytes"] / 2.5


def test_benchmark_of_an_onnx_file_runs_it_as_it_is(int8_export):
    p = run_cnn(
        "benchmark",
        int8_export["path"],
        "--formats",
        "onnx,torch,onnx-int8",
        "--batch-sizes",
        "2",
        "--seconds",
        "0.02",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    rows = {r["format"]: r for r in json.loads(p.stdout)["rows"]}
    assert rows["onnx"]["error"] is None and rows["onnx"]["accuracy"] is None  # no --data: no accuracy claimed
    assert rows["onnx"]["size_bytes"] == os.path.getsize(int8_export["path"])
    assert "ONNX file" in rows["torch"]["error"] and "ONNX file" in rows["onnx-int8"]["error"]


def test_benchmark_without_data_says_int8_needs_it(digits_run):
    p = run_cnn("benchmark", digits_run["best_checkpoint"], "--formats", "onnx-int8", "--batch-sizes", "1", "--json")
    assert p.returncode == 0, p.stderr
    (row,) = json.loads(p.stdout)["rows"]
    assert "needs --data" in row["error"] and row["latency_ms_p50"] is None


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--formats", "onnx,tensorrt"], "unknown format 'tensorrt'"),
        (["--formats", ","], "unknown format"),
        (["--batch-sizes", "0"], "--batch-sizes must be whole numbers"),
        (["--batch-sizes", "1,x"], "--batch-sizes must be whole numbers"),
        (["--seconds", "nan"], "--seconds"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--data", "nosuchset"], "nosuchset"),
        (["--keep", "{tmp}/full"], "is not empty"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_benchmark_options_are_exit_2(digits_run, tmp_path, extra, needle):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.onnx").write_bytes(b"the user's")
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    p = run_cnn("benchmark", digits_run["best_checkpoint"], *extra)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert (
        os.listdir(tmp_path / "full") == ["mine.onnx"]
        and (tmp_path / "full" / "mine.onnx").read_bytes() == b"the user's"
    )


def test_percentiles_and_the_timer():
    from cnncli.engine.benchmark import percentile, time_calls

    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        v = rng.random(n).tolist()
        for q in (0, 50, 95, 100):
            assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)))
    calls = []
    times = time_calls(lambda: calls.append(1), seconds=0.0, warmup=0.0, min_runs=10)
    assert len(times) == 10 and len(calls) == 12  # two warm-up calls, then the timed ones
    assert all(t >= 0 for t in times)


def test_the_help_lists_the_engines_formats():
    from cnncli.cli.benchmark import FORMATS as shown
    from cnncli.engine.benchmark import FORMATS

    assert shown == FORMATS


def test_a_folder_with_train_only_is_scored_on_the_part_cnn_train_holds_out(tmp_path):
    from conftest import make_checkpoint
    from fixtures import write_image_folder

    from cnncli.data import load_dataset

    folder = write_image_folder(str(tmp_path / "imgs"), classes=("c0", "c1"), per_class=10, with_val=True)
    os.rename(os.path.join(folder, "val"), tmp_path / "elsewhere")  # train/ alone: cnn train holds out a seeded val
    ck = make_checkpoint(tmp_path / "m.pt", "smallcnn", size=(3, 32, 32), num_classes=2)
    p = run_cnn(
        "export",
        ck,
        "--onnx",
        "--int8",
        "--data",
        f"folder:{folder}",
        "--max-drop",
        "1",
        "-o",
        tmp_path / "s.onnx",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    held_out = load_dataset(f"folder:{folder}").num_samples("val")
    assert json.loads(p.stdout)["evaluated_on"] == f"folder:{folder} val ({held_out} images)"
