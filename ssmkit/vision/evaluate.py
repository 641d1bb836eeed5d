"""``ssmkit vision evaluate --model NAME --checkpoint PATH --data DIR``: a checkpoint's top-1 / top-5, paper beside.

The checkpoint is either a Lightning ``.ckpt`` written by ``ssmkit vision fit`` (the model is rebuilt from its saved
hyper-parameters; ``--ema`` scores the EMA weights) or any file ``create_model(NAME, pretrained=PATH)`` reads (an
official Vim / PlainMamba checkpoint through its converter, a safetensors export). ``--data`` is detected:

- a folder with ``t10k-images-idx3-ubyte.gz``: the MNIST held-out split (the split of the run when the checkpoint
  records it, else ``--n-train`` / ``--split-seed``);
- a folder with ``cifar-10-batches-py/`` or ``cifar-100-python/``: the CIFAR test set;
- otherwise an ImageFolder tree (``DIR/val`` when it exists, else ``DIR``) with the official eval transform: resize
  ``int(img_size / crop_pct)`` (256 for 224) bicubic, center crop ``img_size``, ImageNet mean / std.

Writes ``evaluation.json`` and ``evaluation.md`` (atomically) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from rich.progress import track
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassAccuracy

from ssmkit.core.checkpoint import load_into, read_checkpoint
from ssmkit.core.evaluation import device_description
from ssmkit.core.io import write_text_atomic

from .data import CIFARDataModule, MNISTDataModule, eval_transform, load_image
from .module import build_model

# ImageNet-1k val top-1 / top-5 of the official checkpoints (reference/vision.md sections 1.4 and 2.4).
PAPER = {
    "vim_tiny_patch16_224": (76.1, 93.0), "vim_small_patch16_224": (80.5, 95.1),
    "vim_base_patch16_224": (81.9, 95.8), "plainmamba_l1": (77.9, 94.0), "plainmamba_l2": (81.6, 95.6),
    "plainmamba_l3": (82.3, 95.9),
}


def detect_dataset(data: Path) -> str:
    """'mnist', 'cifar10', 'cifar100' or 'imagefolder' from the files under ``data``."""
    if (data / "t10k-images-idx3-ubyte.gz").is_file():
        return "mnist"
    if (data / "cifar-10-batches-py").is_dir():
        return "cifar10"
    if (data / "cifar-100-python").is_dir():
        return "cifar100"
    return "imagefolder"


def eval_dataset(kind: str, data: Path, img_size: int, crop_pct: float, data_hparams: dict[str, Any],
                 opts: argparse.Namespace) -> tuple[Dataset, int, str]:
    """The evaluation split, its class count and a one-line description of split and transform."""
    if kind == "mnist":
        keep = {k: data_hparams[k] for k in ("n_train", "split_seed", "img_size") if k in data_hparams}
        kwargs = {"n_train": opts.n_train, "split_seed": opts.split_seed, "img_size": img_size, **keep}
        dm = MNISTDataModule(str(data), **kwargs)
        dm.setup()
        return (dm.datasets["val"], dm.num_classes,
                f"MNIST t10k held-out {len(dm.datasets['val'])} (n_train {kwargs['n_train']}, split_seed "
                f"{kwargs['split_seed']}), {kwargs['img_size']}px, MNIST mean/std")
    if kind in ("cifar10", "cifar100"):
        dm = CIFARDataModule(str(data), name=kind, img_size=img_size)
        dm.setup()
        return dm.datasets["val"], dm.num_classes, f"{kind} test set, resize {img_size} bicubic, CIFAR mean/std"
    root = data / "val" if (data / "val").is_dir() else data
    if not root.is_dir():
        raise FileNotFoundError(f"--data: expected an ImageFolder directory, found {str(data)!r}")
    dataset = torchvision.datasets.ImageFolder(str(root), transform=eval_transform(img_size, crop_pct),
                                               loader=load_image)
    resize = int(img_size / crop_pct)
    return (dataset, len(dataset.classes),
            f"ImageFolder {root}, resize {resize} bicubic, center crop {img_size}, ImageNet mean/std")


def load_model(opts: argparse.Namespace) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The model with the checkpoint's weights, the model hyper-parameters and the data hyper-parameters it records."""
    checkpoint = read_checkpoint(opts.checkpoint)
    extra = json.loads(opts.model_kwargs) if opts.model_kwargs else {}
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint and "hyper_parameters" in checkpoint:
        hp = dict(checkpoint["hyper_parameters"])
        if hp.get("model_name") != opts.model:
            raise ValueError(f"--model {opts.model!r} does not match the checkpoint's model_name "
                             f"{hp.get('model_name')!r} ({opts.checkpoint})")
        model = build_model(hp["model_name"], hp.get("num_classes"), hp.get("in_chans"), hp.get("img_size"),
                            **{**(hp.get("model_kwargs") or {}), **extra})
        prefix = "ema.module." if opts.ema else "model."
        state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{opts.checkpoint}: no '{prefix}*' weights" + (" (trained without EMA?)" if opts.ema
                                                                             else ""))
        load_into(model, state, strict=True)
        return model, hp, dict(checkpoint.get("datamodule_hyper_parameters") or {})
    if opts.ema:
        raise ValueError("--ema applies to Lightning checkpoints of `ssmkit vision fit`; for an official file name "
                         "the weights to use when exporting it (ssmkit export --key model_ema)")
    model = build_model(opts.model, num_classes=opts.num_classes, pretrained=opts.checkpoint, **extra)
    return model, {"model_name": opts.model, "model_kwargs": extra}, {}


