"""Published weights (`cnn train --pretrained`, `--weights IMAGENET1K_V1`): found through the framework that
publishes them, fetched into its own cache, checked against the published hash.

torchvision's weights enums give the file's URL and its eval transforms; the file goes to torch.hub's cache
(`$TORCH_HOME/hub/checkpoints`, the same file torchvision itself would use) through `torch.hub.download_url_to_file`,
which writes a `.partial` file and keeps it only when its SHA-256 starts with the hash in the file's name (and a
file already in the cache is checked the same way before it is used). timm's pretrained tags come from the Hugging
Face Hub through `huggingface_hub` (its own cache and checks) when timm is installed.

`CNN_WEIGHTS_MIRROR=URL` replaces the scheme and host of every download (the path stays), for air-gapped sites and
corporate mirrors. Offline, the error names the URL and the exact path where the file can be put by hand.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

from cnncli.errors import UsageError, shown

MIRROR_ENV = "CNN_WEIGHTS_MIRROR"
DOWNLOAD_TIMEOUT = 30.0  # seconds without a byte before a download is given up


@dataclass(frozen=True)
class Published:
    """One set of published weights: where it comes from and how its images were prepared for evaluation."""

    source: str  # torchvision | timm
    arch: str  # the publisher's architecture name (resnet18)
    name: str  # ResNet18_Weights.IMAGENET1K_V1 | resnet18.a1_in1k
    url: str  # where the file is published (before the mirror)
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_size: int  # the eval input side
    resize_size: int  # the shorter side is resized to this, then centre-cropped to crop_size
    interpolation: str  # bilinear | bicubic
    hf_hub_id: str = ""  # timm: the Hub repository

    @classmethod
    def from_record(cls, rec: dict, path: str = "the checkpoint") -> Published:
        """The record a checkpoint keeps, read back (a resumed run goes on with the same preprocessing)."""
        try:
            return cls(**{**rec, "mean": tuple(rec["mean"]), "std": tuple(rec["std"])})
        except (TypeError, KeyError) as e:
            raise UsageError(f"{shown(path)}: a malformed 'pretrained' record ({shown(e)})") from None

    def record(self) -> dict:
        """What a checkpoint keeps of it (`pretrained` in best.pt and last.pt)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def mirrored(url: str) -> str:
    """`url` with its scheme and host replaced by $CNN_WEIGHTS_MIRROR's (its path, if any, goes in front)."""
    from urllib.parse import urlsplit

    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    m = urlsplit(mirror)
    if m.scheme not in ("http", "https", "file") or (m.scheme != "file" and not m.netloc):
        raise UsageError(
            f"{MIRROR_ENV}={shown(mirror)} is not a URL", "give http://HOST[:PORT][/PATH], https://... or file:///DIR"
        )
    return mirror.rstrip("/") + urlsplit(url).path


def published_for(info, tag: str | None) -> Published:
    """The published weights `tag` (None or DEFAULT: the architecture's default) of the registry's model `info`."""
    if info.source == "timm":
        return _timm_weights(info.name, tag)
    if info.source not in ("torchvision", "builtin"):
        raise UsageError(
            f"{info.name} is a user model: it has no published weights", "give --weights FILE (a model file)"
        )
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(info.name)
    except (ValueError, KeyError):
        raise UsageError(
            f"{info.name} has no published weights",
            "torchvision's and timm's models do (`cnn models --source torchvision`); or give --weights FILE",
        ) from None
    names = [n for n in enum.__members__ if n != "DEFAULT"]
    prefix, _, wanted = (tag or "DEFAULT").rpartition(".")
    if wanted not in enum.__members__ or prefix not in ("", enum.__name__):  # ResNet50_Weights.X is not resnet18's
        raise UsageError(
            f"{info.name} has no published weights named {shown(tag)}",
            f"published for it: DEFAULT, {', '.join(names)}; or give --weights FILE (a model file)",
        )
    w = enum[wanted]
    t = w.transforms()
    return Published(
        "torchvision",
        info.name,
        f"{type(w).__name__}.{w.name}",
        w.url,
        len(w.meta.get("categories") or ()) or 1000,
        tuple(float(v) for v in t.mean),
        tuple(float(v) for v in t.std),
        int(t.crop_size[0]),
        int(t.resize_size[0]),
        str(t.interpolation.value),
    )


def cache_path(pub: Published) -> str:
    """Where torch.hub keeps the file (the same place torchvision's own `weights=` would read it from)."""
    import torch.hub

    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(pub.url))


def expected_hash(url: str) -> str | None:
    """The SHA-256 prefix published in the file's name (`resnet18-f37072fd.pth`), as torch.hub checks it."""
    import torch.hub

    m = torch.hub.HASH_REGEX.search(os.path.basename(url))
    return m.group(1) if m and m.group(1) else None


