"""``mend plan``: the memory one rank needs to meta-train a MEND editor with DeepSpeed.

    mend plan --config path/to/config.json --ranks 16 --nodes 2 --zero-stage 3 --device-gb 80
    mend plan --model-type llama --hidden-size 8192 --intermediate-size 28672 \\
        --num-layers 80 --num-heads 64 --num-kv-heads 8 --vocab-size 32000 \\
        --ranks 16 --nodes 2 --zero-stage 3 --offload --device-gb 80

The model is built on PyTorch's ``meta`` device from its transformers config (no
weights, no memory), so every parameter is counted exactly and the edited matrices are
the ones training would pick (:func:`mend.models.targets.find_targets`). The editor's
size is MEND's formula (design doc §2): ``n_blocks * (2·D·r + D + 2·n_modes·D)`` per
shape-shared network, ``D = d_in + d_out``, ``r = min(rank, D)``, plus one edit lr per
matrix.

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
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import typer

GIB = 1024**3

# Measured on the CPU runs: resident memory that is not a tensor (gloo and shared-memory
# communication buffers, allocator metadata) is about this much per rank.
CPU_RUNTIME_BYTES = 128 * 1024**2
# CUDA context + NCCL communicators + caching-allocator fragmentation, per GPU.
GPU_RUNTIME_BYTES = 3 * GIB
# How many copies of an element being all-gathered exist at once (see plan()).
GATHER_COPIES = {"gpu": 3, "cpu": 4}


@dataclass(frozen=True)
class ModelShape:
    """Sizes of a base model and of the matrices MEND edits in it."""

    name: str
    model_type: str
    n_params: int
    largest_param: int
    param_numels: tuple[int, ...] = field(repr=False)
    hidden: int
    intermediate: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    vocab: int
    first_edited_layer: int
    targets: tuple[tuple[str, int, int], ...]  # (module name, d_in, d_out)

    def persistent(self, threshold: int) -> int:
        """Elements in parameters ZeRO-3 keeps whole (``numel <= threshold``)."""
        return sum(n for n in self.param_numels if n <= threshold)


def _get(config, *names: str, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def shape_of(config, patterns: list[str] | None = None, name: str | None = None) -> ModelShape:
    """Build the model on the meta device and measure it (no memory is allocated)."""
    import torch

    from mend.models.loading import _AUTO_CLASSES, _infer_kind
    from mend.models.targets import find_targets, layer_template

    with torch.device("meta"):
        model = _AUTO_CLASSES[_infer_kind(config)].from_config(config)
    numels = tuple(p.numel() for p in model.parameters())
    targets = find_targets(model, patterns)
    layers = [n for t in targets if (n := layer_template(t.module_name)[1]) >= 0]
    n_layers = int(_get(config, "num_hidden_layers", "n_layer", "num_layers", default=1))
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model", default=0))
    heads = int(_get(config, "num_attention_heads", "n_head", "num_heads", default=1))
    return ModelShape(
        name=name or getattr(config, "_name_or_path", "") or config.model_type,
        model_type=config.model_type,
        n_params=sum(numels),
        largest_param=max(numels),
        param_numels=numels,
        hidden=hidden,
        intermediate=int(_get(config, "intermediate_size", "n_inner", "ffn_dim", "d_ff", default=4 * hidden)
                         or 4 * hidden),
        n_layers=n_layers,
        n_heads=heads,
        n_kv_heads=int(_get(config, "num_key_value_heads", default=heads)),
        vocab=int(config.vocab_size),
        first_edited_layer=min(layers) if layers else 0,
        targets=tuple((t.module_name, t.d_in, t.d_out) for t in targets),
    )


@dataclass(frozen=True)
class EditorShape:
    n_params: int
    largest_block: int  # parameters of the largest residual block (gathered at once)
    groups: tuple[tuple[int, int, int], ...]  # (D, rank, n_modes) per network
    n_targets: int
    precond_elements: int  # key-preconditioning buffers (replicated), 0 when off
    param_numels: tuple[int, ...] = field(default=(), repr=False)
    n_blocks: int = 2

    def persistent(self, threshold: int) -> int:
        return sum(n for n in self.param_numels if n <= threshold)


def editor_shape(
    targets: tuple[tuple[str, int, int], ...], rank: int = 1920, n_blocks: int = 2,
    share_by_shape: bool = True, key_preconditioning: bool = False,
) -> EditorShape:
    """MEND's editor size: ``n_blocks * (2·D·r + D + 2·n_modes·D)`` per network."""
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for module, d_in, d_out in targets:
        key = f"{d_in}x{d_out}" if share_by_shape else module
        groups[key].append((d_in, d_out))
    total, largest, shapes, numels = len(targets), 0, [], [len(targets)]
    for members in groups.values():
        d_in, d_out = members[0]
        dim = d_in + d_out
        r = min(rank, dim)
        modes = len(members)
        block = 2 * dim * r + dim + 2 * modes * dim
        total += n_blocks * block
        largest = max(largest, block)
        shapes.append((dim, r, modes))
        # down (r, D), up (D, r), bias (D), mode scale and shift (n_modes, D)
        numels += [r * dim, dim * r, dim, modes * dim, modes * dim] * n_blocks
    precond = sum(d_in * d_in for _, d_in, _ in targets) if key_preconditioning else 0
    return EditorShape(total, largest, tuple(shapes), len(targets), precond, tuple(numels), n_blocks)


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


