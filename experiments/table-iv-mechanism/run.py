"""Issue 24: what produces the LTD paper's Table IV collapse? Controlled ablations, one JSON per run.

    python experiments/table-iv-mechanism/run.py --dataset digits --seeds 0          # train + audit, resumable
    python experiments/table-iv-mechanism/run.py --dataset digits --seeds 0 --dry-run
    python experiments/table-iv-mechanism/run.py --summary                            # the table of what exists

Per (dataset, seed): one converged natural teacher, then every arm of config.json's grid (LTD or
TRADES with one factor changed from LTD at fp32, tau 1, CE inner attack with TRADES' Gaussian
start). Each arm is trained with `maskcheck.training.train_run` into
runs/table-iv-mechanism/<dataset>/s<seed>/<arm>/ (not committed; an interrupted run resumes from
last.ckpt), audited cheaply (config.json "audit"), and summarised into
experiments/table-iv-mechanism/results/<dataset>/s<seed>/<arm>.json (committed). An arm whose
JSON exists is skipped, so rerunning the command continues where it stopped.

Per arm the JSON holds: the settings, the teacher's soft-label entropy at T (mean over training
points, normalised by log C: 1 = uniform), per-epoch training-phase robust accuracy and zero-step
shares (run.json history), final clean / held-out PGD accuracy, the audit's robust accuracies
(worst case, PGD-CE, APGD-T where it ran), its grade and flagged checks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO))

BASE = {"precision": "fp32"}  # every arm differs from LTD/TRADES at fp32 in the named factor only


def arms(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """The grid as a list of arms {id, group, method, temperature|entropy, overrides}; ids are file names."""
    out: list[dict[str, Any]] = []
    g = grid.get("precision_x_T")
    if g:
        for prec in g["precisions"]:
            if "trades" in g["methods"]:
                out.append({"id": f"trades-{prec}", "group": "precision_x_T", "method": "trades", "temperature": None,
                            "overrides": {"precision": prec}})
            if "ltd" in g["methods"]:
                for t in g["temps"]:
                    out.append({"id": f"ltd-T{t:g}-{prec}", "group": "precision_x_T", "method": "ltd", "temperature": float(t),
                                "overrides": {"precision": prec}})
    g = grid.get("entropy")
    if g:
        for level in g["levels"]:
            for prec in g["precisions"]:
                out.append({"id": f"ltd-H{level:g}-{prec}", "group": "entropy", "method": "ltd", "entropy": float(level),
                            "overrides": {"precision": prec}})
    g = grid.get("tau")
    if g:
        for tau in g["taus"]:
            out.append({"id": f"ltd-T{g['temperature']:g}-tau{tau:g}", "group": "tau", "method": "ltd",
                        "temperature": float(g["temperature"]), "overrides": {**BASE, "tau": float(tau)}})
    g = grid.get("inner")
    if g:
        for name, over in g["arms"].items():
            out.append({"id": f"ltd-T{g['temperature']:g}-{name}", "group": "inner", "method": "ltd",
                        "temperature": float(g["temperature"]), "overrides": {**BASE, **over}})
    return out


def soft_entropy(teacher_dir: Path, dataset: str, temperature: float, max_train: int | None, device: str,
                 data_dir: Path | None = None) -> dict[str, float]:
    """The teacher's soft labels at T on (up to 5000) training points: mean entropy / log C and logit spread."""
    import torch

    logits = teacher_logits(teacher_dir, dataset, max_train, device, data_dir)
    p = torch.softmax(logits / temperature, 1)
    h = -(torch.xlogy(p, p)).sum(1) / math.log(logits.shape[1])
    return {"entropy": float(h.mean()), "logit_std": float(logits.std(1).mean()), "top_prob": float(p.max(1).values.mean())}


_LOGITS: dict[tuple[str, str], Any] = {}


