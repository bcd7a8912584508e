"""Checkpoints: one safetensors file of tensors + one JSON of everything else. Never pickle.

A checkpoint `<stem>` is `<stem>.safetensors` (tensors, names prefixed by what they belong to:
`model.`, `ema.`, `idm.`, `idm_ema.`, `opt.`, `idm_opt.`) and `<stem>.json` (format, config, step,
data mix, git commit, training args, sha256 of the safetensors file). Both are written atomically
(temp file + os.replace), the JSON last, so a reader never sees a checkpoint whose JSON describes
a different tensor file without noticing (the checksum names it).

`load(path) -> (model, idm, meta)` builds the models from the JSON config and loads the EMA
weights when present; every failure is a CheckpointError naming the file and the reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT = "dva-checkpoint"
VERSION = 1
DEFAULT = Path(__file__).parent / "assets" / "dva_s"  # the packaged default (fp16 EMA weights)


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the file and why."""


def paths(path) -> tuple[Path, Path]:
    """'x', 'x.json' or 'x.safetensors' -> (x.safetensors, x.json)."""
    p = Path(path)
    if p.suffix in (".json", ".safetensors"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, stderr=subprocess.DEVNULL,
                                       cwd=Path(__file__).parent).strip()
    except Exception:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(path, tensors: dict[str, torch.Tensor], meta: dict) -> tuple[Path, Path]:
    """Write tensors (contiguous, detached, on CPU) and meta (JSON-serialisable) atomically."""
    st, js = paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    flat, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().to("cpu").contiguous()
        if v.untyped_storage().data_ptr() in seen:  # safetensors refuses shared storage (tied weights)
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        flat[k] = v
    tmp = st.with_name(st.name + f".tmp{os.getpid()}")
    save_file(flat, str(tmp))
    os.replace(tmp, st)
    doc = {"format": FORMAT, "version": VERSION, **meta, "sha256": _sha256(st),
           "tensors": sorted({k.split(".", 1)[0] for k in flat})}
    _atomic_write_text(js, json.dumps(doc, indent=1, sort_keys=True))
    return st, js


