"""Issue 21 lever H, step 1 (docs/policy.md): train the DVA's trunk (encoder + transformer) for the
expert's intent at BC-like sample counts. Trunk-only steps (no decoder) with an MLP head
context(t) -> a_t (positions 2..7 of 8-frame windows, +-4 px random shift), plus a term that keeps
the context near BASE's (so the decoder still reads it). Batches mix the sources by the given
weights (default: data/expert alone); frames are rendered from the stored states per batch.
Held-out error on data/expert_dev every 500 steps; weights to OUT.safetensors + OUT.json
(dva.checkpoint), with the optimizer and sampler state every 250 steps: the same command again
resumes exactly where OUT stopped.

    python dva/experiments/intent_trunk.py THREADS STEPS KEEP_W OUT BASE [NAME=DIR:WEIGHT ...] [--lr LR]
    # as run: 2 1500 1.0 runs/intent_k1 runs/pkg_1204/dva_s (the package before lever H; lever_h.sh)
    # stop 32: 2 1500 1.0 runs/intent_pkg dva/assets/dva_s (the package s40a, continuing its head)
    # (both at commit 27e8b06, before the mix and the resume: the same sample stream as expert=data/expert:1
    #  there drew one unused batch per step)
    # stop 37: 2 1800 1.0 runs/trunk37 dva/assets/dva_s --lr 1.5e-4 expert=data/expert:0.35 approach=data/approach:0.15 \
    #   recovery_pkg=data/recovery_pkg:0.2 recovery_s42ti=data/recovery_s42ti:0.15 recovery_l32=data/recovery_l32:0.15
"""
import argparse
import copy
import time
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from dva import checkpoint as ckpt  # safetensors + JSON, never pickle
from dva.bc import random_shift
from dva.data.store import load_dataset
from dva.policy import load_planner
from dva.pusht.render import render_frames

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("threads", type=int)
ap.add_argument("steps", type=int)
ap.add_argument("keep_w", type=float, help="weight of the term that keeps the context near BASE's")
ap.add_argument("out", help="weights + state, resumed when it exists")
ap.add_argument("base", help="the checkpoint whose trunk (and head, if it has one) is trained")
ap.add_argument("sources", nargs="*", metavar="NAME=DIR:WEIGHT", help="the data mix (default expert=data/expert:1)")
ap.add_argument("--lr", type=float, default=3e-4, help="peak LR of the trunk; the head's is 10/3 of it")
args = ap.parse_intermixed_args()
torch.manual_seed(0)
torch.set_num_threads(args.threads)
steps, keep_w, out = args.steps, args.keep_w, args.out
planner, _ = load_planner(args.base, "cpu")
sources = [(a.split("=")[0], a.split("=")[1].rsplit(":", 1)[0], float(a.rsplit(":", 1)[1]))
           for a in args.sources] or [("expert", "data/expert", 1.0)]
model = planner.model.float().train()
W, N, D = model.cfg.window, model.cfg.tokens_per_frame, model.cfg.d_model
old = copy.deepcopy(model).eval()
for p in old.parameters():
    p.requires_grad_(False)


def windows(root):
    """A dataset's states and its 8-frame windows: first state index and the W actions."""
    ds = load_dataset(root, frames=False)
    starts, acts = [], []
    for i in range(len(ds.steps)):
        s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
        for k in range(0, T - W + 1):
            starts.append(s + k)
            acts.append(ds.actions[a + k:a + k + W])
    return torch.from_numpy(ds.states), torch.tensor(starts), torch.from_numpy(np.stack(acts)).float()


def to_x(states, idx):  # (B, W, 3, 96, 96) in [-1, 1], rendered from the states
    f = render_frames(states[(idx[:, None] + torch.arange(W)).flatten()]).view(len(idx), W, 96, 96, 3)
    return f.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0


def ctx_of(m, x):
    B = x.shape[0]
    tok, _ = m.encoder(x.flatten(0, 1))
    return m.transformer(tok.reshape(B, W * N, -1), N).view(B, W, N * D)


