"""COCO-format detection data: loading with validation, box-consistent augmentation.

Problems in the data are reported, counted and skipped, never trained on silently: an
annotation file that is empty or not COCO is an error; an image that is missing or
will not decode is skipped; a box outside the image is clipped (dropped if nothing of
it is inside); a degenerate box (width or height under 1 pixel) is dropped.
"""

from __future__ import annotations

import json
import math
import random
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors

try:  # deprecated since torchvision 0.29 (for TorchCodec), still its fastest PNG/JPEG path
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # removed: PIL decodes everything
    decode_image = None
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..errors import ConfigError, DataError, WorkerLost  # DataError is defined in errors.py, re-exported here

__all__ = ["Augment", "DataError", "DataReport", "CocoDetection", "EpochBatches", "collate", "letterbox",
           "make_loader", "num_categories", "resolve_data", "sample_seed"]

MAX_SCALE = 10.0  # the largest scale-jitter factor an Augment accepts
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Augment:
    """Training-time augmentation, boxes following the image: a horizontal flip with
    probability ``hflip``, then scale jitter (resize to fit ``image_size`` times a factor
    drawn uniformly from ``scale``) and a random ``image_size`` square crop, padded where the
    image is smaller. ``CocoDetection(augment=None)`` trains without any: each image is
    letterboxed as for evaluation."""

    hflip: float = 0.5
    scale: tuple[float, float] = (0.5, 1.5)

    def __post_init__(self) -> None:
        lo, hi = self.scale
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"augment hflip is a probability in [0, 1], got {self.hflip}")
        if not 0 < lo <= hi <= MAX_SCALE:  # also refuses NaN; beyond 10x the image is only memory
            raise ConfigError(f"augment scale is a range [lo, hi] with 0 < lo <= hi <= {MAX_SCALE}, "
                              f"got {list(self.scale)}")


@dataclass
class DataReport:
    images: int = 0
    boxes: int = 0
    skipped_images: list[str] = field(default_factory=list)
    clipped_boxes: int = 0
    dropped_outside: int = 0
    dropped_degenerate: int = 0
    unknown_category: int = 0
    dropped_nonfinite: int = 0

    def __str__(self) -> str:
        parts = [f"{self.images} images, {self.boxes} boxes"]
        if not self.boxes:
            parts[0] += " -- WARNING: no usable boxes at all; a model trained on this learns nothing"
        if self.skipped_images:
            shown = ", ".join(self.skipped_images[:3]) + (" ..." if len(self.skipped_images) > 3 else "")
            parts.append(f"skipped {len(self.skipped_images)} unreadable image(s) ({shown})")
        for n, what in ((self.clipped_boxes, "box(es) clipped to the image"),
                        (self.dropped_outside, "box(es) outside the image dropped"),
                        (self.dropped_degenerate, "degenerate box(es) dropped"),
                        (self.dropped_nonfinite, "box(es) with NaN or infinite coordinates dropped"),
                        (self.unknown_category, "box(es) with an unknown category dropped")):
            if n:
                parts.append(f"{n} {what}")
        return "; ".join(parts)


