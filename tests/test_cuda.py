"""The CUDA paths of the trainer, eval, export and summary (skipped without a GPU: see conftest.py).

Run them where a GPU is: `python -m pytest -q -m cuda`.
"""

import json

import pytest
import torch
from conftest import run_cnn

pytestmark = pytest.mark.cuda


def _json(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_training_step_never_synchronises_on_cuda(tmp_path):
    """CUDA's own sync debugger turns any host synchronisation inside a training step into an error."""
    from cnncli.config import TrainConfig
    from cnncli.engine.trainer import StopRequest, Trainer

    cfg = TrainConfig(
        model="resnet18",
        data="fake",
        epochs=1,
        batch_size=128,
        max_steps=40,
        device="cuda",
        project=str(tmp_path),
        name="sync",
    )
    trainer = Trainer(cfg)
    trainer.setup()
    assert trainer.cfg.precision in ("bf16", "16") and trainer.channels_last
    if trainer.cfg.precision == "16":
        pytest.skip("fp16's grad scaler reads its inf check on the host by design")
    step = trainer._train_step

    def strict(*a, **k):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return step(*a, **k)
        finally:
            torch.cuda.set_sync_debug_mode(0)

    trainer._train_step = strict
    state = trainer.start_or_resume()
    metrics = trainer.train_one_epoch(state, StopRequest())
    assert state.global_step == 40 and metrics["loss"] == metrics["loss"]  # finite, not nan


def test_folder_training_on_cuda_prefetches(tmp_path):
    """Image files decoded by workers, copied from pinned memory on a side stream: the run trains and its figures
    are what `cnn eval` measures."""
    from fixtures import write_image_folder

    root = write_image_folder(str(tmp_path / "imgs"), with_val=True)
    out = _json(
        run_cnn(
            "train",
            "smallcnn",
            "--data",
            f"folder:{root}",
            "--device",
            "cuda",
            "--epochs",
            "3",
            "--project",
            tmp_path,
            "--json",
        )
    )
    assert out["device"].startswith("cuda")
    ev = _json(
        run_cnn(
            "eval", out["best_checkpoint"], "--data", f"folder:{root}", "--split", "val", "--device", "cuda", "--json"
        )
    )
    assert ev["accuracy"] == pytest.approx(out["best_accuracy"], abs=1e-9)


def test_eval_on_cuda_matches_cpu(tmp_path):
    """The same checkpoint evaluated on the GPU and the CPU: fp32 without TF32 on both (evaluation_precision)."""
    out = _json(
        run_cnn(
            "train",
            "resnet20",
            "--data",
            "fake",
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--max-steps",
            "30",
            "--project",
            tmp_path,
            "--json",
        )
    )
    gpu = _json(run_cnn("eval", out["best_checkpoint"], "--device", "cuda", "--json"))
    cpu = _json(run_cnn("eval", out["best_checkpoint"], "--device", "cpu", "--json"))
    assert abs(gpu["accuracy"] - cpu["accuracy"]) <= 1 / gpu["samples"]
    assert gpu["loss"] == pytest.approx(cpu["loss"], rel=1e-4)
    assert gpu["accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-9)  # what training reported


def test_cuda_checkpoint_and_cuda_state_dict_export(tmp_path):
    """A run trained on the GPU, and a state dict saved with its tensors still on the GPU, export with parity."""
    out = _json(
        run_cnn(
            "train",
            "smallcnn",
            "--data",
            "fake",
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--max-steps",
            "10",
            "--project",
            tmp_path,
            "--json",
        )
    )
    ex = _json(run_cnn("export", out["best_checkpoint"], "--onnx", "-o", tmp_path / "a.onnx", "--json"))
    assert ex["max_abs_diff"] < 1e-3
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).cuda()
    torch.save(model.state_dict(), tmp_path / "cuda_state.pt")
    ex = _json(run_cnn("export", tmp_path / "cuda_state.pt", "--onnx", "-o", tmp_path / "b.onnx", "--json"))
    assert ex["max_abs_diff"] < 1e-3


@pytest.mark.parametrize("name,size,batch", [("resnet18", 224, 32), ("vit_b_16", 224, 8)])
def test_training_memory_figure_against_the_allocator(name, size, batch):
    """`cnn summary --device cuda --batch B`'s saved_for_backward against a real step: what the CUDA allocator
    holds after the forward pass beyond the weights, the input and the logits is what autograd saved."""
    from cnncli.analysis.summary import summarize
    from cnncli.models import get_model

    model = get_model(name)
    res = summarize(model, (3, size, size), batch=batch, device="cuda", measure=False).as_json()
    model = model.cuda().train()
    x = torch.randn(batch, 3, size, size, device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    out = model(x)
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before - out.numel() * out.element_size()
    torch.cuda.reset_peak_memory_stats()
    out.float().sum().backward()
    saved = res["memory"]["saved_for_backward"]
    print(
        f"{name} batch {batch}: saved_for_backward {saved / 2**20:.1f} MiB, allocator {held / 2**20:.1f} MiB, "
        f"peak in backward {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB"
    )
    assert held == pytest.approx(saved, rel=0.05)


def test_cam_on_cuda_matches_cpu(tmp_path):
    """cnn inspect cam --device cuda gives the CPU's maps (float32 both; no autocast in the gradients)."""
    import numpy as np
    from conftest import make_checkpoint
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "m.pt", "resnet20", size=(3, 32, 32), num_classes=10)
    Image.effect_noise((80, 64), 70).convert("RGB").save(tmp_path / "x.png")
    maps = {}
    for dev in ("cpu", "cuda"):
        p = run_cnn("inspect", "cam", ckpt, tmp_path / "x.png", "--device", dev, "-o", tmp_path / dev, "--json")
        maps[dev] = np.load(_json(p)["images"][0]["npy"])
    assert maps["cpu"].max() > 0 and np.abs(maps["cpu"] - maps["cuda"]).max() < 1e-3
