"""The memory one rank needs to meta-train a MEND editor with DeepSpeed (``mend plan``).

Sizes come from :mod:`mend.distributed.shapes`; :func:`plan` turns them into bytes per
rank, :func:`mend.distributed.memory_report.format_plan` into a table.

What one rank holds (``N`` ranks, ``b`` bytes per base-model element, ``E`` editor
parameters, which DeepSpeed trains in float32), following DeepSpeed's own buffers:

* **base parameters**: ZeRO-3 keeps ``b·P/N`` (in host memory with ``offload_param``),
  plus small "persistent" parameters whole; ZeRO-0/1/2 keep all ``b·P``. No gradients
  and no optimizer state: the base model is frozen.
* **gathered parameters** (ZeRO-3): a module's parameters are all-gathered just before
  it runs, with up to ``stage3_prefetch_bucket_size`` elements fetched ahead; each
  gather lands in a flat receive buffer and is then copied per parameter, so up to
  three copies (four on CPU, where gloo stages the transfer once more) of
  ``min(P, prefetch + largest parameter)`` elements exist at once. The editor is
  gathered one residual block at a time.
* **editor**: weights ``4E/N`` (ZeRO-3) or ``4E`` (else), a float32 master copy
  ``4E/N``, gradient partition ``4E/N``, Adam moments ``8E/N``; ``offload_optimizer``
  moves master, gradients and moments to host memory. The gradient reduction bucket
  (``reduce_bucket_size`` float32 elements; two with ZeRO-2's ``overlap_comm``) comes on
  top (on CPU gloo reduces it through one more copy); a block's full gradients exist
  before they are reduced; the optimizer step flattens the gradient partition once
  more (``4E/N``).
* **activations**: the step's passes run one after another and free their graphs
  (:class:`~mend.training.step.MetaStep`), so the peak is the largest of: the gradient
  capture on the edit batch, a post-edit pass on one chunk of rephrase or locality
  inputs, each through the layers from the first edited block up; plus the logits of
  the scored positions, and the editor's own graph over the edit's token rows.
* **runtime**: CUDA context, NCCL/gloo buffers, allocator slack (``--runtime-gb``).

The phases peak at different times; the plan reports the largest phase total. The
figures were checked against measured peak resident memory of 1- and 2-rank CPU runs
(``bench/zero_scaling.py``); GPU allocators round up and fragment, so leave a margin.
"""


from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from mend.distributed.shapes import EditorShape, ModelShape

GIB = 1024**3

# Measured on the CPU runs: resident memory that is not a tensor (gloo and shared-memory
# communication buffers, allocator metadata) is about this much per rank.
CPU_RUNTIME_BYTES = 128 * 1024**2
# CUDA context + NCCL communicators + caching-allocator fragmentation, per GPU.
GPU_RUNTIME_BYTES = 3 * GIB
# How many copies of an element being all-gathered exist at once (see plan()).
GATHER_COPIES = {"gpu": 3, "cpu": 4}


@dataclass(frozen=True)
class Workload:
    """What one micro-batch holds (the training config's n_edits, n_loc, chunk_size)."""

    n_edits: int = 1
    n_loc: int = 4
    seq_len: int = 48  # tokens of prompt + target, padded
    target_len: int = 8  # scored positions (logits are only computed from there on)
    equiv_includes_prompt: bool = True
    chunk_size: int | None = None


@dataclass(frozen=True)
class Parallel:
    ranks: int = 1
    nodes: int = 1
    zero_stage: int = 3
    offload_param: bool = False
    offload_optimizer: bool = False
    dtype: Literal["bf16", "fp32"] = "bf16"
    prefetch_bucket_size: int = 50_000_000
    reduce_bucket_size: int = 50_000_000
    persistence_threshold: int = 100_000
    overlap_comm: bool = True
    accelerator: Literal["gpu", "cpu"] = "gpu"

    @classmethod
    def from_deepspeed(cls, path: str | Path, ranks: int, nodes: int = 1, accelerator: str = "gpu") -> Parallel:
        """Read stage, offload, dtype and bucket sizes from a DeepSpeed JSON file."""
        raw = json.loads(Path(path).read_text())
        zero = raw.get("zero_optimization", {})

        def on(section: str) -> bool:
            return zero.get(section, {}).get("device", "none") not in (None, "none")

        return cls(
            ranks=ranks, nodes=nodes, zero_stage=int(zero.get("stage", 0)),
            offload_param=on("offload_param"), offload_optimizer=on("offload_optimizer"),
            dtype="bf16" if raw.get("bf16", {}).get("enabled") else "fp32",
            prefetch_bucket_size=int(float(zero.get("stage3_prefetch_bucket_size", 5e7))),
            reduce_bucket_size=int(float(zero.get("reduce_bucket_size", 5e8))),
            persistence_threshold=int(float(zero.get("stage3_param_persistence_threshold", 1e5))),
            overlap_comm=bool(zero.get("overlap_comm", True)),
            accelerator=accelerator,  # type: ignore[arg-type]
        )