def num_categories(annotations: str | Path) -> int:
    """How many categories a COCO file declares (reads the JSON, not the images)."""
    try:
        cats = json.loads(Path(annotations).read_text()).get("categories")
    except OSError as e:
        raise DataError(f"{annotations}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, AttributeError):
        cats = None
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{annotations}: lists no categories (or is not a COCO instances file)")
    return len(cats)


def resolve_data(data: str | Path, split: str) -> tuple[Path, Path]:
    """``DIR`` (with ``DIR/<split>/annotations.json`` and images) → (annotation file, image dir)."""
    root = Path(data)
    for ann, img in ((root / split / "annotations.json", root / split / "images"),
                     (root / "annotations" / f"instances_{split}.json", root / split),
                     (root / "annotations.json", root / "images")):
        if ann.is_file():
            return ann, img
    raise DataError(f"{data}: no annotations for split {split!r} (looked for {split}/annotations.json, "
                    f"annotations/instances_{split}.json, annotations.json)")


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes of a COCO instances file, validated once at construction."""

    def __init__(self, annotations: str | Path, images: str | Path, image_size: int, train: bool,
                 augment: Augment | None = Augment(), check_images: bool = True):
        self.annotations, self.root = Path(annotations), Path(images)
        self.image_size, self.train, self.augment = image_size, train, augment
        try:
            text = self.annotations.read_text()
        except OSError as e:
            raise DataError(f"{annotations}: cannot read ({e.strerror})") from None
        if not text.strip():
            raise DataError(f"{annotations}: the annotation file is empty")
        try:
            coco = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{annotations}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from None
        if not isinstance(coco, dict) or not isinstance(coco.get("images"), list) or not isinstance(coco.get("categories"), list):
            raise DataError(f"{annotations}: not a COCO instances file (needs 'images', 'annotations', 'categories')")
        if not coco["images"]:
            raise DataError(f"{annotations}: lists no images")
        _check_coco(coco, annotations)
        cats = sorted(c["id"] for c in coco["categories"])
        if not cats:
            raise DataError(f"{annotations}: lists no categories")
        self.category_ids = cats
        self.category_names = {c["id"]: c.get("name", str(c["id"])) for c in coco["categories"]}
        self.label_of = {cid: i for i, cid in enumerate(cats)}
        self.report = DataReport()
        by_image: dict[int, list] = {}
        for a in coco.get("annotations", []):
            by_image.setdefault(a.get("image_id"), []).append(a)
        self.items: list[dict] = []
        for im in coco["images"]:
            path = self.root / im["file_name"]
            try:
                if check_images:
                    with Image.open(path) as probe:
                        probe.verify()
                    _check_complete(path)
                with Image.open(path) as probe:
                    width, height = probe.size
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                why = " (too many pixels: a decompression bomb?)" if isinstance(e, Image.DecompressionBombError) else ""
                self.report.skipped_images.append(im["file_name"] + why)
                continue
            boxes, labels = [], []
            for a in by_image.get(im["id"], []):
                if a.get("iscrowd", 0):
                    continue
                if a.get("category_id") not in self.label_of:
                    self.report.unknown_category += 1
                    continue
                try:
                    x, y, w, h = (float(v) for v in a["bbox"])
                except (KeyError, TypeError, ValueError):
                    self.report.dropped_degenerate += 1
                    continue
                if not all(math.isfinite(v) for v in (x, y, w, h)):
                    self.report.dropped_nonfinite += 1
                    continue
                if not (w >= 1 and h >= 1):  # also catches NaN
                    self.report.dropped_degenerate += 1
                    continue
                x0, y0 = max(0.0, x), max(0.0, y)
                x1, y1 = min(float(width), x + w), min(float(height), y + h)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    self.report.dropped_outside += 1
                    continue
                if (x0, y0, x1, y1) != (x, y, x + w, y + h):
                    self.report.clipped_boxes += 1
                boxes.append([x0, y0, x1, y1])
                labels.append(self.label_of[a["category_id"]])
            self.items.append({"id": im["id"], "path": path, "size": (height, width), "boxes": boxes, "labels": labels})
            self.report.boxes += len(boxes)
        self.report.images = len(self.items)
        if not self.items:
            raise DataError(f"{annotations}: no usable images ({self.report})")
        self._augment = None if augment is None else v2.Compose([
            v2.RandomHorizontalFlip(augment.hflip),
            v2.ScaleJitter((image_size, image_size), scale_range=tuple(augment.scale), antialias=True),
            v2.RandomCrop((image_size, image_size), pad_if_needed=True),
            v2.SanitizeBoundingBoxes(min_size=1.0),
        ])

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict]:
        """``data[i]``, or ``data[i, seed]``: augmentation drawn from ``seed`` alone, so a
        sample looks the same whichever process or worker loads it, and after a resume."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        if seed is None or not self.train:
            return self._load(i)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._load(i)

    def _load(self, i: int) -> tuple[torch.Tensor, dict]:
        item = self.items[i]
        image = _read_rgb(item["path"])
        h, w = item["size"]
        if tuple(image.shape[-2:]) != (h, w):
            raise DataError(f"{item['path']}: became unreadable during training (now {image.shape[-1]}x"
                            f"{image.shape[-2]} pixels, was {w}x{h})")
        boxes = tv_tensors.BoundingBoxes(torch.tensor(item["boxes"], dtype=torch.float32).reshape(-1, 4),
                                         format="XYXY", canvas_size=(h, w))
        labels = torch.tensor(item["labels"], dtype=torch.int64)
        if self.train and self._augment is not None:
            image, target = self._augment(image, {"boxes": boxes, "labels": labels})
            boxes, labels, scale = target["boxes"], target["labels"], 1.0
        else:
            image, boxes, scale = letterbox(image, boxes, self.image_size)
        image = TF.normalize(TF.to_dtype(image, torch.float32, scale=True), MEAN, STD)
        return image, {"boxes": boxes.as_subclass(torch.Tensor).float(), "labels": labels, "image_id": item["id"],
                       "scale": scale, "orig_size": (h, w)}


def _read_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) uint8: torchvision's decoders (libjpeg-turbo, libpng, libwebp) where they
    read the file, PIL for the formats they do not (BMP, TIFF, ...)."""
    if decode_image is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(str(path), mode=ImageReadMode.RGB)
            if image.dtype == torch.uint8:  # 16-bit PNGs decode to uint16: PIL's conversion, as before
                return image
        except (RuntimeError, ValueError):
            pass
    try:
        with Image.open(path) as im:
            return TF.pil_to_tensor(im.convert("RGB"))
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: became unreadable during training ({e})") from None


def _check_coco(coco: dict, file) -> None:
    """The structure the loader relies on, each mistake named by its JSON path."""
    seen: dict = {}
    for i, c in enumerate(coco["categories"]):
        if not isinstance(c, dict):
            raise DataError(f"{file}: categories[{i}] should be an object, is {type(c).__name__}")
        cid = c.get("id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{file}: categories[{i}].id should be an integer, is "
                            f"{'missing' if 'id' not in c else type(cid).__name__}")
        if cid in seen:
            raise DataError(f"{file}: categories[{i}].id {cid} is already used by categories[{seen[cid]}]; "
                            "each category needs its own id")
        seen[cid] = i
    for i, im in enumerate(coco["images"]):
        if not isinstance(im, dict):
            raise DataError(f"{file}: images[{i}] should be an object, is {type(im).__name__}")
        for key, kind in (("id", (int, str)), ("file_name", str)):
            if not isinstance(im.get(key), kind) or isinstance(im.get(key), bool):
                raise DataError(f"{file}: images[{i}].{key} should be a {'string' if key == 'file_name' else 'number'}, "
                                f"is {'missing' if key not in im else type(im[key]).__name__}")
    anns = coco.get("annotations", [])
    if not isinstance(anns, list):
        raise DataError(f"{file}: 'annotations' should be a list, is {type(anns).__name__}")
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise DataError(f"{file}: annotations[{i}] should be an object, is {type(a).__name__}")


def _check_complete(path: Path) -> None:
    """``verify()`` does not notice a JPEG cut short; decode the ones without an end marker."""
    if path.suffix.lower() not in (".jpg", ".jpeg"):
        return
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 64))
        tail = f.read()
    if b"\xff\xd9" in tail:
        return
    with Image.open(path) as im:
        im.load()  # raises OSError("image file is truncated") on a cut-off file


def letterbox(image: torch.Tensor, boxes, size: int):
    """Resize the longer side to ``size`` and pad bottom/right to a square."""
    h, w = image.shape[-2:]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    image = TF.resize(image, [nh, nw], antialias=True)
    image = TF.pad(image, [0, 0, size - nw, size - nh])
    if boxes is not None:
        boxes = tv_tensors.wrap(boxes.as_subclass(torch.Tensor) * scale, like=boxes, canvas_size=(size, size))
    return image, boxes, scale


def collate(batch):
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


def seeded_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of an epoch: a pure function of (seed, epoch), so a resumed run
    sees exactly the batches it would have seen."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch``: the same in any process or worker."""
    return seed * 7_919_993 + epoch * 100_003 + index


