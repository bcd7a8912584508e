"""Issue 21 lever H, step 1 (docs/policy.md): can the DVA's trunk (encoder + transformer) learn the
expert's intent when trained for it at BC-like sample counts? Trunk-only steps (no decoder) with an
MLP head context(t) -> a_t (positions 2..7 of 8-frame expert windows, +-4 px random shift), plus a
term that keeps the context near the package's (so the decoder still reads it). Held-out error on
data/expert_dev every 500 steps; weights to OUT.safetensors + OUT.json (dva.checkpoint).

    python dva/experiments/intent_trunk.py THREADS STEPS KEEP_W OUT BASE
    # as run: 2 1500 1.0 runs/intent_k1 runs/pkg_1204/dva_s (the package before lever H; lever_h.sh)
    # stop 32: 2 1500 1.0 runs/intent_pkg dva/assets/dva_s (the package s40a, continuing its head)
"""
import sys, time, copy, json
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, '.')
from dva.policy import load_planner
from dva.data.store import load_dataset
from dva.pusht.render import render_frames
from dva.bc import random_shift
from dva import checkpoint as ckpt  # safetensors + JSON, never pickle

torch.manual_seed(0)
torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
keep_w = float(sys.argv[3]) if len(sys.argv) > 3 else 1.0
out = sys.argv[4] if len(sys.argv) > 4 else 'runs/intent'
planner, _ = load_planner(sys.argv[5] if len(sys.argv) > 5 else 'runs/pkg_1204/dva_s', 'cpu')
model = planner.model.train()
W = model.cfg.window; N = model.cfg.tokens_per_frame; D = model.cfg.d_model
old = copy.deepcopy(model).eval()
for p in old.parameters(): p.requires_grad_(False)

def windows(root, n_ep=None):
    ds = load_dataset(root, frames=False)
    frames = render_frames(torch.from_numpy(ds.states))  # (S, 96, 96, 3) uint8
    starts, acts = [], []
    for i in range(len(ds.steps) if n_ep is None else n_ep):
        s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
        for k in range(0, T - W + 1):
            starts.append(s + k); acts.append(ds.actions[a + k:a + k + W])
    return frames, torch.tensor(starts), torch.from_numpy(np.stack(acts)).float()

t0 = time.time()
trF, trS, trA = windows('data/expert')
teF, teS, teA = windows('data/expert_dev')
teS, teA = teS[::W], teA[::W]  # non-overlapping held-out windows
print(f'data {len(trS)} train windows, {len(teS)} test windows, {time.time()-t0:.0f}s', flush=True)

# a base that already has lever H's head (DVAConfig.action_aux) continues with it; otherwise a new one
head = copy.deepcopy(model.action_head) if model.action_head is not None else \
    nn.Sequential(nn.Linear(N * D, 512), nn.SiLU(), nn.Linear(512, 2))
trunk = list(model.encoder.parameters()) + list(model.transformer.parameters())
opt = torch.optim.AdamW([{'params': trunk, 'lr': 3e-4}, {'params': head.parameters(), 'lr': 1e-3}], weight_decay=0.01)
base = [g['lr'] for g in opt.param_groups]

def to_x(frames, idx):  # (B, W, 3, 96, 96) in [-1, 1]
    f = frames[idx[:, None] + torch.arange(W)]  # (B, W, 96, 96, 3)
    return f.permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0

def ctx_of(m, x):
    B = x.shape[0]
    tok, _ = m.encoder(x.flatten(0, 1))
    return m.transformer(tok.reshape(B, W * N, -1), N).view(B, W, N * D)

@torch.no_grad()
def evaluate():
    model.eval(); head.eval(); errs = []
    for i in range(0, len(teS), 64):
        x = to_x(teF, teS[i:i + 64]); c = ctx_of(model, x)[:, 2:]
        pred = (head(c) + 1) * 256
        errs.append((pred - teA[i:i + 64, 2:]).norm(dim=-1).flatten())
    model.train(); head.train()
    return torch.cat(errs).mean().item()

B = 16; gen = torch.Generator().manual_seed(1); log = []
print('step 0 test px', round(evaluate(), 2), flush=True)
t0 = time.time()
for step in range(1, steps + 1):
    lr_f = min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
    for g, b in zip(opt.param_groups, base): g['lr'] = b * lr_f
    torch.randint(len(trS), (B + 1,), generator=gen)  # unused draws: keep the sample stream of the run as made
    sel = torch.randint(len(trS), (B,), generator=gen)
    idx, act = trS[sel], trA[sel]
    x = to_x(trF, idx)
    x = random_shift(x.flatten(1, 2), 4, gen).view_as(x)
    c = ctx_of(model, x)
    with torch.no_grad(): c_old = ctx_of(old, x)
    pred = head(c[:, 2:])
    l_act = (pred - (act[:, 2:] / 256 - 1)).abs().mean()
    l_keep = F.mse_loss(c, c_old) / c_old.pow(2).mean()
    loss = l_act + keep_w * l_keep
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 50 == 0:
        print(f'step {step} act {l_act.item()*256:.1f}px keep {l_keep.item():.3f} {(time.time()-t0)/step:.2f}s/step', flush=True)
    if step % 500 == 0 or step == steps:
        e = evaluate(); log.append((step, e)); print('step', step, 'test px', round(e, 2), flush=True)
        parts = {'encoder': model.encoder, 'transformer': model.transformer, 'head': head}
        ckpt.save(out, {f'{p}.{k}': v for p, m in parts.items() for k, v in m.state_dict().items()},
                  {'config': model.cfg.to_dict(), 'log': log})