def fetch(pub: Published, say: Callable[[str], None] | None = None, progress: bool = False) -> str:
    """The local path of `pub`'s file: from the cache when it is there and its hash is right, else downloaded (a
    progress bar on stderr when `progress`). UsageError when it cannot be had: offline, a bad mirror, a hash
    mismatch (nothing is kept), a full disk."""
    if pub.hf_hub_id:  # timm's, on the Hugging Face Hub (timm weights published as a plain URL go on below)
        return _fetch_timm(pub, say)
    path, url = cache_path(pub), mirrored(pub.url)
    want = expected_hash(pub.url)
    if os.path.isfile(path):
        if want is None or _sha256(path).startswith(want):
            return path
        raise UsageError(
            f"{shown(path)} does not match the published hash of {pub.name} (sha256 {want}...)",
            "delete it (a broken download or another file) and run again",
        )
    if say:
        say(f"downloading {pub.name} from {url} to {path}")
    _download(url, path, want, progress, pub.name)
    return path


def _download(url: str, path: str, want: str | None, progress: bool, what: str) -> None:
    import socket
    import urllib.error

    import torch.hub

    from cnncli.fileio import os_error

    folder = os.path.dirname(path)
    old = socket.getdefaulttimeout()
    try:
        os.makedirs(folder, exist_ok=True)
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
        torch.hub.download_url_to_file(url, path, hash_prefix=want, progress=progress)
    except RuntimeError as e:
        if "invalid hash" not in str(e):
            raise
        raise UsageError(
            f"the file at {shown(url)} does not match the published hash of {what}: {e}; nothing was kept",
            f"is {MIRROR_ENV} serving the right file?" if os.environ.get(MIRROR_ENV) else "try again later",
        ) from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        if isinstance(e, OSError) and not isinstance(e, urllib.error.URLError) and e.filename:
            raise os_error(e, e.filename) from None  # the cache folder: full disk, permissions
        reason = f"HTTP {e.code} {e.reason}" if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
        raise UsageError(
            f"cannot download {what} from {shown(url)}: {shown(reason)}",
            f"offline? put the file at {path} by hand (or set {MIRROR_ENV}=URL to a mirror), then run again",
        ) from None
    finally:
        socket.setdefaulttimeout(old)
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            if name.startswith(os.path.basename(path) + ".") and name.endswith(".partial"):
                _remove_quietly(os.path.join(folder, name))


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------- timm


def _timm_weights(name: str, tag: str | None) -> Published:
    import timm

    full = name if not tag or tag == "DEFAULT" else f"{name}.{tag}"
    cfg = timm.get_pretrained_cfg(full) if (not tag or tag == "DEFAULT" or full in timm.list_pretrained(full)) else None
    if cfg is None:
        tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*")]
        if not tags:
            raise UsageError(f"timm has no published weights for {name}", "give --weights FILE (a model file)")
        raise UsageError(
            f"timm has no weights {shown(full)}", f"published tags for {name}: DEFAULT, {', '.join(tags[:12])}"
        )
    crop = int(cfg.input_size[1])
    return Published(
        "timm",
        name,
        f"{name}.{cfg.tag}" if getattr(cfg, "tag", None) else name,
        cfg.url or (f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else ""),
        int(cfg.num_classes or 1000),
        tuple(float(v) for v in cfg.mean),
        tuple(float(v) for v in cfg.std),
        crop,
        int(round(crop / (cfg.crop_pct or 0.875))),
        str(cfg.interpolation or "bicubic"),
        cfg.hf_hub_id or "",
    )


def _fetch_timm(pub: Published, say: Callable[[str], None] | None) -> str:
    """timm's weights from the Hugging Face Hub (its cache under $HF_HOME; the mirror as the Hub's endpoint)."""
    from huggingface_hub import constants, hf_hub_download

    mirror = os.environ.get(MIRROR_ENV, "").strip().rstrip("/") or None
    endpoint = mirror or constants.ENDPOINT
    url = f"{endpoint}/{pub.hf_hub_id}/resolve/main/model.safetensors"
    where = os.path.join(constants.HF_HUB_CACHE, "models--" + pub.hf_hub_id.replace("/", "--"))
    if say:
        say(f"fetching {pub.name} from {url} (Hugging Face cache {where})")
    import logging

    hub_log = logging.getLogger("huggingface_hub")
    level, hub_log.level = hub_log.level, logging.CRITICAL  # its retries are not the user's business: one error line
    try:
        return hf_hub_download(pub.hf_hub_id, "model.safetensors", endpoint=mirror, etag_timeout=DOWNLOAD_TIMEOUT)
    except Exception as e:  # offline, a mirror without it, a gated repository: the Hub's errors are many
        first = str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise UsageError(
            f"cannot fetch {pub.name} from {shown(url)}: {type(e).__name__}: {shown(first, 200)}",
            f"offline? `hf download {pub.hf_hub_id} model.safetensors` on a connected machine and copy {where} "
            f"into this machine's Hugging Face cache (or set {MIRROR_ENV}=URL to a Hub mirror)",
        ) from None
    finally:
        hub_log.level = level
