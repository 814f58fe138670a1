"""The EdgeShard paper's testbed as cluster files (Llama-2 7B/13B/70B, FP32, Jetsons + RTX 3090).

Source figures (a public profile of the paper's testbed, Llama-2-7B FP32):
- memory per unit: embed 0.488, decoder layer 0.754, norm+head 0.488 (GiB: 0.488 GiB is exactly
  32000·4096·4 bytes, so the profile's "GB" are GiB, and so is the devices' usable memory);
- decode ms per unit (embed / mean decoder layer / norm+head): Orin NX 0.476 / 6.019 / 5.482,
  AGX Orin 0.627 / 5.277 / 4.482, RTX 3090 0.077 / 0.792 / 0.648;
- usable memory: Orin NX 14, AGX Orin 29, RTX 3090 22 (GiB);
- links: 950 Mbps between edge devices, 10 Mbps between the source and the RTX 3090, 2.1 ms per
  transfer; activations 4·hidden·4 bytes; the head returns logits 4·vocab·4 bytes in the paper,
  a token id (4 bytes) in our runtime.
13B and 70B are scaled from the published shapes: unit bytes are computed exactly from the
shapes (FP32), a decoder layer's decode time scales with its bytes (decode is memory-bound),
the embedding's with the hidden size and the head's with its bytes. Regenerate the files in
`data/` with `scripts/make-paper-clusters`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .cluster import FORMAT_VERSION

GIB = 2**30


@dataclass(frozen=True)
class Shape:
    """A Llama-2 model's published shape."""

    name: str
    hidden: int
    layers: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int = 32000

    @property
    def embed_bytes(self) -> int:
        """Token embedding, FP32."""
        return self.vocab * self.hidden * 4

    @property
    def layer_bytes(self) -> int:
        """One decoder layer, FP32: attention (grouped-query K/V), SwiGLU MLP, two RMSNorms."""
        kv = self.hidden // self.heads * self.kv_heads
        attention = self.hidden * (2 * self.hidden + 2 * kv)
        mlp = 3 * self.hidden * self.ffn
        return (attention + mlp + 2 * self.hidden) * 4

    @property
    def head_bytes(self) -> int:
        """Final RMSNorm + LM head, FP32."""
        return (self.vocab * self.hidden + self.hidden) * 4


LLAMA2_7B = Shape("llama2-7b", hidden=4096, layers=32, ffn=11008, heads=32, kv_heads=32)
LLAMA2_13B = Shape("llama2-13b", hidden=5120, layers=40, ffn=13824, heads=40, kv_heads=40)
LLAMA2_70B = Shape("llama2-70b", hidden=8192, layers=80, ffn=28672, heads=64, kv_heads=8)
SHAPES = (LLAMA2_7B, LLAMA2_13B, LLAMA2_70B)

# (usable GiB, Llama-2-7B decode ms: embed, mean decoder layer, norm+head)
DEVICE_KINDS: dict[str, tuple[int, tuple[float, float, float]]] = {
    "orin-nx": (14, (0.476, 6.019, 5.482)),
    "agx-orin": (29, (0.627, 5.277, 4.482)),
    "rtx-3090": (22, (0.077, 0.792, 0.648)),
}

# name suffix -> device ids (the first is the source)
CLUSTERS: dict[str, list[str]] = {
    "-small": ["agx-orin-0", "agx-orin-1", "orin-nx-0", "rtx-3090"],
    "": [f"agx-orin-{i:02d}" for i in range(12)] + ["orin-nx-0", "orin-nx-1", "rtx-3090"],
}


def _unit_ms(kind: str, shape: Shape) -> list[float]:
    embed, layer, head = DEVICE_KINDS[kind][1]
    scale_layer = shape.layer_bytes / LLAMA2_7B.layer_bytes
    scale_embed = shape.hidden / LLAMA2_7B.hidden
    scale_head = shape.head_bytes / LLAMA2_7B.head_bytes
    return [
        round(embed * scale_embed, 4),
        *[round(layer * scale_layer, 4)] * shape.layers,
        round(head * scale_head, 4),
    ]


def _kind(device: str) -> str:
    return next(kind for kind in DEVICE_KINDS if device.startswith(kind))


def paper_cluster(shape: Shape, devices: list[str], logits: bool) -> dict[str, Any]:
    """One cluster document."""
    activation = 4 * shape.hidden * 4
    units = [{"name": "embed", "bytes": shape.embed_bytes, "out_bytes": activation}]
    units += [{"name": f"layer.{i}", "bytes": shape.layer_bytes, "out_bytes": activation} for i in range(shape.layers)]
    units.append({"name": "head", "bytes": shape.head_bytes, "out_bytes": 4 * shape.vocab * 4 if logits else 4})
    source = devices[0]
    return {
        "version": FORMAT_VERSION,
        "model": {"name": shape.name, "units": units},
        "devices": [
            {
                "id": device,
                "memory_bytes": DEVICE_KINDS[_kind(device)][0] * GIB,
                "unit_ms": _unit_ms(_kind(device), shape),
            }
            for device in devices
        ],
        "source": source,
        "network": {
            "default_mbps": 950,
            "default_latency_ms": 2.1,
            "links": [{"a": source, "b": "rtx-3090", "mbps": 10, "latency_ms": 2.1}],
        },
    }


def all_paper_clusters() -> dict[str, dict[str, Any]]:
    """Every bundled testbed file by name (without the `paper:` prefix)."""
    documents: dict[str, dict[str, Any]] = {}
    for shape in SHAPES:
        for suffix, devices in CLUSTERS.items():
            documents[f"{shape.name}{suffix}"] = paper_cluster(shape, devices, logits=False)
        documents[f"{shape.name}-logits"] = paper_cluster(shape, CLUSTERS[""], logits=True)
    return documents