def evaluate(model: torch.nn.Module, dataset: Dataset, num_classes: int, batch_size: int, num_workers: int,
             device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 accuracy (percent) over every image of ``dataset``."""
    metrics = {k: MulticlassAccuracy(num_classes, top_k=min(k, num_classes), average="micro").to(device)
               for k in (1, 5)}
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    model = model.to(device).eval()
    with torch.inference_mode():
        for x, y in track(loader, description="evaluating", transient=True):
            logits = model(x.to(device))  # [B, num_classes]
            if logits.shape[-1] != num_classes:
                raise ValueError(f"the model predicts {logits.shape[-1]} classes, the data has {num_classes}")
            for metric in metrics.values():
                metric.update(logits, y.to(device))
    return {f"top{k}": round(100.0 * float(m.compute()), 3) for k, m in metrics.items()}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ssmkit vision evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ssmkit or timm model name, e.g. vim_tiny_patch16_224")
    parser.add_argument("--checkpoint", required=True, help="`ssmkit vision fit` .ckpt or official file")
    parser.add_argument("--data", required=True, help="ImageFolder tree, MNIST idx folder or CIFAR root")
    parser.add_argument("--ema", action="store_true", help="score the EMA weights of a Lightning checkpoint")
    parser.add_argument("--img-size", type=int, default=None, help="eval crop (default: the checkpoint's, else 224)")
    parser.add_argument("--crop-pct", type=float, default=0.875, help="resize = img_size / crop_pct (ImageFolder)")
    parser.add_argument("--num-classes", type=int, default=None, help="classes of an official checkpoint's head")
    parser.add_argument("--model-kwargs", default=None, help='JSON model arguments, e.g. \'{"backend": "torch"}\'')
    parser.add_argument("--n-train", type=int, default=8000, help="MNIST split size if the checkpoint has none")
    parser.add_argument("--split-seed", type=int, default=0, help="MNIST split seed if the checkpoint has none")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="output folder (default: runs/vision/evaluate/<model>)")
    opts = parser.parse_args(argv)
    if not Path(opts.checkpoint).is_file():
        parser.error(f"--checkpoint: expected an existing file, found {opts.checkpoint!r}")
    if not Path(opts.data).is_dir():
        parser.error(f"--data: expected an existing directory, found {opts.data!r}")
    if not 0.0 < opts.crop_pct <= 1.0:
        parser.error(f"--crop-pct: expected a value in (0, 1], found {opts.crop_pct}")
    return opts


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, evaluate, write ``evaluation.json`` / ``evaluation.md``; returns the result dict."""
    opts = parse_args(argv)
    start = time.perf_counter()
    model, model_hp, data_hp = load_model(opts)
    data = Path(opts.data)
    kind = detect_dataset(data)
    img_size = opts.img_size or model_hp.get("img_size") or 224
    dataset, num_classes, description = eval_dataset(kind, data, img_size, opts.crop_pct, data_hp, opts)
    device = torch.device(opts.device)
    scores = evaluate(model, dataset, num_classes, opts.batch_size, opts.num_workers, device)
    paper = PAPER.get(opts.model) if kind == "imagefolder" and num_classes == 1000 else None
    result = dict(model=opts.model, checkpoint=str(opts.checkpoint), weights="ema" if opts.ema else "model",
                  dataset=kind, data=str(data), split=description, images=len(dataset), **scores,
                  paper_top1=paper[0] if paper else None, paper_top5=paper[1] if paper else None,
                  seconds=round(time.perf_counter() - start, 1), device=device_description(device),
                  command="ssmkit vision evaluate " + " ".join(argv if argv is not None else []))
    out = Path(opts.out or Path("runs/vision/evaluate") / opts.model)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "evaluation.json", json.dumps(result, indent=1))
    write_text_atomic(out / "evaluation.md", markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    """The result as a Markdown section: command, data, device, and ours beside the paper."""
    def paper(key: str) -> str:
        return f"{r[key]}" if r[key] is not None else "n/a"

    def diff(ours: float, key: str) -> str:
        return f"{ours - r[key]:+.2f}" if r[key] is not None else "n/a"

    return "\n".join([
        f"### {r['model']} ({r['weights']} weights) on {r['dataset']}", "",
        f"Command: `{r['command']}`  ", f"Checkpoint: `{r['checkpoint']}`  ",
        f"Data: {r['split']}, {r['images']} images  ", f"Device: {r['device']}; {r['seconds']} s", "",
        "| metric | ours | paper (ImageNet-1k) | ours − paper |", "|---|---|---|---|",
        f"| top-1 (%) | {r['top1']:.2f} | {paper('paper_top1')} | {diff(r['top1'], 'paper_top1')} |",
        f"| top-5 (%) | {r['top5']:.2f} | {paper('paper_top5')} | {diff(r['top5'], 'paper_top5')} |",
    ]) + "\n"