def teacher_logits(teacher_dir: Path, dataset: str, max_train: int | None, device: str, data_dir: Path | None = None) -> Any:
    import torch

    from maskcheck import checkpoint
    from maskcheck.data import load_dataset

    key = (str(teacher_dir), dataset)
    if key not in _LOGITS:
        train = load_dataset(dataset, data_dir).train
        n = min(len(train), max_train or len(train), 5000)
        x = torch.stack([train[i][0] for i in range(n)])
        x = x.float().div(255) if x.dtype == torch.uint8 else x
        model = checkpoint.load_run(teacher_dir, device).model.eval()
        with torch.no_grad():
            _LOGITS[key] = torch.cat([model(x[i:i + 500].to(device)).float().cpu() for i in range(0, n, 500)])
    return _LOGITS[key]


def temperature_for_entropy(teacher_dir: Path, dataset: str, level: float, max_train: int | None, device: str,
                            data_dir: Path | None = None) -> float:
    """T at which the teacher's mean normalised soft-label entropy equals `level` (bisection on log T)."""
    lo, hi = math.log(0.05), math.log(1e5)
    for _ in range(60):
        mid = (lo + hi) / 2
        if soft_entropy(teacher_dir, dataset, math.exp(mid), max_train, device, data_dir)["entropy"] < level:
            lo = mid
        else:
            hi = mid
    return round(math.exp((lo + hi) / 2), 3)


def train_teacher(ds_cfg: dict[str, Any], dataset: str, seed: int, runs: Path, device: str, data_dir: Path | None = None) -> Path:
    from maskcheck import checkpoint
    from maskcheck.training import make_config, train_run

    out = runs / "natural"
    if not checkpoint.is_complete_run(out):
        cfg = make_config("natural", dataset, seed=seed, **{**ds_cfg.get("train", {}), **ds_cfg.get("teacher", {})})
        train_run(cfg, out, device=device, data_dir=data_dir, progress=False, log=lambda m: print(m, flush=True))
    return out


def audit(run_dir: Path, audit_cfg: dict[str, Any], seed: int, device: str, data_dir: Path | None = None) -> dict[str, Any]:
    from maskcheck.auditing import run_audit, run_threat
    from maskcheck.checkpoint import load_model
    from maskcheck.data import load_dataset

    loaded = load_model(run_dir, device=device)
    eps, norm = run_threat(loaded)
    t0 = time.perf_counter()
    result = run_audit(loaded, load_dataset(loaded.info.name, data_dir), eps=eps, norm=norm, n=audit_cfg["n"], seed=seed,
                       square_queries=audit_cfg["square_queries"], apgd_iters=audit_cfg["apgd_iters"],
                       autoattack_standard=audit_cfg["autoattack_standard"], overrides=audit_cfg.get("overrides"),
                       device=device, progress=False)
    result.save(run_dir / "audit.json")
    d = result.to_dict()
    return {"n": d["n"], "clean_acc": d["clean_acc"], "robust_acc": d["robust_acc"], "grade": d["verdict"]["grade"],
            "flagged": [c["check"] for c in d["checks"] if c["severity"] in ("fail", "warn")],
            "training_phase_gap": next((c["severity"] for c in d["checks"] if c["check"] == "training-phase-gap"), None),
            "seconds": time.perf_counter() - t0}