t0 = time.time()
train = [windows(root) for _, root, _ in sources]
teX, teS, teA = windows("data/expert_dev")
teS, teA = teS[::W], teA[::W]  # non-overlapping held-out windows
print(f"data {', '.join(f'{n} {len(d[1])}' for (n, _, _), d in zip(sources, train))} train windows, "
      f"{len(teS)} test windows, {time.time() - t0:.0f}s", flush=True)

# a base that already has lever H's head (DVAConfig.action_aux) continues with it; otherwise a new one
head = copy.deepcopy(model.action_head) if model.action_head is not None else \
    nn.Sequential(nn.Linear(N * D, 512), nn.SiLU(), nn.Linear(512, 2))
head = head.float()
trunk = list(model.encoder.parameters()) + list(model.transformer.parameters())
opt = torch.optim.AdamW([{"params": trunk, "lr": args.lr}, {"params": head.parameters(), "lr": args.lr * 10 / 3}], weight_decay=0.01)
base_lr = [g["lr"] for g in opt.param_groups]
parts = {"encoder": model.encoder, "transformer": model.transformer, "head": head}
gen = torch.Generator().manual_seed(1)
start, log = 0, []
if ckpt.paths(out)[0].exists():  # resume: weights, optimizer, sampler, log
    tensors, meta = ckpt.read(out)
    for name, m in parts.items():
        ckpt.load_into(m, ckpt.section(tensors, name), out)
    ckpt.load_optimizer(opt, tensors, out)
    gen.set_state(tensors["gen_state"])
    start, log = meta["step"], meta["log"]
    print(f"resumed {out} at step {start}", flush=True)


@torch.no_grad()
def evaluate():
    model.eval(), head.eval()
    errs = []
    for i in range(0, len(teS), 64):
        c = ctx_of(model, to_x(teX, teS[i:i + 64]))[:, 2:]
        errs.append(((head(c) + 1) * 256 - teA[i:i + 64, 2:]).norm(dim=-1).flatten())
    model.train(), head.train()
    return torch.cat(errs).mean().item()


def save(step):
    tensors = {f"{p}.{k}": v for p, m in parts.items() for k, v in m.state_dict().items()}
    tensors.update(ckpt.optimizer_tensors(opt), gen_state=gen.get_state())
    ckpt.save(out, tensors, {"config": model.cfg.to_dict(), "log": log, "step": step, "sources": sources,
                             "base": args.base, "keep_w": keep_w, "steps": steps, "lr": args.lr})


if start == 0:
    print("step 0 test px", round(evaluate(), 2), flush=True)
w = torch.tensor([s[2] for s in sources])
B = 16
t0 = time.time()
for step in range(start + 1, steps + 1):
    lr_f = min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    for g, b in zip(opt.param_groups, base_lr):
        g["lr"] = b * lr_f
    src = torch.multinomial(w, B, replacement=True, generator=gen) if len(sources) > 1 else torch.zeros(B, dtype=torch.long)
    x, act = [], []
    for i, (states, starts, acts) in enumerate(train):
        n = int((src == i).sum())
        if n:
            sel = torch.randint(len(starts), (n,), generator=gen)
            x.append(to_x(states, starts[sel])), act.append(acts[sel])
    x, act = torch.cat(x), torch.cat(act)
    x = random_shift(x.flatten(1, 2), 4, gen).view_as(x)
    c = ctx_of(model, x)
    with torch.no_grad():
        c_old = ctx_of(old, x)
    l_act = (head(c[:, 2:]) - (act[:, 2:] / 256 - 1)).abs().mean()
    l_keep = F.mse_loss(c, c_old) / c_old.pow(2).mean()
    loss = l_act + keep_w * l_keep
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        print(f"step {step} act {l_act.item() * 256:.1f}px keep {l_keep.item():.3f} "
              f"{(time.time() - t0) / (step - start):.2f}s/step", flush=True)
    if step % 500 == 0 or step == steps:
        e = evaluate()
        log.append((step, e))
        print("step", step, "test px", round(e, 2), flush=True)
    if step % 250 == 0 or step == steps:
        save(step)