def read(path) -> tuple[dict[str, torch.Tensor], dict]:
    """Validated (tensors, meta). Raises CheckpointError naming the file and the problem."""
    st, js = paths(path)
    for p in (js, st):
        if not p.is_file():
            raise CheckpointError(f"checkpoint file missing: {p}")
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{js}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{js}: not a dva checkpoint (format={meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{js}: checkpoint version {meta.get('version')!r}, this dva reads {VERSION}")
    if "config" not in meta:
        raise CheckpointError(f"{js}: no 'config' entry")
    digest = _sha256(st)
    if meta.get("sha256") != digest:
        raise CheckpointError(f"{st}: checksum mismatch (file is corrupted, truncated or from another save): "
                              f"sha256 {digest[:12]}..., {js.name} says {str(meta.get('sha256'))[:12]}...")
    try:
        tensors = load_file(str(st))  # safetensors: plain buffers, never executes code
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{st}: unreadable safetensors file ({e})") from None
    return tensors, meta


def optimizer_tensors(opt) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter state as tensors named opt.<param index>.<name> (the param
    groups are rebuilt by whoever makes the optimizer; the LR is a function of the step)."""
    return {f"opt.{i}.{k}": torch.as_tensor(v) for i, st in opt.state_dict()["state"].items() for k, v in st.items()}


def load_optimizer(opt, tensors: dict, where) -> None:
    """Put the opt.* tensors of a checkpoint (optimizer_tensors) back into `opt`."""
    sd = opt.state_dict()
    state = {}
    for k, v in section(tensors, "opt").items():
        i, name = k.split(".", 1)
        state.setdefault(int(i), {})[name] = v
    if sorted(state) != sorted(sd["state"]) and sd["state"]:
        raise CheckpointError(f"{where}: optimizer state does not match the model")
    sd["state"] = state
    opt.load_state_dict(sd)


def section(tensors: dict, prefix: str) -> dict[str, torch.Tensor]:
    pre = prefix + "."
    return {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}


def load_into(module: torch.nn.Module, state: dict, where: str, fresh: tuple[str, ...] = ()) -> None:
    """load_state_dict with a message that names missing, unexpected and mis-shaped tensors.
    Tensors whose names start with a prefix in `fresh` may be missing: they keep their init."""
    own = module.state_dict()
    missing = sorted(k for k in set(own) - set(state) if not (fresh and k.startswith(fresh)))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"shape mismatch: {'; '.join(shapes[:3])}")
        raise CheckpointError(f"{where}: does not match the model config: " + ", ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def check_same_run(path, saved: dict, mine: dict, flags: dict[str, str]) -> None:
    """A resume continues the run that was started: every key of `flags` (key -> the flag that sets
    it) must equal what the checkpoint recorded. Raises CheckpointError naming the file and flags."""
    diff = [f"{flag} {saved[k]} vs {mine[k]}" for k, flag in flags.items() if k in saved and saved[k] != mine[k]]
    if diff:
        raise CheckpointError(f"{path}: this run was started with other training flags ({'; '.join(diff)}); re-run "
                              f"the command that started it, or start a new run from its weights with --init")


def config_diff(a: dict, b: dict) -> list[str]:
    return [f"{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load(path=None, device="cpu", weights: str = "ema"):
    """-> (DVA or None, IDM or None, meta), in eval mode on `device`. weights: 'ema' (default, falls back
    to raw weights when the checkpoint has no EMA) or 'raw'. path None: the packaged default."""
    from dva.model.config import DVAConfig
    from dva.model.dva import DVA
    from dva.model.idm import IDM

    path = DEFAULT if path is None else path
    tensors, meta = read(path)
    st, _ = paths(path)
    try:
        cfg = DVAConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{paths(path)[1]}: bad model config ({e})") from None
    kinds = set(meta["tensors"])
    models = []
    for name, cls in (("model", DVA), ("idm", IDM)):
        pick = f"{name}_ema" if name == "idm" else "ema"
        key = pick if weights == "ema" and pick in kinds else name
        if key not in kinds:
            models.append(None)
            continue
        m = cls(cfg)
        load_into(m, section(tensors, key), f"{st} [{key}]")
        models.append(m.to(device).eval())
    if models[0] is None and models[1] is None:
        raise CheckpointError(f"{st}: holds neither video model nor IDM weights (has {sorted(kinds)})")
    return models[0], models[1], meta


def export(src, dst, dtype=torch.float16, sampler_steps: int | None = None,
           warp_anchor: bool | None = None, free_action: str | None = None, idm_from=None) -> tuple[Path, Path]:
    """Inference-only copy of a training checkpoint: EMA weights of video model and IDM in
    `dtype` (the packaged default is fp16), same JSON minus optimizer state. sampler_steps sets
    the model's default number of sampler steps (chosen by held-out validation), which the
    planner uses unless told otherwise; warp_anchor sets DVAConfig.warp_anchor (anchored dreams,
    no weights change); free_action sets DVAConfig.free_action (what conditions the planner's free
    dreams by default). None keeps the training config's. idm_from: take the IDM from this
    checkpoint instead (e.g. a `python -m dva.train --model idm` run; the IDM trains apart)."""
    tensors, meta = read(src)
    if idm_from is not None:
        other, other_meta = read(idm_from)
        idm = section(other, "idm_ema") or section(other, "idm")
        if not idm:
            raise CheckpointError(f"{paths(idm_from)[0]}: has no IDM weights")
        for k in ("idm_ch", "action_range", "img", "groups"):
            if other_meta["config"].get(k) != meta["config"].get(k):
                raise CheckpointError(f"{paths(idm_from)[0]}: its IDM config differs from {paths(src)[0]}'s "
                                      f"({k}: {other_meta['config'].get(k)!r} vs {meta['config'].get(k)!r})")
        tensors = {k: v for k, v in tensors.items() if not k.startswith(("idm.", "idm_ema."))}
        tensors.update({f"idm.{k}": v for k, v in idm.items()})
    changes = {k: v for k, v in (("sampler_steps", sampler_steps), ("warp_anchor", warp_anchor),
                                 ("free_action", free_action)) if v is not None}
    if changes:
        from dva.model.config import DVAConfig

        config = {**meta["config"], **changes}
        try:
            DVAConfig.from_dict(config)  # the config validates its own fields
        except (TypeError, ValueError) as e:
            what = ", ".join(f"{k}={v}" for k, v in changes.items())
            raise CheckpointError(f"{paths(src)[0]}: cannot export with {what}: {e}") from None
        meta = {**meta, "config": config}
    out = {}
    for key, name in (("ema", "model"), ("idm_ema", "idm")):
        part = section(tensors, key) or section(tensors, name)
        out.update({f"{name}.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in part.items()})
    keep = {k: v for k, v in meta.items() if k not in ("sha256", "tensors", "format", "version")}
    keep["exported_from"] = {"path": str(paths(src)[0].name), "step": meta.get("step"), "weights": "ema",
                             "dtype": str(dtype).replace("torch.", "")}
    if idm_from is not None:
        keep["exported_from"]["idm_from"] = {"path": str(paths(idm_from)[0]), "step": other_meta.get("step"),
                                             "data_mix": other_meta.get("data_mix")}
    return save(dst, out, keep)


def main(argv=None) -> int:
    import argparse
    import sys

    from dva.model.config import FREE_ACTIONS

    p = argparse.ArgumentParser(prog="python -m dva.checkpoint", description="Inspect or export dva checkpoints.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write an inference-only copy (EMA weights, fp16 by default)")
    e.add_argument("src", help="training checkpoint stem or file (e.g. runs/s/ckpt)")
    e.add_argument("dst", help="output stem, e.g. dva/assets/dva_s")
    e.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="weight dtype (default: fp16)")
    e.add_argument("--sampler-steps", type=int, default=None,
                   help="set the model's default sampler steps (pick them with python -m dva.pusht.validate --steps N); "
                        "default: keep the training config's")
    e.add_argument("--warp-anchor", choices=["on", "off"], default=None,
                   help="anchored dreams: the T and disc sample the last real frame by their composed motion "
                        "(needs a model trained with --body-masks); default: keep the training config's")
    e.add_argument("--free-action", choices=FREE_ACTIONS, default=None,
                   help="what conditions the planner's dreams past the committed actions by default: none (the free "
                        "dream), prev or intent (the action head's reading; pick it with python -m dva.eval --policy "
                        "dva --seeds dev --free-action ...); default: keep the training config's")
    e.add_argument("--idm-from", default=None,
                   help="take the IDM from this checkpoint (e.g. a `python -m dva.train --model idm` run); default: SRC's")
    i = sub.add_parser("info", help="validate a checkpoint and print its metadata")
    i.add_argument("path", help="checkpoint stem or file")
    a = p.parse_args(argv)
    try:
        if a.cmd == "export":
            dt = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
            anchor = None if a.warp_anchor is None else a.warp_anchor == "on"
            st, js = export(a.src, a.dst, dt, a.sampler_steps, anchor, a.free_action, a.idm_from)
            print(f"wrote {st} ({st.stat().st_size / 2**20:.1f} MiB) and {js}")
        else:
            tensors, meta = read(a.path)
            n = sum(v.numel() for v in tensors.values())
            print(json.dumps({k: v for k, v in meta.items() if k != "train"}, indent=1))
            print(f"{len(tensors)} tensors, {n / 1e6:.2f}M values")
    except CheckpointError as err:
        print(f"dva.checkpoint: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