def format_plan(p: Plan) -> str:
    """A human-readable table of a plan (GiB)."""
    par = p.parallel
    offload = [k for k in ("offload_param", "offload_optimizer") if par[k]]
    lines = [
        f"{p.model}: {p.base_params / 1e9:.2f} B base parameters (frozen, {par['dtype']}), "
        f"editor {p.editor_params / 1e6:.1f} M parameters (float32)",
        f"{par['ranks']} ranks on {par['nodes']} node(s), ZeRO-{par['zero_stage']}"
        + (f", offload: {', '.join(offload)}" if offload else "")
        + f"; micro-batch: {p.workload['n_edits']} edit(s), {p.workload['n_loc']} locality probes, "
        f"{p.workload['seq_len']} tokens",
        "",
        f"{'per rank':<34}{'device GiB':>12}{'host GiB':>12}",
    ]
    keys = list(dict.fromkeys([*p.device, *p.host]))
    for key in keys:
        if key in ("gathered parameters", "activations"):
            continue
        dev, hst = p.device.get(key, 0.0), p.host.get(key, 0.0)
        if dev == 0 and hst == 0:
            continue
        lines.append(f"{key:<34}{dev / GIB:>12.2f}{hst / GIB:>12.2f}")
    lines.append(f"{'gathered parameters (transient)':<34}{p.device['gathered parameters'] / GIB:>12.2f}")
    lines.append(f"{'activations (largest pass)':<34}{p.device['activations'] / GIB:>12.2f}")
    lines.append("")
    lines.append("transient peak by phase (GiB): " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in p.phases.items()))
    lines.append(f"peak per rank: {p.device_total / GIB:.2f} GiB on the device (during the {p.peak_phase})"
                 + (f"; host memory per node: {p.host_per_node / GIB:.1f} GiB" if p.host else ""))
    if p.device_bytes is not None:
        verdict = "fits" if p.fits else "does NOT fit"
        lines.append(f"device of {p.device_bytes / GIB:.0f} GiB: {verdict} "
                     f"({100 * p.device_total / p.device_bytes:.0f}% used)")
    return "\n".join(lines)


def load_config(path: str | Path):
    """A transformers config from a ``config.json`` file or a model folder."""
    from transformers import AutoConfig

    path = Path(path)
    if path.is_dir():
        return AutoConfig.from_pretrained(path)
    raw = json.loads(path.read_text())
    model_type = raw.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{path} has no model_type")
    for key in ("architectures", "transformers_version", "_name_or_path"):
        raw.pop(key, None)
    config = AutoConfig.for_model(model_type, **raw)
    config._name_or_path = path.parent.name if path.name == "config.json" else path.stem
    return config


def config_from_sizes(model_type: str, **sizes) -> object:
    """A transformers config of ``model_type`` with the given sizes (None = default)."""
    from transformers import AutoConfig

    names = {
        "hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
        "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads", "vocab_size": "vocab_size",
    }
    kwargs = {names[k]: v for k, v in sizes.items() if v is not None}
    config = AutoConfig.for_model(model_type, **kwargs)
    config._name_or_path = f"{model_type}-custom"
    return config