class EpochBatches(torch.utils.data.Sampler):
    """The ``(index, seed)`` keys of one process's share of each batch of an epoch, from
    batch ``start`` on (a run resumed mid-epoch goes on with its next batch). The epoch is
    set before each ``iter(loader)``: persistent workers keep running between epochs and the
    keys are drawn here, in the main process."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps = n // batch_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def __iter__(self):
        order = seeded_order(self.n, self.seed, self.epoch)
        per_rank = self.batch_size // self.world
        for i in range(self.start, self.steps):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size][self.rank * per_rank:(self.rank + 1) * per_rank]
            yield [(j, sample_seed(self.seed, self.epoch, j)) for j in batch]


class _Reported(torch.utils.data.Dataset):
    """Hands a sample's ``DataError`` back as a value: raised in a worker process it would
    reach the user as a worker traceback; the main process raises it as it is."""

    def __init__(self, dataset: torch.utils.data.Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        try:
            return self.dataset[key]
        except DataError as e:
            return e


def _collate_reported(samples):
    """A batch as few tensors as possible: a worker hands each tensor to the main process
    through its own shared-memory block, so the per-image boxes and labels travel
    concatenated (and the images are stacked straight into shared memory)."""
    errors = [s for s in samples if isinstance(s, DataError)]
    if errors:
        return errors[0]
    targets = [s[1] for s in samples]
    return (torch.utils.data.default_collate([s[0] for s in samples]),
            torch.cat([t["boxes"] for t in targets]), torch.cat([t["labels"] for t in targets]),
            [len(t["labels"]) for t in targets],
            [{k: v for k, v in t.items() if k not in ("boxes", "labels")} for t in targets])


def _unpack(packed) -> tuple[torch.Tensor, list[dict]]:
    images, boxes, labels, counts, meta = packed
    return images, [{"boxes": b, "labels": c, **m} for b, c, m in zip(boxes.split(counts), labels.split(counts), meta)]


def make_loader(dataset: torch.utils.data.Dataset, batches: EpochBatches, workers: int,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``dataset`` in the order ``batches`` gives, loaded by ``workers`` processes
    (0: in this one). Iterating raises the ``DataError`` of an unreadable sample."""
    loader = torch.utils.data.DataLoader(
        _Reported(dataset), batch_sampler=batches, num_workers=workers, collate_fn=_collate_reported,
        pin_memory=pin_memory, persistent_workers=workers > 0)
    return _Raising(loader)


class _Raising:
    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        try:
            for batch in self.loader:
                if isinstance(batch, DataError):
                    raise DataError(str(batch))
                yield _unpack(batch)
        except Exception as e:
            lost = self.close()
            if lost is not None and not isinstance(e, DataError):
                raise WorkerLost(lost) from e
            raise

    def close(self) -> str | None:
        """Stop the loader's worker processes (after a failure, or when training ends); torch's
        words for one that was killed, if one was. A worker killed while it hands a batch
        over can break the hand-over (a reset connection) before torch's SIGCHLD handler has
        named it; left registered, that handler would raise later, anywhere in this process
        -- in the middle of recording the failure. Shutting down unregisters the workers."""
        it = getattr(self.loader, "_iterator", None)  # kept alive by persistent_workers
        if it is None or not hasattr(it, "_shutdown_workers"):
            return None
        workers = list(getattr(it, "_workers", ()))
        try:
            it._shutdown_workers()  # joins the workers, then unregisters them (even if it raises)
        finally:
            self.loader._iterator = None
        for w in workers:
            if w.exitcode is not None and w.exitcode < 0:
                return f"DataLoader worker (pid {w.pid}) is killed by signal: {signal.strsignal(-w.exitcode)}"
        return None
