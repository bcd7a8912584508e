"""Issue 21, stop 33 (docs/history.md): give a trained DVA an action head that reads a_t .. a_{t+K-1}
off the context of frame t (DVAConfig.intent_steps = K), with the rest of the model frozen.

At the lockstep timing (delay 1) the first frame a plan dreams freely needs a_{t+1}. With
free_action 'intent' and K = 1 it is read off the context of a *dreamed* frame t+1, which cost the
head 0.10 of score; BC reads a_{t+1} off real frames and loses nothing. With K >= 2 the planner
reads it off the last real frame's context instead.

The trunk is frozen, so its contexts are computed once (8-frame windows, positions 2..7, as
intent_trunk.py) and only the MLP head trains, on cached features: minutes on the CPU. The head
starts as BASE's (its a_t rows copied to every k). Batches mix the sources by the given weights.
Held-out error per k on data/expert_dev before and after. Writes an inference checkpoint
(BASE's tensors with the new head, config intent_steps = K) that dva.eval loads.

    python dva/experiments/chunk_head.py BASE OUT K STEPS NAME=DIR:WEIGHT ... [--modes M]

--modes M > 1 (stop 36) trains a mixture head (DVAConfig.intent_modes) by its likelihood instead.
The frozen trunk's features are cached per (BASE file, dataset manifest) under
runs/head_features/: a second run on the same trunk computes only its new sources.
    # as run: /root/dva/runs/s42t_x /root/dva/runs/s42t_k2 2 6000 expert=data/expert:0.35 \
    #   approach=data/approach:0.15 recovery_pkg=data/recovery_pkg:0.25 recovery_s42ti=data/recovery_s42ti:0.25
"""
import copy
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dva import checkpoint as ckpt
from dva.data.store import load_dataset
from dva.policy import load_planner
from dva.model.dva import intent_error, intent_mode
from dva.pusht.render import render_frames

torch.manual_seed(0)
torch.set_num_threads(2)
argv = sys.argv[1:]
M = 1
if "--modes" in argv:
    i = argv.index("--modes")
    M = int(argv[i + 1])
    del argv[i:i + 2]
base, out, K, steps = argv[0], argv[1], int(argv[2]), int(argv[3])
sources = [(a.split("=")[0], a.split("=")[1].rsplit(":", 1)[0], float(a.rsplit(":", 1)[1])) for a in argv[4:]]
sha = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()[:12]  # noqa: E731
base_file = base if base.endswith(".safetensors") else base + ".safetensors"
CACHE = Path("runs/head_features") / sha(base_file)
planner, _ = load_planner(base, "cpu")
model = planner.model.eval()
W, N, D = 8, model.cfg.tokens_per_frame, model.cfg.d_model
P0 = 2  # positions 2..7 of a window: at least 3 frames of history