def plan_command(
    config: Path = typer.Option(None, "--config", exists=True,
                                help="the model's config.json (or a model folder)"),
    model_type: str = typer.Option(None, help="transformers model type, e.g. llama (with the size options)"),
    hidden_size: int = typer.Option(None),
    intermediate_size: int = typer.Option(None),
    num_layers: int = typer.Option(None),
    num_heads: int = typer.Option(None),
    num_kv_heads: int = typer.Option(None),
    vocab_size: int = typer.Option(None),
    ranks: int = typer.Option(1, help="ranks (GPUs) in total"),
    nodes: int = typer.Option(1, help="nodes the ranks are spread over"),
    deepspeed: Path = typer.Option(None, exists=True,
                                   help="read stage, offload, dtype and buckets from this DeepSpeed JSON"),
    zero_stage: int = typer.Option(None, help="ZeRO stage (default 3, or the --deepspeed file's)"),
    offload: bool = typer.Option(None, "--offload/--no-offload",
                                 help="offload parameters and optimizer state to host memory"),
    offload_param: bool = typer.Option(None, "--offload-param/--no-offload-param"),
    offload_optimizer: bool = typer.Option(None, "--offload-optimizer/--no-offload-optimizer"),
    dtype: str = typer.Option(None, help="base model dtype: bf16 | fp32 (default bf16)"),
    device_gb: float = typer.Option(None, help="memory of one device, to say whether it fits"),
    train_config: Path = typer.Option(None, exists=True,
                                      help="training YAML: n_edits, n_loc, chunk_size and the editor's settings"),
    n_edits: int = typer.Option(None), n_loc: int = typer.Option(None),
    seq_len: int = typer.Option(48, help="tokens per prompt + target (padded)"),
    target_len: int = typer.Option(8, help="scored target tokens per example"),
    chunk_size: int = typer.Option(None, help="examples per language-model pass (MetaStep chunking)"),
    editor_rank: int = typer.Option(None, help="editor rank (default 1920, capped at d_in + d_out)"),
    accelerator: str = typer.Option("gpu", help="gpu | cpu (cpu counts only touched buffer pages)"),
    runtime_gb: float = typer.Option(None, help="per-rank runtime overhead (default 3 on GPU, 0.125 on CPU)"),
    as_json: bool = typer.Option(False, "--json", help="print the plan as JSON"),
) -> None:
    """Per-rank memory of ZeRO-sharded meta-training, and whether it fits a device."""
    from mend.training.config import TrainConfig

    if (config is None) == (model_type is None):
        raise typer.BadParameter("give either --config or --model-type (with sizes)")
    hf_config = load_config(config) if config else config_from_sizes(
        model_type, hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
        num_heads=num_heads, num_kv_heads=num_kv_heads, vocab_size=vocab_size,
    )
    train = TrainConfig.from_yaml(train_config) if train_config else None
    editor_cfg = train.editor if train else None
    shape = shape_of(hf_config, editor_cfg.patterns if editor_cfg else None)
    editor = editor_shape(
        shape.targets,
        rank=editor_rank or (editor_cfg.rank if editor_cfg else 1920),
        n_blocks=editor_cfg.n_blocks if editor_cfg else 2,
        share_by_shape=editor_cfg.share_by_shape if editor_cfg else True,
        key_preconditioning=bool(editor_cfg and editor_cfg.key_preconditioning == "covariance"),
    )
    par = (Parallel.from_deepspeed(deepspeed, ranks, nodes, accelerator) if deepspeed
           else Parallel(ranks=ranks, nodes=nodes, accelerator=accelerator))  # type: ignore[arg-type]
    changes: dict = {}
    if zero_stage is not None:
        changes["zero_stage"] = zero_stage
    if offload is not None:
        changes["offload_param"] = changes["offload_optimizer"] = offload
    if offload_param is not None:
        changes["offload_param"] = offload_param
    if offload_optimizer is not None:
        changes["offload_optimizer"] = offload_optimizer
    if dtype is not None:
        changes["dtype"] = {"bfloat16": "bf16", "float32": "fp32"}.get(dtype, dtype)
    elif train is not None and not deepspeed:
        changes["dtype"] = "bf16" if train.dtype in ("bf16", "bfloat16") else "fp32"
    par = Parallel(**{**asdict(par), **changes})
    work = Workload(
        n_edits=n_edits or (train.n_edits if train else 1),
        n_loc=n_loc or (train.n_loc if train else 4),
        seq_len=seq_len, target_len=target_len,
        equiv_includes_prompt=train.equiv_includes_prompt if train else True,
        chunk_size=chunk_size or (getattr(train, "chunk_size", None) if train else None),
    )
    runtime = runtime_gb * GIB if runtime_gb is not None else None
    result = plan(shape, editor, par, work, device_gb=device_gb, runtime_bytes=runtime)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        typer.echo(format_plan(result))
