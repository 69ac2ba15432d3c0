"""Does a compose model place its objects by the relation word? Offsets per relation, on the same seeds.

    python benchmarks/relation_probe.py --ckpt outputs/<compose run>/checkpoints/last.ckpt --out probe.json

For each relation ("to the left of", "to the right of", "above", "below") and each of a few pairs of
colour-shape pairs (A, B), samples "a A <relation> a B" on the same seeds. It finds the two objects with
the compose evaluator's detector and measures B's centre minus A's along the relation's axis (x for left
and right, y for above and below; image rows grow downwards). A model that follows the words gives
opposite signs for opposite relations ("to the left of": B to the right, positive; "to the right of":
negative). A model that ignores them gives the same distribution for both. Samples where A or B is not
found exactly once are left out and counted. Prints one line per relation; --out writes the JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ldm.cli import command_parser, run_command
from ldm.data.compose_grammar import RELATIONS
from ldm.eval.detect import DetectedObject, detect_objects
from ldm.eval.evaluate import to_uint8
from ldm.pipeline import Text2Image
from ldm.samplers.presets import add_sampler_args, sampler_from_args

log = logging.getLogger("relation_probe")

PAIRS = (
    ("cyan circle", "green square"),
    ("red square", "blue triangle"),
    ("yellow circle", "magenta square"),
    ("magenta triangle", "cyan square"),
)
"""(A, B) colour-shape pairs: every colour, shape and no held-out pair of the compose world."""


def axis_offset(objects: Sequence[DetectedObject], first: str, second: str, relation: str) -> float | None:
    """B's centre minus A's along the relation's axis, when each of the two pairs is found exactly once."""
    found_a = [o for o in objects if o.binding == first]
    found_b = [o for o in objects if o.binding == second]
    if len(found_a) != 1 or len(found_b) != 1:
        return None
    axis = RELATIONS[relation][0]
    a, b = (found_a[0].cx, found_a[0].cy), (found_b[0].cx, found_b[0].cy)
    return float(b[axis] - a[axis])


def summary(offsets: list[float], missed: int) -> dict:
    """n, the mean and standard deviation of the offsets, the share that is positive, and the misses."""
    values = np.asarray(offsets, dtype=np.float64)
    found = len(values) > 0
    return {
        "n": len(values),
        "mean": float(values.mean()) if found else None,
        "std": float(values.std()) if found else None,
        "positive": float((values > 0).mean()) if found else None,
        "missed": missed,
    }


def probe(pipe: Text2Image, seeds: Sequence[int], sampler=None) -> dict[str, dict]:
    """Per relation, the summary of B-minus-A offsets along its axis over PAIRS x seeds."""
    result = {}
    for relation in RELATIONS:
        offsets, missed = [], 0
        for first, second in PAIRS:
            images = to_uint8(pipe([f"a {first} {relation} a {second}"] * len(seeds), list(seeds), sampler=sampler))
            for image in images:
                offset = axis_offset(detect_objects(image), first, second, relation)
                if offset is None:
                    missed += 1
                else:
                    offsets.append(offset)
        result[relation] = summary(offsets, missed)
        log.info("%s: %s", relation, result[relation])
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = command_parser("benchmarks/relation_probe.py", __doc__)
    p.add_argument("--ckpt", required=True, help="a stage-2 checkpoint of the compose world")
    p.add_argument("--seeds", type=int, default=12, help="seeds 0 .. N-1 for every prompt")
    add_sampler_args(p)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", default=None, help="also write the JSON result here")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds must be >= 1, got {args.seeds}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    pipe = Text2Image.from_checkpoint(args.ckpt, device=args.device)
    result = {"ckpt": str(args.ckpt), "pairs": [list(p) for p in PAIRS], "seeds": args.seeds}
    result["relations"] = probe(pipe, range(args.seeds), sampler_from_args(pipe.sampler, args))
    for relation, row in result["relations"].items():
        mean = "-" if row["mean"] is None else f"{row['mean']:+.3f} (sd {row['std']:.3f})"
        positive = "-" if row["positive"] is None else f"{row['positive']:.2f}"
        print(f"{relation:16s} n={row['n']:3d}  B minus A along the axis: {mean}  positive: {positive}")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_command(main)
