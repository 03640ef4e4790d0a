"""The one image reader and the one resize policy: every command that reads an image file (train and eval on
folders, predict, scoremap, inspect) gets the same pixels from it, and the same tensor at the model's size.

Decoding: the reading gate first (a regular file, never a FIFO or a device, a size limit); EXIF orientation applied
(a phone photo is seen as shown, not as stored); 16-bit images scaled to 8 bits (not clipped to white); palette,
CMYK, grey+alpha and RGBA converted (alpha dropped); a decompression bomb (more pixels than PIL allows) refused.
Every failure is a UsageError naming the file.
"""

from __future__ import annotations

import os

from cnncli.errors import UsageError, shown

# what a folder's image files end in (torchvision's IMG_EXTENSIONS, lower case)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def is_hidden(name: str) -> bool:
    """Files and folders a folder scan skips: hidden ones (`.x`, macOS `._x.png` resource forks, `.DS_Store`,
    `.ipynb_checkpoints`) and `__MACOSX` archives' folders, as torchvision users expect their folders read."""
    return name.startswith(".") or name == "__MACOSX" or name == "Thumbs.db"


def is_image_name(name: str) -> bool:
    return not is_hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)


def walk_images(root: str, skipped: list[str] | None = None) -> list[str]:
    """Every image file under `root`, sorted, hidden files and folders skipped (and added to `skipped`, to be
    said); symbolic links to folders are followed once each (a link loop is not followed again), so no image is
    counted twice."""
    found: list[str] = []
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        if skipped is not None:
            skipped += [os.path.join(folder, n) for n in (*dirs, *files) if is_hidden(n)]
        dirs[:] = sorted(d for d in dirs if not is_hidden(d) and os.path.realpath(os.path.join(folder, d)) not in seen)
        found += [os.path.join(folder, f) for f in files if is_image_name(f)]
    from cnncli.fileio import check_input, note_inputs

    for path in found:  # a FIFO or a device named x.png would block a loader worker mid-epoch: named now
        if not os.path.isfile(path):
            check_input(path, "image", kind="image")

    note_inputs(found)  # inputs of this command: no output may replace one
    return sorted(found)


def _to_8bit(im):
    """A PIL image in L or RGB: 16-bit and 32-bit integer images scaled by their bit depth, alpha dropped."""
    import numpy as np
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        arr = np.asarray(im).astype(np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("1", "L", "RGB"):
        return im
    if im.mode in ("LA", "La"):
        return im.convert("L")
    return im.convert("RGB")  # RGBA, CMYK, YCbCr, LAB, HSV


def _draft(im, need: tuple[int, int]) -> None:
    """Let a JPEG decode at the smallest DCT scale (1/2, 1/4, 1/8) whose image still covers `need` (H, W) upright:
    a 12-megapixel photo needed at 224 pixels decodes at 1/8 of its size, in a fraction of the time. Other formats
    decode in full."""
    if im.format != "JPEG":
        return
    h, w = need
    if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # stored turned by 90 degrees: the stored axes are swapped
        h, w = w, h
    im.draft(im.mode, (max(1, int(w)), max(1, int(h))))


def read_pil(path: str, channels: int | None = None, draft: tuple[int, int] | None = None):
    """A decoded, upright, 8-bit PIL image in L (channels 1) or RGB (channels 3), or its own of the two (None).
    `draft` (H, W): the size the caller will resize it to; a JPEG may then come back smaller than it is, but never
    smaller than that (see `_draft`)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from cnncli.fileio import check_input

    check_input(path, "image", kind="image")
    try:
        with Image.open(path) as im:
            if draft is not None:
                _draft(im, draft)
            im = ImageOps.exif_transpose(im) or im
            im = _to_8bit(im)
            if channels is not None:
                im = im.convert("L" if channels == 1 else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            im.load()
            return im
    except Image.DecompressionBombError as e:
        raise UsageError(
            f"cannot read image {shown(path)}: {shown(e, 200)}",
            "an image this large is refused as a possible decompression bomb",
        ) from None
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        IndexError,
        KeyError,
        TypeError,
        ZeroDivisionError,
    ) as e:  # PIL's decoders raise all of these for damaged files
        raise UsageError(
            f"cannot read image {shown(path)}: {shown(e, 200) or type(e).__name__}", "remove or replace the file"
        ) from None


def image_mode(path: str) -> tuple[int, tuple[int, int]]:
    """An image's channel count (1 for grey, 3 otherwise) and its upright (height, width), from one decode."""
    im = read_pil(path)
    return (1 if im.mode == "L" else 3), (im.height, im.width)


def upright_size(path: str) -> tuple[int, int] | None:
    """An image's upright (height, width) from its header alone (no decode: EXIF orientations 5-8 swap the two), or
    None when the header cannot be read (the image is then judged when it is read)."""
    from PIL import Image

    from cnncli.fileio import check_input

    try:
        check_input(path, "image", kind="image")
        with Image.open(path) as im:
            w, h = im.size
            turned = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:
        return None
    return (w, h) if turned else (h, w)


def read_image(path: str, channels: int, draft: tuple[int, int] | None = None):
    """An image file as uint8 [C, H, W] with `channels` channels, at its own size (or, with `draft`, a JPEG at the
    smallest decoding scale that covers that size)."""
    import numpy as np
    import torch

    arr = np.asarray(read_pil(path, channels, draft))
    t = torch.from_numpy(arr.copy())
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def load_resized(path: str, channels: int, size: tuple[int, int]):
    """An image file as uint8 [C, H, W] at `size`: decoded at the smallest JPEG scale that covers it, then the one
    resize policy. What every command that feeds a model its images uses (training, eval, predict, inspect)."""
    return resize(read_image(path, channels, draft=size), size)


def resize(img, size: tuple[int, int]):
    """The one resize policy: uint8 [C, H, W] (or [N, C, H, W]) to `size`, bilinear with antialiasing (as
    torchvision's Resize), rounded back to uint8. The same image reaches a model as the same tensor everywhere."""
    import torch.nn.functional as F

    size = (int(size[0]), int(size[1]))
    if tuple(img.shape[-2:]) == size:
        return img
    batch = img if img.dim() == 4 else img[None]
    out = F.interpolate(batch.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    out = out.round().clamp(0, 255).byte()
    return out if img.dim() == 4 else out[0]
