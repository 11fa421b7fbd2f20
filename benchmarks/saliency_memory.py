"""Peak host memory of SalUn's static saliency mask on a whole full-size UNet, beside the code it replaced.

    python benchmarks/saliency_memory.py --model sd15 --samples 2
    python benchmarks/saliency_memory.py --model sd15 --variants current concatenated torch.topk

SalUn's SD preset sums the gradient of its saliency loss over the forget set and keeps the top half
of ``|g|`` ranked over every UNet parameter (``topk=0.5``, ``mask_granularity="global"``).  This
script runs that arithmetic on random gradients shaped like the UNet of ``--model`` (the shapes of
`erasekit.models.cost`'s configs; no download, no forward pass) and reports, per variant, the peak
resident memory it added to its process (``ru_maxrss``; each variant runs in a fresh process), in
GiB and in bytes per UNet parameter, its seconds on one thread (drawing the random gradients
included), and whether its masks equal the current code's:

- ``current``: `erasekit.methods.trust.losses.summed` (in place) and
  `erasekit.methods.saliency.saliency_masks` (`top_k_masks`, one tensor at a time);
- ``concatenated``: the reference the current code replaced: a new dict per sum, the magnitudes of
  every tensor concatenated and copied once more, then the same bisection on the concatenation;
- ``torch.topk``: the first reference: the concatenation ranked with ``torch.topk`` (values and
  int64 indices of half the entries).

The gradient memory itself (4 bytes per parameter for the running sum) is in every row; on a GPU
the model's weights and the reference copy come on top, as in `erasekit erase --dry-run`'s estimate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

import torch

VARIANTS = ("current", "concatenated", "torch.topk")


def unet_shapes(model: str) -> dict[str, tuple[int, ...]]:
    from erasekit.models.cost import KNOWN_MODELS, meta_unet

    return {n: tuple(p.shape) for n, p in meta_unet(KNOWN_MODELS[model].unet).named_parameters()}


def random_grads(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=g) for n, s in shapes.items()}


def masks_current(shapes, samples: int, topk: float) -> dict[str, torch.Tensor]:
    from erasekit.methods.saliency import saliency_masks
    from erasekit.methods.trust.losses import summed

    total = summed(random_grads(shapes, i) for i in range(samples))
    return saliency_masks(total, topk=topk, granularity="global")


def _concatenated_sum(shapes, samples: int) -> tuple[list[str], torch.Tensor]:
    total = None
    for i in range(samples):
        g = random_grads(shapes, i)
        total = g if total is None else {n: total[n] + g[n] for n in g}
        del g
    names = list(total)
    return names, torch.cat([total[n].abs().reshape(-1).float() for n in names])


def _split(names, shapes, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    out, i = {}, 0
    for n in names:
        k = int(torch.Size(shapes[n]).numel())
        out[n] = keep[i : i + k].reshape(shapes[n])
        i += k
    return out


def masks_concatenated(shapes, samples: int, topk: float) -> dict[str, torch.Tensor]:
    from erasekit.methods.saliency import top_k_mask

    names, flat = _concatenated_sum(shapes, samples)
    k = min(flat.numel(), int(round(topk * flat.numel())))
    return _split(names, shapes, top_k_mask(flat.abs(), k) & (flat > 0))


def masks_torch_topk(shapes, samples: int, topk: float) -> dict[str, torch.Tensor]:
    names, flat = _concatenated_sum(shapes, samples)
    k = min(flat.numel(), int(round(topk * flat.numel())))
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat.abs(), k).indices] = True
    return _split(names, shapes, keep & (flat > 0))


RUNS = {"current": masks_current, "concatenated": masks_concatenated, "torch.topk": masks_torch_topk}


def digest(masks: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for n in sorted(masks):
        h.update(n.encode())
        h.update(masks[n].contiguous().view(-1).numpy().tobytes())
    return h.hexdigest()[:16]


def measure(variant: str, model: str, samples: int, topk: float) -> dict:
    """One variant in this process: peak resident memory it added, seconds, mask size and digest."""
    torch.set_num_threads(1)
    shapes = unet_shapes(model)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    masks = RUNS[variant](shapes, samples, topk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    params = sum(int(torch.Size(s).numel()) for s in shapes.values())
    return {"variant": variant, "model": model, "samples": samples, "topk": topk, "params": params,
            "peak_bytes": peak, "seconds": seconds, "kept": int(sum(int(m.sum()) for m in masks.values())),
            "digest": digest(masks)}


def table(rows: list[dict]) -> str:
    ref = next((r["digest"] for r in rows if r["variant"] == "current"), rows[0]["digest"])
    lines = ["| variant | UNet params | samples | peak added GiB | bytes / param | seconds | kept | same masks as current |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['params'] / 1e6:.0f}M | {r['samples']} | {r['peak_bytes'] / 2**30:.2f} "
                     f"| {r['peak_bytes'] / r['params']:.1f} | {r['seconds']:.1f} | {r['kept']} "
                     f"| {'yes' if r['digest'] == ref else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sd15", help="sd15, sd21 or sdxl (the UNet whose shapes are used)")
    ap.add_argument("--samples", type=int, default=2, help="gradients summed (SalUn's SD preset: 16)")
    ap.add_argument("--topk", type=float, default=0.5)
    ap.add_argument("--variants", nargs="+", default=["current", "concatenated"], choices=VARIANTS)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)  # run one variant, print its row
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.samples, args.topk)))
        return 0
    rows = []
    for v in args.variants:
        out = subprocess.run([sys.executable, __file__, "--one", v, "--model", args.model, "--samples",
                              str(args.samples), "--topk", str(args.topk)], capture_output=True, text=True)
        if out.returncode:
            print(f"{v}: failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}",
                  file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.out:
        from erasekit.world.atomic import write_bytes

        write_bytes(args.out, (json.dumps(rows, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
