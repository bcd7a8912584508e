"""Issue 21, stops 39-40 (docs/policy.md): give a trained DVA's action head the encoder's finer map
(DVAConfig.intent_maps: two stride-2 convs on the second-level maps, 64 x 24 x 24, of frames t-1
and t, added into the head's hidden layer, zero-initialised so the head starts as BASE's) and train
the head and the convs on a frozen trunk. Batches mix the sources by the given weights; a_t held out
on data/expert_dev (positions 2..7 of every 8-frame window) before and after. Writes an inference
checkpoint (BASE's tensors plus the new head, config intent_maps) that dva.eval loads; it is
rewritten every 500 steps, so a stopped run leaves its last one.

    python dva/experiments/fine_head.py BASE OUT STEPS NAME=DIR:WEIGHT ...
    # stop 40: dva/assets/dva_s runs/maps_head 1500 expert=data/expert:0.4 approach=data/approach:0.15 \
    #   recovery=data/recovery_pkg39:0.45    (a_t 9.75 -> 8.43 px held out, 61 min on 2 cores)

The trunk's contexts are computed once per (source, BASE) and cached under runs/fine_head/ (~13
minutes per 100k frames on 2 cores); the maps are computed on every step from rendered frames (the
encoder's first two levels: ~1.5 s per step of 256 on 2 cores). Stop 39's comparison (the head with
and without the maps, 1,000 steps on data/expert: 9.60 against 8.56 px) runs at commit 51e761d.
"""
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from head_diag import contexts, windows  # noqa: E402
from safetensors.torch import load_file, save  # noqa: E402

from dva import checkpoint as ckpt  # noqa: E402
from dva.data.store import atomic_write_bytes, sha256_file  # noqa: E402
from dva.model.dva import DVA  # noqa: E402
from dva.model.unet import Context  # noqa: E402
from dva.policy import load_planner  # noqa: E402
from dva.pusht.render import render_frames  # noqa: E402

torch.set_num_threads(2)
base, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sources = [(a.split("=")[0], a.split("=")[1].rsplit(":", 1)[0], float(a.rsplit(":", 1)[1])) for a in sys.argv[4:]]
if not sources:
    sys.exit(__doc__)
frozen = load_planner(base, "cpu")[0].model.eval()
model = DVA(dataclasses.replace(frozen.cfg, intent_maps=True)).eval()
missing = model.load_state_dict(frozen.state_dict(), strict=False).missing_keys
assert all(k.startswith("intent_conv.") for k in missing), missing
N = model.cfg.tokens_per_frame
# the contexts depend on the encoder's and the transformer's weights only (heads and decoder aside)
tag = hashlib.sha256(b"".join(v.float().numpy().tobytes() for k, v in sorted(frozen.state_dict().items())
                              if k.startswith(("encoder.", "transformer.")))).hexdigest()[:12]


@torch.no_grad()
def load(root, stride):
    """Rendered frames, frame t of each context (positions 2..7 of 8-frame windows), the trunk's
    contexts there (cached) and the expert's a_t (px)."""
    ds, idx, act, *_ = windows(root, stride, 2)
    frames = render_frames(torch.from_numpy(ds.states))
    manifest = sha256_file(Path(root) / "manifest.json")[:12]
    cache = Path(f"runs/fine_head/{tag}/{Path(root).name}_{manifest}_s{stride}.safetensors")
    if cache.exists():
        ctx = load_file(cache)["contexts"]
    else:
        ctx = contexts(model, frames, idx, 2).half()
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, lambda f: f.write(save({"contexts": ctx})))
    return frames, torch.from_numpy(idx[:, 2:].reshape(-1)), ctx, torch.from_numpy(act).float()


@torch.no_grad()
def maps(frames, t):
    """The frozen encoder's second-level maps (feats[1]) of frames t-1 and t: two (B, c, h, w)."""
    x = frames[torch.cat([t - 1, t])].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    m = model.encoder.maps(x, 2)[1]
    return m[:len(t)], m[len(t):]


def head(frames, t, ctx):
    """a_t in [-1, 1] (B, 2) by the model's own head code (DVA._head) on cached contexts."""
    prev, cur = maps(frames, t)
    return model._head(Context(ctx.float().view(len(t), N, -1), [None, cur], None), prev)[:, :2]


def px(data):
    frames, t, ctx, act = data
    with torch.no_grad():
        p = torch.cat([head(frames, t[i:i + 512], ctx[i:i + 512]) for i in range(0, len(t), 512)])
    return round(((p + 1) * 256 - act).norm(dim=-1).mean().item(), 2)


base_tensors, base_meta = ckpt.read(base)


def write(step, test_px):
    tensors, meta = base_tensors, base_meta
    dtype = tensors["model.action_head.0.weight"].dtype
    sd = {f"model.{k}": v.to(dtype) for k, v in model.state_dict().items() if k.startswith(("action_head.", "intent_conv."))}
    meta = {k: v for k, v in meta.items() if k not in ("sha256", "tensors", "format", "version")}
    meta["config"] = {**meta["config"], "intent_maps": True}
    meta["fine_head"] = {"base": base, "steps": steps, "step": step, "sources": sources, "test_px": test_px}
    ckpt.save(out, {**tensors, **sd}, meta)


t0 = time.time()
data = {name: load(root, 6) for name, root, _ in sources}
test = load("data/expert_dev", 1)
print(f"contexts: {', '.join(f'{n} {len(d[1])}' for n, d in data.items())}, test {len(test[1])} "
      f"({time.time() - t0:.0f} s); held-out a_t at the start {px(test)} px", flush=True)
params = list(model.action_head.parameters()) + list(model.intent_conv.parameters())
opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
w = torch.tensor([s[2] for s in sources])
gen = torch.Generator().manual_seed(1)
torch.manual_seed(0)
B = 256
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    src = torch.multinomial(w, B, replacement=True, generator=gen)
    loss = 0.0
    for i, (name, _, _) in enumerate(sources):
        n = int((src == i).sum())
        if n:
            frames, t, ctx, act = data[name]
            sel = torch.randint(len(t), (n,), generator=gen)
            loss = loss + (head(frames, t[sel], ctx[sel]) - (act[sel] / 256 - 1)).abs().sum() / (2 * B)
    opt.zero_grad(), loss.backward(), opt.step()
    if step % 250 == 0 or step == steps:
        print(f"step {step} train {loss.item() * 256:.1f} px ({time.time() - t0:.0f} s)", flush=True)
    if step % 500 == 0 or step == steps:
        test_px = px(test) if step == steps else None
        write(step, test_px)
print(f"held-out a_t {test_px} px; wrote {out} ({time.time() - t0:.0f} s)", flush=True)