def run_arm(arm: dict[str, Any], ds_cfg: dict[str, Any], audit_cfg: dict[str, Any], dataset: str, seed: int, runs: Path,
            teacher: Path, device: str, data_dir: Path | None = None) -> dict[str, Any]:
    from maskcheck.training import make_config, train_run

    train = ds_cfg.get("train", {})
    temperature = arm.get("temperature")
    if arm.get("entropy") is not None:
        temperature = temperature_for_entropy(teacher, dataset, arm["entropy"], train.get("max_train"), device, data_dir)
    cfg = make_config(arm["method"], dataset, name=arm["id"], seed=seed, temperature=temperature,
                      **{**train, **arm["overrides"]})
    run_dir = runs / arm["id"]
    from maskcheck import checkpoint

    if not checkpoint.is_complete_run(run_dir):
        train_run(cfg, run_dir, device=device, teacher_dir=teacher if arm["method"] == "ltd" else None, data_dir=data_dir,
                  progress=False)
    run = json.loads((run_dir / "run.json").read_text())
    m = run["metrics"]
    keep = ("epoch", "train_acc", "clean_acc", "pgd_acc", "train_robust_acc", "inner_zero_steps", "inner_zero_coords")
    return {
        "dataset": dataset, "seed": seed, "arm": arm["id"], "group": arm["group"], "method": arm["method"],
        "temperature": temperature, "target_entropy": arm.get("entropy"), "config": run["config"],
        "soft_labels": soft_entropy(teacher, dataset, temperature, train.get("max_train"), device, data_dir) if temperature else None,
        "history": [{k: h.get(k) for k in keep} for h in m["history"]],
        "clean_acc": m["clean_acc"], "pgd_acc": m["pgd_acc"], "train_seconds": m["train_seconds"],
        "audit": audit(run_dir, audit_cfg, seed, device, data_dir),
    }


def probe(run_dir: Path, dataset: str, seed: int, device: str, data_dir: Path | None = None, n: int = 512) -> dict[str, Any]:
    """The issue's precision mechanism without training: one trained student, both inner attacks at each precision.

    On the first n training points, per precision and inner loss (TRADES' KL, LTD's CE; same
    start, steps and step size as training): the share of all-zero input gradients (zero steps),
    of zero coordinates, the inner objective's mean value at the start point, and the share of
    points the attack leaves correct (the training-phase robust accuracy of that one attack).
    """
    import torch

    from maskcheck import checkpoint
    from maskcheck.data import load_dataset
    from maskcheck.methods.base import InnerStats, StepContext
    from maskcheck.methods.trades import clean_target, inner_attack
    from maskcheck.methods.base import kl_from_probs
    from maskcheck.training import PRECISIONS

    loaded = checkpoint.load_run(run_dir, device)
    model, run = loaded.model.eval(), json.loads((run_dir / "run.json").read_text())
    train = load_dataset(dataset, data_dir).train
    x = torch.stack([train[i][0] for i in range(min(n, len(train)))])
    x = (x.float().div(255) if x.dtype == torch.uint8 else x).to(device)
    y = torch.stack([torch.as_tensor(train[i][1]) for i in range(len(x))]).to(device)
    cfg = run["config"]
    out: dict[str, Any] = {"run": run["name"], "n": len(x), "rows": []}
    for prec, dtype in PRECISIONS.items():
        autocast = (lambda dtype=dtype: torch.autocast(torch.device(device).type, dtype=dtype)) if dtype is not None else None
        for inner in ("kl", "ce"):
            stats = InnerStats()
            gen = torch.Generator(device=device).manual_seed(seed)
            ctx = StepContext(eps=cfg["eps"], norm=cfg["norm"], attack_steps=cfg["attack_steps"], attack_step_size=cfg["attack_step_size"],
                              generator=gen, autocast=autocast, inner_stats=stats)
            t0 = time.perf_counter()
            with torch.no_grad():
                start = x + 0.001 * torch.randn(x.shape, generator=torch.Generator(device=device).manual_seed(seed), device=device)
                with (autocast() if autocast else torch.autocast("cpu", enabled=False)):
                    kl0 = kl_from_probs(clean_target(model, x, ctx), model(start)).mean().item()
            x_adv = torch.cat([inner_attack(inner, model, x[i:i + 128], y[i:i + 128], ctx) for i in range(0, len(x), 128)])
            with torch.no_grad():
                robust = float((model(x_adv).argmax(1) == y).float().mean())
            out["rows"].append({"precision": prec, "inner": inner, **stats.shares(), "inner_kl_at_start": kl0,
                                "robust_after_attack": robust, "seconds": time.perf_counter() - t0})
            print(run["name"], prec, inner, out["rows"][-1], flush=True)
    return out


