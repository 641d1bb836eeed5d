"""DARE's search stage with the full vs the halved attention embedding, trained AUCs, and retrieval NDCG@20.

Three parts, in one run (writes ``benchmarks/results/dare.json`` and ``dare.md`` atomically):

1. speed: ``DARE.search`` (attention-embedding lookups of target and 200 behaviours, scores, top-20) with attention
   dims 16/16/16 vs 8/8/8, at history 200, one thread, interleaved repeats; the ratio is median(full) /
   median(half) from this run. Also the scoring alone (attention keys precomputed), and two item-table sizes.
2. quality: DARE (full), DARE (half) and TWIN trained with their configs (configs/recsys/{dare,twin}/ml-100k*.yaml,
   the longest-history ML-100k users) in this run; test AUC / GAUC / logloss of the best-val-AUC checkpoint.
3. retrieval: NDCG@20 of each trained model's category + position attention scores against the mutual-information
   ground truth (thuml/DARE analysis/attention_accuracy_analysis), on the test samples.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 nice -n 10 python benchmarks/dare_search.py --seeds 1
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ssmkit.core.io import write_text_atomic
from ssmkit.recsys import ctr_evaluate
from ssmkit.recsys.ctr_metrics import CategoryMutualInformation, retrieval_ndcg
from ssmkit.recsys.models.dare import DARE

CONFIGS = {"DARE (attention 16/16/16)": "configs/recsys/dare/ml-100k.yaml",
           "DARE (attention 8/8/8)": "configs/recsys/dare/ml-100k_half.yaml",
           "TWIN (shared 16/16/16)": "configs/recsys/twin/ml-100k.yaml"}
HALF = dict(attention_item_dim=8, attention_category_dim=8, attention_time_dim=8)


def search_speed(num_items: int, batch: int, length: int, repeats: int, seed: int = 0) -> dict:
    """Median seconds of ``search`` and of the scoring alone, full vs half attention dims, interleaved."""
    models = {"full": DARE(num_items, 218).eval(), "half": DARE(num_items, 218, **HALF).eval()}
    g = torch.Generator().manual_seed(seed)
    inputs = (torch.randint(1, num_items, (batch,), generator=g), torch.randint(0, 218, (batch,), generator=g),
              torch.randint(1, num_items, (batch, length), generator=g),
              torch.randint(0, 218, (batch, length), generator=g))
    keys = {}
    with torch.inference_mode():
        for name, model in models.items():
            positions = torch.arange(length, 0, -1).expand(batch, length)  # [B, L]
            keys[name] = model.attention_embedding(inputs[2], inputs[3], positions)  # [B, L, Da]
    query = {name: torch.randn(batch, k.shape[-1], 1, generator=g) for name, k in keys.items()}  # [B, Da, 1]
    times: dict[str, list[float]] = {f"{part}_{name}": [] for part in ("search", "score") for name in models}
    with torch.inference_mode():
        for step in range(repeats + 2):  # two warm-up rounds
            for name, model in models.items():
                start = time.perf_counter()
                model.search(*inputs)
                mid = time.perf_counter()
                torch.bmm(keys[name], query[name]).squeeze(-1).topk(20, dim=1)  # [B, 20]
                end = time.perf_counter()
                if step >= 2:
                    times[f"search_{name}"].append(mid - start)
                    times[f"score_{name}"].append(end - mid)
    med = {k: statistics.median(v) for k, v in times.items()}
    return dict(num_items=num_items, batch=batch, history=length, repeats=repeats,
                **{f"{k}_ms": round(v * 1e3, 3) for k, v in med.items()},
                search_ratio=round(med["search_full"] / med["search_half"], 3),
                score_ratio=round(med["score_full"] / med["score_half"], 3))


def category_position_scores(model: DARE, target_category: torch.Tensor, history_category: torch.Tensor,
                             history_item: torch.Tensor) -> torch.Tensor:
    """gsu_performance.py's learned relevance: category + position attention score (item part left out) [B, L]."""
    tables = model.attention_embedding if model.decoupled else model.embedding
    length = history_category.shape[1]
    semantic_dim = tables.item.embedding_dim + tables.category.embedding_dim
    target = tables.category(target_category)  # [B, Dc]
    behaviours = tables.category(history_category)  # [B, L, Dc]
    positions = tables.position(torch.arange(length, 0, -1))  # [L, Dt]
    now = tables.position.weight[0]  # [Dt]
    scores = (behaviours @ target.unsqueeze(-1)).squeeze(-1) / math.sqrt(semantic_dim) \
        + (positions @ now) / math.sqrt(now.shape[0])  # [B, L]
    return scores.masked_fill(history_item == 0, float("-inf"))