def features(root, stride=6):
    """features_of(root), cached per trunk and dataset manifest (torch.save, atomic rename)."""
    path = CACHE / f"{Path(root).name}_{sha(Path(root) / 'manifest.json')}_s{stride}_k{K}.pt"
    if path.exists():
        return torch.load(path)
    f = features_of(root, stride)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(f, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").rename(path)
    return f


@torch.no_grad()
def features_of(root, stride=6, batch=64):
    """Contexts (n, N*D) of the frozen trunk at positions 2..7 of 8-frame windows, the actions
    a_t .. a_{t+K-1} after each (n, K, 2) px and which of them the episode holds (n, K)."""
    ds = load_dataset(root, frames=False)
    frames = render_frames(torch.from_numpy(ds.states))  # (S, 96, 96, 3) uint8
    starts, acts, valid = [], [], []
    for i in range(len(ds.steps)):
        s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
        for k in range(0, T + 1 - W + 1, stride):
            starts.append(s + k)
            j = k + P0 + np.arange(W - P0)[:, None] + np.arange(K)  # (6, K) action index in the episode
            acts.append(ds.actions[a + np.minimum(j, T - 1)])
            valid.append(j < T)
    starts = torch.tensor(starts)
    feats = []
    for b in range(0, len(starts), batch):
        idx = starts[b:b + batch]
        x = frames[idx[:, None] + torch.arange(W)].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        c = model.context(x).tokens.view(len(idx), W, N * D)
        feats.append(c[:, P0:].reshape(-1, N * D).half())
    acts = torch.from_numpy(np.stack(acts)).float().reshape(-1, K, 2)
    return torch.cat(feats), acts, torch.from_numpy(np.stack(valid)).reshape(-1, K)


def l1_px(head, f, a, v, per_action):
    """Mean end-point error (px) per k over the valid targets of the intent (a mixture's mode)."""
    with torch.no_grad():
        out = torch.cat([head(f[i:i + 4096].float()) for i in range(0, len(f), 4096)])
        pred = intent_mode(out.view(len(out), -1, per_action))
        e = ((pred + 1) * 256 - a[:, :pred.shape[1]]).norm(dim=-1)
        m = v[:, :pred.shape[1]].float()
        return [round(x, 2) for x in ((e * m).sum(0) / m.sum(0)).tolist()]


t0 = time.time()
data = {name: features(root) for name, root, _ in sources}
test = features("data/expert_dev")
print(f"features: {', '.join(f'{n} {len(d[0])}' for n, d in data.items())}, test {len(test[0])} "
      f"({time.time() - t0:.0f} s)", flush=True)

old = model.action_head
old_per = 2 if model.cfg.intent_modes == 1 else 5 * model.cfg.intent_modes
per = 2 if M == 1 else 5 * M  # per action: (x, y) or a mixture's (logit, mean 2, log-scale 2) x M
head = copy.deepcopy(old)
last = nn.Linear(512, per * K)
with torch.no_grad():  # every k starts as the a_t reading (actions change slowly at 10 Hz)
    if M == 1 and old_per == 2:
        last.weight.copy_(old[-1].weight[:2].repeat(K, 1))
        last.bias.copy_(old[-1].bias[:2].repeat(K))
    elif M > 1 and old_per == 2:  # each component's mean starts near the L1 reading, apart by a little noise
        wl, bl = last.weight.view(K, per, 512), last.bias.view(K, per)
        wl[:, :M].mul_(0.1)
        bl[:, :M].zero_()
        wl[:, M:3 * M] = old[-1].weight[:2].repeat(M, 1) + 0.02 * torch.randn(2 * M, 512) / 512 ** 0.5
        bl[:, M:3 * M] = old[-1].bias[:2].repeat(M) + 0.05 * torch.randn(2 * M)
        wl[:, 3 * M:].mul_(0.1)
        bl[:, 3 * M:] = float(np.log(8 / 256))  # 8 px
    else:
        raise SystemExit(f"chunk_head: BASE must have a plain (intent_modes 1) head, got {model.cfg.intent_modes}")
head[-1] = last
print("held-out px per k: base head (a_t only)", l1_px(old, *test, old_per), "start", l1_px(head, *test, per), flush=True)

opt = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=0.01)
w = torch.tensor([s[2] for s in sources])
gen = torch.Generator().manual_seed(1)
B = 256
for step in range(1, steps + 1):
    for g in opt.param_groups:
        g["lr"] = 1e-3 * min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    src = torch.multinomial(w, B, replacement=True, generator=gen)
    f, a, v = [], [], []
    for i, (name, _, _) in enumerate(sources):
        n = int((src == i).sum())
        sel = torch.randint(len(data[name][0]), (n,), generator=gen)
        f.append(data[name][0][sel]), a.append(data[name][1][sel]), v.append(data[name][2][sel])
    f, a, v = torch.cat(f).float(), torch.cat(a), torch.cat(v).float()
    loss = (intent_error(head(f).view(B, K, per), a / 256 - 1) * v).sum() / v.sum()  # L1 or mixture NLL
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 1000 == 0 or step == steps:
        what = f"{loss.item() * 256:.1f} px" if M == 1 else f"NLL {loss.item():.3f}"
        print(f"step {step} train {what}, held-out px per k {l1_px(head, *test, per)}", flush=True)

tensors, meta = ckpt.read(base)
sd = {f"model.action_head.{k}": v.to(tensors["model.action_head.0.weight"].dtype) for k, v in head.state_dict().items()}
tensors = {**tensors, **sd}
meta = {k: v for k, v in meta.items() if k not in ("sha256", "tensors", "format", "version")}
meta["config"] = {**meta["config"], "intent_steps": K, "intent_modes": M}
meta["chunk_head"] = {"base": base, "K": K, "modes": M, "steps": steps, "sources": sources,
                      "test_px": l1_px(head, *test, per)}
ckpt.save(out, tensors, meta)
print(f"wrote {out} ({time.time() - t0:.0f} s)")
