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

    python dva/experiments/chunk_head.py BASE OUT K STEPS NAME=DIR:WEIGHT ...
    # as run: /root/dva/runs/s42t_x /root/dva/runs/s42t_k2 2 6000 expert=data/expert:0.35 \
    #   approach=data/approach:0.15 recovery_pkg=data/recovery_pkg:0.25 recovery_s42ti=data/recovery_s42ti:0.25

It also reports the head's held-out error from a static history (the frame seen 8 times), which
measures how much it leans on the history's motion (stop 36: 9.9 px from the real history, 21.8
from a static one; training on static histories, `--static S` then, lost and was removed).

The frozen trunk's contexts are cached per (trunk weights, dataset manifest) under
runs/head_features/ (~0.6 GB per 100k frames): a run on a trunk seen before computes only its new
sources (stop 36: 33 s instead of 20-28 minutes).
"""
import copy
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save

from dva import checkpoint as ckpt
from dva.data.store import atomic_write_bytes, load_dataset, sha256_file
from dva.policy import load_planner
from dva.pusht.render import render_frames

torch.manual_seed(0)
torch.set_num_threads(2)
base, out, K, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sources = [(a.split("=")[0], a.split("=")[1].rsplit(":", 1)[0], float(a.rsplit(":", 1)[1])) for a in sys.argv[5:]]


def trunk_sha(path) -> str:
    """What the features depend on: the encoder's and the transformer's weights (not the head, IDM
    or decoder, so checkpoints that share a trunk share the cache)."""
    h = hashlib.sha256()
    for k, v in sorted(ckpt.read(path)[0].items()):
        if k.startswith(("model.encoder.", "model.transformer.")):
            h.update(k.encode()), h.update(v.float().numpy().tobytes())
    return h.hexdigest()[:12]


CACHE = Path("runs/head_features") / trunk_sha(base)
planner, _ = load_planner(base, "cpu")
model = planner.model.eval()
W, N, D = 8, model.cfg.tokens_per_frame, model.cfg.d_model
P0 = 2  # positions 2..7 of a window: at least 3 frames of history


def features(root, stride=6, static=False):
    """Contexts (n, N*D) of the frozen trunk at positions 2..7 of 8-frame windows, the actions
    a_t .. a_{t+K-1} after each (n, K, 2) px and which of them the episode holds (n, K).
    static: one context per window instead, of its last frame seen 8 times (a disc that has not
    moved for 8 steps: what the trunk sees where the DVA parks), with that frame's actions.
    The contexts are cached per trunk and dataset manifest (safetensors, written atomically)."""
    ds = load_dataset(root, frames=False)
    first = W - 1 if static else P0
    starts, acts, valid = [], [], []
    for i in range(len(ds.steps)):
        s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
        for k in range(0, T + 1 - W + 1, stride):
            starts.append(s + k)
            j = k + first + np.arange(W - first)[:, None] + np.arange(K)  # (positions, K) action index
            acts.append(ds.actions[a + np.minimum(j, T - 1)])
            valid.append(j < T)
    acts = torch.from_numpy(np.stack(acts)).float().reshape(-1, K, 2)
    valid = torch.from_numpy(np.stack(valid)).reshape(-1, K)
    manifest = sha256_file(Path(root) / "manifest.json")[:12]
    path = CACHE / f"{Path(root).name}_{manifest}_{'static_' if static else ''}s{stride}.safetensors"
    if path.exists():
        return load_file(path)["contexts"], acts, valid
    feats = contexts(render_frames(torch.from_numpy(ds.states)), torch.tensor(starts), static)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: f.write(save({"contexts": feats})))
    return feats, acts, valid


@torch.no_grad()
def contexts(frames, starts, static, batch=64):
    """The trunk's contexts for the 8-frame windows starting at `starts` of frames (S, 96, 96, 3)."""
    feats = []
    for b in range(0, len(starts), batch):
        idx = starts[b:b + batch]
        if static:  # encode the frame once, the transformer sees its tokens at all 8 positions
            x = frames[idx + W - 1].permute(0, 3, 1, 2).float() / 127.5 - 1.0
            tok, _ = model.encoder(x)  # (b, N, D)
            c = model.transformer(tok.repeat(1, W, 1), N).view(len(idx), W, N * D)
            feats.append(c[:, -1].half())
            continue
        x = frames[idx[:, None] + torch.arange(W)].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        c = model.context(x).tokens.view(len(idx), W, N * D)
        feats.append(c[:, P0:].reshape(-1, N * D).half())
    return torch.cat(feats)


def l1_px(head, f, a, v):
    """Mean end-point error (px) per k over the valid targets."""
    with torch.no_grad():
        pred = torch.cat([head(f[i:i + 4096].float()) for i in range(0, len(f), 4096)]).view(-1, head[-1].out_features // 2, 2)
        e = ((pred + 1) * 256 - a[:, :pred.shape[1]]).norm(dim=-1)
        m = v[:, :pred.shape[1]].float()
        return [round(x, 2) for x in ((e * m).sum(0) / m.sum(0)).tolist()]


t0 = time.time()
data = {name: features(root) for name, root, _ in sources}
test = features("data/expert_dev")
print(f"features: {', '.join(f'{n} {len(d[0])}' for n, d in data.items())}, test {len(test[0])} "
      f"({time.time() - t0:.0f} s)", flush=True)
test_still = features("data/expert_dev", static=True)  # how much the head leans on the history's motion

old = model.action_head
head = copy.deepcopy(old)
last = nn.Linear(512, 2 * K)
with torch.no_grad():  # every k starts as the a_t reading (actions change slowly at 10 Hz)
    last.weight.copy_(old[-1].weight[:2].repeat(K, 1))
    last.bias.copy_(old[-1].bias[:2].repeat(K))
head[-1] = last
print("held-out px per k: base head (a_t only)", l1_px(old, *test), "static history", l1_px(old, *test_still),
      "start", l1_px(head, *test), flush=True)

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
    pred = head(f).view(B, K, 2)
    loss = ((pred - (a / 256 - 1)).abs() * v[..., None]).sum() / (v.sum() * 2)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 1000 == 0 or step == steps:
        print(f"step {step} train {loss.item() * 256:.1f} px, held-out px per k {l1_px(head, *test)}, "
              f"static history {l1_px(head, *test_still)}", flush=True)

tensors, meta = ckpt.read(base)
sd = {f"model.action_head.{k}": v.to(tensors["model.action_head.0.weight"].dtype) for k, v in head.state_dict().items()}
tensors = {**tensors, **sd}
meta = {k: v for k, v in meta.items() if k not in ("sha256", "tensors", "format", "version")}
meta["config"] = {**meta["config"], "intent_steps": K}
meta["chunk_head"] = {"base": base, "K": K, "steps": steps, "sources": sources,
                      "test_px": l1_px(head, *test), "test_static_px": l1_px(head, *test_still)}
ckpt.save(out, tensors, meta)
print(f"wrote {out} ({time.time() - t0:.0f} s)")