@dataclass
class Plan:
    model: str
    parallel: dict
    workload: dict
    base_params: int
    editor_params: int
    # Per rank, bytes. "device" is what the accelerator (or, on CPU, the process) holds.
    device: dict[str, float]
    host: dict[str, float]
    phases: dict[str, float]
    peak_phase: str
    device_total: float
    host_per_rank: float
    host_per_node: float
    device_bytes: float | None = None

    @property
    def process_total(self) -> float:
        """Device plus host memory of one rank: what a CPU-only rank holds in RAM."""
        return self.device_total + self.host_per_rank

    @property
    def fits(self) -> bool | None:
        return None if self.device_bytes is None else self.device_total <= self.device_bytes

    def to_dict(self) -> dict:
        out = asdict(self)
        out["fits"] = self.fits
        out["process_total"] = self.process_total
        return out


def _activation_bytes(model: ModelShape, editor: EditorShape, work: Workload, b: int) -> dict[str, float]:
    """Peak activation memory of one micro-batch, by phase."""
    h, i, kv = model.hidden, model.intermediate, model.hidden * model.n_kv_heads // max(model.n_heads, 1)
    layers = max(model.n_layers - model.first_edited_layer, 1)  # graph from the first edited block
    t = work.seq_len
    # Saved for backward per token and layer of a LLaMA-style block: norm inputs upcast
    # to float32, q/k/v/rotated q,k/repeated k,v/attention output (b bytes each), the
    # attention probabilities, and gate, up, activation and product in the MLP.
    per_token_layer = b * (7 * h + 3 * kv + 4 * i + model.n_heads * t) + 4 * 2 * h
    chunk = work.chunk_size or 10**9
    n_equiv = work.n_edits * (2 if work.equiv_includes_prompt else 1)

    def pass_bytes(examples: int, softmax_copies: int) -> float:
        examples = min(examples, chunk)
        graph = examples * t * layers * per_token_layer
        logits = examples * work.target_len * model.vocab * (b + 4 * softmax_copies)
        return graph + logits

    # The editor's graph over the edit's token rows lives from the transform to the end.
    # Per row: the input and its normalisation, per block the input, the rank-r
    # projection and the scaled/shifted pre-activation, and the output factors.
    editor_graph = 0.0
    for dim, r, modes in editor.groups:
        rows = work.n_edits * t * modes
        editor_graph += rows * 4 * (2 * dim + editor.n_blocks * (4 * dim + r) + 2 * dim)
    kept_logits = work.n_loc * work.target_len * model.vocab * b  # unedited locality logits
    return {
        "capture": pass_bytes(work.n_edits, 1),
        "post_equiv": pass_bytes(n_equiv, 1) + editor_graph + kept_logits,
        "post_loc": pass_bytes(work.n_loc, 2) + editor_graph + kept_logits,
        "editor": editor_graph,
    }


