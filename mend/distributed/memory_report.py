"""A memory plan (:mod:`mend.distributed.memory_model`) as a table for people."""

from __future__ import annotations

from mend.distributed.memory_model import GIB, Plan


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