def summary(results: Path) -> str:
    rows = ["dataset seed arm                      T      H     prec  trainRob zero%  clean  pgd   worst  grade"]
    for f in sorted(p for p in results.rglob("*.json") if p.parent.name != "probe"):
        r = json.loads(f.read_text())
        h = r["history"][-1] if r["history"] else {}
        sl = r.get("soft_labels") or {}
        rows.append(f"{r['dataset']:<7} {r['seed']:<4} {r['arm']:<24} {r['temperature'] or 0:>6.4g} {sl.get('entropy', float('nan')):.3f} "
                    f"{r['config'].get('autocast_dtype', '?'):<5} {h.get('train_robust_acc') or float('nan'):.3f}    "
                    f"{100 * (h.get('inner_zero_steps') or 0):5.1f}  {r['clean_acc']:.3f}  {r['pgd_acc']:.3f} "
                    f"{r['audit']['robust_acc'].get('worst-case', float('nan')):.3f}  {r['audit']['grade']}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    parser.add_argument("--seeds", default=None, help="comma-separated (default: the config's)")
    parser.add_argument("--arms", default=None, help="only these arm ids (comma-separated)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", default=str(REPO / "runs" / "table-iv-mechanism"))
    parser.add_argument("--data-dir", default=None, help="overrides the config's data folder (MNIST: ../shared/data)")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--summary", action="store_true")
    parser.add_argument("--probe", default=None, help="arm ids of trained runs: zero steps of both inner attacks at each precision")
    args = parser.parse_args(argv)
    results = HERE / "results"
    if args.summary:
        print(summary(results))
        return 0
    cfg = json.loads((HERE / "config.json").read_text())
    ds_cfg = cfg["datasets"][args.dataset]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else ds_cfg["seeds"]
    # --data-dir, else $MASKCHECK_SHARED_DATA (where the tests look), else the config's folder relative to the repository
    shared = os.environ.get("MASKCHECK_SHARED_DATA")
    data_dir = Path(args.data_dir) if args.data_dir else None
    if data_dir is None and ds_cfg.get("data_dir"):
        data_dir = Path(shared) if shared else REPO / ds_cfg["data_dir"]
    plan = arms(ds_cfg["grid"])
    first = {a: i for i, a in enumerate(ds_cfg.get("order", []))}  # the most telling arms first: results arrive in that order
    plan.sort(key=lambda a: first.get(a["id"], len(first)))
    if args.arms:
        wanted = set(args.arms.split(","))
        plan = [a for a in plan if a["id"] in wanted]
    if args.probe:
        for seed in seeds:
            for arm_id in args.probe.split(","):
                rec = probe(Path(args.runs) / args.dataset / f"s{seed}" / arm_id, args.dataset, seed, args.device, data_dir)
                out = results / args.dataset / f"s{seed}" / "probe" / f"{arm_id}.json"
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(json.dumps(rec, indent=1) + "\n")
        return 0
    for seed in seeds:
        runs = Path(args.runs) / args.dataset / f"s{seed}"
        todo = [a for a in plan if not (results / args.dataset / f"s{seed}" / f"{a['id']}.json").is_file()]
        print(f"{args.dataset} seed {seed}: {len(plan)} arms, {len(todo)} to run: {', '.join(a['id'] for a in todo)}", flush=True)
        if args.dry_run or not todo:
            continue
        teacher = train_teacher(ds_cfg, args.dataset, seed, runs, args.device, data_dir)
        for arm in todo:
            t0 = time.perf_counter()
            record = run_arm(arm, ds_cfg, cfg["audit"], args.dataset, seed, runs, teacher, args.device, data_dir)
            out = results / args.dataset / f"s{seed}" / f"{arm['id']}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(record, indent=1) + "\n")
            tmp.replace(out)
            h = record["history"][-1]
            print(f"{arm['id']}: T {record['temperature']} train-robust {h.get('train_robust_acc')} zero {h.get('inner_zero_steps')} "
                  f"clean {record['clean_acc']:.3f} worst {record['audit']['robust_acc'].get('worst-case')} "
                  f"{record['audit']['grade']} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
