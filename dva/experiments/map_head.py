"""Issue 21, stop 39 (docs/policy.md): does the action head read a_t better with the encoder's
lowest feature map beside the trunk's context? Two arms from the package's head on the same
batches: control (the context only) and map (a zero-initialised linear from the standardized,
6x6-pooled 128-channel map of frame t into the head's first layer). Held-out a_t on
data/expert_dev. Result: control 9.75 -> 9.48 px, map 9.75 -> 9.59 px: lost, removed after this
commit.

    python dva/experiments/map_head.py 3000 data/expert   # ~13 min of features, ~4 min per arm"""
import copy, sys, time
from pathlib import Path
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, "dva/experiments")
from head_diag import windows
from dva.policy import load_planner
from dva.pusht.render import render_frames

torch.set_num_threads(2)
steps, train_root = int(sys.argv[1]), sys.argv[2]
test_root = sys.argv[3] if len(sys.argv) > 3 else "data/expert_dev"
model = load_planner("dva/assets/dva_s", "cpu")[0].model.eval()
W = 8

@torch.no_grad()
def feats(root, stride):
    cache = Path(f"runs/map_head/{Path(root).name}_s{stride}.pt")
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.exists():
        return torch.load(cache)
    ds, idx, act, *_ = windows(root, stride, 2)
    frames = render_frames(torch.from_numpy(ds.states))
    C, M = [], []
    for b in range(0, len(idx), 64):
        x = frames[torch.as_tensor(idx[b:b + 64])].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        ctx = model.context(x)
        C.append(ctx.tokens.reshape(len(x), W, -1)[:, 2:].reshape(-1, ctx.tokens[0].numel()).half())
        m = F.avg_pool2d(ctx.feats[-1], 2)  # (B*W, 128, 6, 6)
        M.append(m.reshape(len(x), W, -1)[:, 2:].reshape(-1, m[0].numel()).half())
    out = (torch.cat(C), torch.cat(M), torch.from_numpy(act).float())
    torch.save(out, cache)
    return out

t0 = time.time()
tr, te = feats(train_root, 6), feats(test_root, 1)
mu, sd = tr[1].float().mean(0), tr[1].float().std(0) + 1e-3
print(f"features: train {len(tr[0])}, test {len(te[0])} ({time.time() - t0:.0f} s)", flush=True)

class MapHead(nn.Module):
    def __init__(self, head, use_map):
        super().__init__()
        self.head, self.m = copy.deepcopy(head), nn.Linear(mu.numel(), 512) if use_map else None
        if self.m is not None:
            nn.init.zeros_(self.m.weight), nn.init.zeros_(self.m.bias)
    def forward(self, c, m):
        h = self.head[0](c.float())
        if self.m is not None:
            h = h + self.m((m.float() - mu) / sd)
        return self.head[2](self.head[1](h))[:, :2]

def px(net, d):
    with torch.no_grad():
        p = torch.cat([net(d[0][i:i + 4096], d[1][i:i + 4096]) for i in range(0, len(d[0]), 4096)])
        return ((p + 1) * 256 - d[2]).norm(dim=-1).mean().item()

for use_map in (False, True):
    torch.manual_seed(0)
    net, gen = MapHead(model.action_head, use_map), torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    print(f"{'map' if use_map else 'control'}: start held-out {px(net, te):.2f} px", flush=True)
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        sel = torch.randint(len(tr[0]), (256,), generator=gen)
        loss = (net(tr[0][sel], tr[1][sel]) - (tr[2][sel] / 256 - 1)).abs().mean()
        opt.zero_grad(), loss.backward(), opt.step()
        if step % 1000 == 0 or step == steps:
            print(f"  step {step} train {loss.item() * 256:.1f} px held-out {px(net, te):.2f} px", flush=True)