def retrieval(models: dict[str, DARE], data, thresholds: dict, k: int = 20) -> dict:
    """Mean NDCG@k per model on the scored test rows; the ground truth is counted on train + test samples."""
    splits = [data.splits["train"], data.splits["test"]]
    cat = {f: torch.as_tensor(np.concatenate([getattr(s, f) for s in splits]))
           for f in ("category", "history_category", "history_item", "label")}
    truth = CategoryMutualInformation(cat["category"], cat["history_category"], cat["history_item"], cat["label"],
                                      **thresholds)
    test = data.splits["test"]
    target, hist_cat, hist_item = (torch.as_tensor(x) for x in (test.category, test.history_category,
                                                                 test.history_item))
    relevance, rows = truth.relevance(target, hist_cat, hist_item)
    out = {"scored_rows": int(rows.sum()), "test_rows": len(rows), "thresholds": thresholds, "ndcg": {}}
    with torch.no_grad():
        for name, model in models.items():
            scores = category_position_scores(model.cpu().eval(), target, hist_cat, hist_item)
            ndcg = retrieval_ndcg(scores[rows], relevance[rows], k=k)
            out["ndcg"][name] = round(float(ndcg.nanmean()), 4)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--out", default="benchmarks/results/dare")
    parser.add_argument("--runs", default="runs/benchmarks/dare_search", help="training output folder")
    opts = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    speed = [search_speed(n, opts.batch, 200, opts.repeats) for n in (1684, 1_000_000)]
    speed_s = round(time.perf_counter() - started, 1)
    quality, trained = {}, {}
    for name, config in CONFIGS.items():
        root = Path(opts.runs) / f"{Path(config).parent.name}_{Path(config).stem}"
        runs = [ctr_evaluate.run_seed(config, seed, root, None, ["--trainer.enable_progress_bar", "false"])
                for seed in opts.seeds]
        trained[name] = runs[-1]["cli"].model.model
        data = runs[-1]["cli"].datamodule
        quality[name] = dict(config=config, runs=[{k: v for k, v in r.items() if k != "cli"} for r in runs],
                             **ctr_evaluate.summarize(runs))
    torch.manual_seed(0)
    trained["untrained DARE (random init, reference)"] = DARE(data.num_items, data.num_categories)
    # ML-100k is ~1e-3 of Taobao: the official thresholds (700 / 50 / 20) are scaled down, see the results file
    ndcg = retrieval(trained, data, dict(min_target_samples=300, min_count=3, max_rare=200))
    result = dict(command="python benchmarks/dare_search.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  device=f"{ctr_evaluate.cpu_name()}, torch threads {torch.get_num_threads()}",
                  speed=speed, speed_seconds=speed_s, quality=quality, retrieval=ndcg, samples={
                      s: len(v) for s, v in data.splits.items()},
                  wall_seconds=round(time.perf_counter() - started, 1))
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out.with_suffix(".json"), json.dumps(result, indent=1))
    write_text_atomic(out.with_suffix(".md"), markdown(result))
    print(json.dumps({k: v for k, v in result.items() if k != "quality"}, indent=1))
    for name, q in quality.items():
        print(name, {m: round(q[f"{m}_mean"], 4) for m in ctr_evaluate.METRICS})
    return result


def markdown(r: dict) -> str:
    """The run's tables (speed, trained quality, retrieval NDCG) as Markdown."""
    lines = [f"Command: `{r['command']}`  ", f"Device: {r['device']}; wall time {r['wall_seconds']} s "
             f"(speed part {r['speed_seconds']} s)", "", "| item table | batch x history | search full ms | "
             "search half ms | **search ratio** | scoring-only full ms | scoring-only half ms | scoring ratio |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['num_items']:,} | {s['batch']} x {s['history']} | {s['search_full_ms']} | {s['search_half_ms']} "
              f"| **{s['search_ratio']}x** | {s['score_full_ms']} | {s['score_half_ms']} | {s['score_ratio']}x |"
              for s in r["speed"]]
    lines += ["", f"Trained on ML-100k, longest-history users (samples {r['samples']}), seeds "
              f"{[x['seed'] for x in next(iter(r['quality'].values()))['runs']]}:", "",
              "| model | test AUC | test GAUC | test logloss | epochs run (best-val-AUC checkpoint tested) |",
              "|---|---|---|---|---|"]
    for name, q in r["quality"].items():
        epochs = [x["epochs"] for x in q["runs"]]
        lines.append(f"| {name} | {q['auc_mean']:.4f} ± {q['auc_std']:.4f} | {q['gauc_mean']:.4f} ± "
                     f"{q['gauc_std']:.4f} | {q['logloss_mean']:.4f} ± {q['logloss_std']:.4f} | {epochs} |")
    ret = r["retrieval"]
    lines += ["", f"Retrieval NDCG@20 on {ret['scored_rows']} of {ret['test_rows']} test rows "
              f"(thresholds {ret['thresholds']}):", "", "| model | NDCG@20 |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in ret["ndcg"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
