"""GMN training steps on one 100k-node synthetic graph on the CPU: peak memory of the whole process and step times.

Issue #7's target "GMN trains on a 100k-node synthetic graph on the CPU within 24 GiB": this runs a few real
training steps (forward, cross-entropy, backward, Adam) of the default-size GMN on ``ssmkit.graphs.data.
synthetic_graph`` (the same generator as ``graph_scaling.py``) and reports the process's peak resident memory (VmHWM,
exact: everything the process ever held, the graph included), the loss per step and the CPU time per step.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/graph_100k_train.py --nodes 100000 --steps 3

Writes ``benchmarks/results/graph_100k_train-cpu.{json,md}`` (atomically).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import _status_kib, device_name  # noqa: E402

from ssmkit.core.io import write_text_atomic  # noqa: E402
from ssmkit.core.registry import create_model  # noqa: E402
from ssmkit.graphs.data import synthetic_graph  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
GIB = 2**30


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model", default="gmn")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = synthetic_graph(args.nodes, 8.0, 16, 4, seed=0)  # as graph_scaling.py: avg degree 8, 16 features, 4 classes
    model = create_model(args.model, in_channels=16, out_channels=4, hidden_channels=64, num_layers=2,
                         task="node").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before_gib = _status_kib("VmHWM") * 1024 / GIB
    steps = []
    for step in range(args.steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        loss = torch.nn.functional.cross_entropy(model(data), data.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps.append(dict(step=step, loss=round(loss.item(), 4), cpu_s=round(time.process_time() - start_cpu, 1),
                          wall_s=round(time.perf_counter() - start, 1)))
        print(steps[-1], flush=True)
    peak_gib = _status_kib("VmHWM") * 1024 / GIB
    result = dict(device=device_name("cpu"), threads=torch.get_num_threads(), model=args.model, nodes=args.nodes,
                  edges=int(data.edge_index.shape[1]), parameters=sum(p.numel() for p in model.parameters()),
                  peak_rss_gib=round(peak_gib, 2), rss_before_training_gib=round(before_gib, 2), steps=steps,
                  command="python benchmarks/graph_100k_train.py " + " ".join(argv or sys.argv[1:]))
    rows = "\n".join(f"| {s['step']} | {s['loss']} | {s['cpu_s']} | {s['wall_s']} |" for s in steps)
    md = (f"# {args.model} training on a {args.nodes:,}-node synthetic graph ({result['device']}, 1 thread)\n\n"
          f"Command: `{result['command']}`. Graph: {result['edges']:,} directed edges, 16 features, 4 classes; "
          f"model: {result['parameters']:,} parameters (hidden 64, 2 layers, defaults otherwise), Adam lr 1e-3.\n\n"
          f"Peak resident memory of the whole process (VmHWM): **{result['peak_rss_gib']} GiB** "
          f"(before the first step: {result['rss_before_training_gib']} GiB).\n\n"
          f"| step | loss | CPU s | wall s |\n|---|---|---|---|\n{rows}\n")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"graph_{args.nodes // 1000}k_train-cpu"
    write_text_atomic(stem.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(stem.with_suffix(".md"), md)
    print(md)
    return result


if __name__ == "__main__":
    main()