def plan(
    model: ModelShape,
    editor: EditorShape,
    parallel: Parallel,
    workload: Workload | None = None,
    device_gb: float | None = None,
    runtime_bytes: float | None = None,
) -> Plan:
    """Per-rank memory of meta-training ``editor`` on ``model`` (see the module doc)."""
    work = workload or Workload()
    n = parallel.ranks
    b = 2 if parallel.dtype == "bf16" else 4
    z3 = parallel.zero_stage >= 3
    gpu = parallel.accelerator == "gpu"
    P, E = model.n_params, editor.n_params

    base_persistent = model.persistent(parallel.persistence_threshold) if z3 else 0
    base_sharded = (P - base_persistent) / n if z3 else P
    editor_persistent = editor.persistent(parallel.persistence_threshold) if z3 else 0

    device: dict[str, float] = {}
    host: dict[str, float] = {}
    # Frozen base model.
    if z3 and parallel.offload_param:
        host["base partition"] = b * base_sharded
        device["base parameters"] = b * base_persistent
    else:
        device["base parameters"] = b * (base_sharded + base_persistent)
    # Editor weights, master copy, gradients, Adam moments (float32).
    shard = E / n if parallel.zero_stage >= 1 else E
    weights = 4 * ((E - editor_persistent) / n + editor_persistent) if z3 else 4 * E
    if z3 and parallel.offload_param:
        host["editor partition"] = 4 * E / n
        device["editor weights"] = 4 * editor_persistent
    else:
        device["editor weights"] = weights
    grad_shard = 4 * (E / n if parallel.zero_stage >= 2 else E)
    # ZeRO keeps a float32 master copy of its partition even when the weights are float32.
    master = 4 * shard if parallel.zero_stage >= 1 else 0
    states = {"editor master copy": master, "editor gradients": grad_shard, "optimizer state (Adam)": 8 * shard}
    for key, value in states.items():
        (host if parallel.offload_optimizer else device)[key] = value
    if editor.precond_elements:
        device["key preconditioning"] = 4 * editor.precond_elements
    if parallel.offload_optimizer:
        # The offloaded optimizer keeps a float32 gradient buffer of its partition too.
        host["editor gradients (optimizer copy)"] = 4 * shard
    # Reduction buckets: ZeRO-2 double-buffers with overlap_comm. A GPU allocator holds
    # them whole; on CPU only the pages the editor's gradients fill become resident.
    buckets = 2 if (parallel.zero_stage in (1, 2) and parallel.overlap_comm) else 1
    bucket_bytes = 4 * parallel.reduce_bucket_size * buckets
    if not gpu:
        bucket_bytes = min(bucket_bytes, 4 * E)
    device["reduction bucket"] = bucket_bytes if parallel.zero_stage >= 1 else 0
    device["runtime"] = runtime_bytes if runtime_bytes is not None else (GPU_RUNTIME_BYTES if gpu else CPU_RUNTIME_BYTES)
    resident = sum(device.values())

    # Transients, by phase. A gathered element exists up to COPIES times at once: the
    # parameter in use, the flat receive buffer of the all-gather, the per-parameter
    # copy made from it, and on CPU gloo's own staging buffer.
    act = _activation_bytes(model, editor, work, b)
    # One rank gathers from itself: only the flat buffer and the per-parameter copies.
    copies = GATHER_COPIES[parallel.accelerator] if n > 1 else 2
    gathered_base = copies * b * min(P - base_persistent, parallel.prefetch_bucket_size + model.largest_param) if z3 else 0
    # The editor is gathered one block at a time (its modules are called outside the
    # engine's forward, so DeepSpeed never records a trace to prefetch from).
    gathered_editor = copies * 4 * editor.largest_block if z3 else 0
    block_grads = 4 * editor.largest_block  # a block's full gradients before reduction
    # gloo has no reduce-scatter: ZeRO-3 reduces a bucket through a full copy of it.
    staging = 4 * min(parallel.reduce_bucket_size, E) if (not gpu and n > 1 and z3) else 0
    phases = {
        "gradient capture": gathered_base + act["capture"],
        "post-edit pass": gathered_base + max(act["post_equiv"], act["post_loc"]),
        "editor backward": gathered_editor + block_grads + staging + act["editor"],
        "optimizer step": 0 if parallel.offload_optimizer else grad_shard,
    }
    peak_phase = max(phases, key=phases.get)
    device["gathered parameters"] = max(gathered_base, gathered_editor) if z3 else 0
    device["activations"] = max(act["capture"], act["post_equiv"], act["post_loc"])
    total = resident + phases[peak_phase]
    ranks_per_node = math.ceil(n / max(parallel.nodes, 1))
    return Plan(
        model=model.name,
        parallel=asdict(parallel),
        workload=asdict(work),
        base_params=P,
        editor_params=E,
        device=device,
        host=host,
        phases=phases,
        peak_phase=peak_phase,
        device_total=total,
        host_per_rank=sum(host.values()),
        host_per_node=sum(host.values()) * ranks_per_node,
        device_bytes=device_gb * GIB if device_gb else None,
    )
