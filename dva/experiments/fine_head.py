"""Issue 21, stop 39 (docs/policy.md): does the action head read the expert's next move better when
it also sees the encoder's finer map? The package's head (on the frozen trunk's context, as
chunk_head.py trains it) plus a small conv path on the frozen encoder's second-level map (64 x 24 x
24) of frames t-1 and t, its last layer zero-initialised into the head's first layer, so it starts
as the package's head. Against the control arm (the context only) on the same batches; held-out
a_t on data/expert_dev.

    python dva/experiments/fine_head.py 1000 data/expert   # ~13 min of contexts, 1 min control, ~30 min conv

Stop 39 (2-core AMD EPYC, beside a BC run): control 9.75 -> 9.60 px, conv path 9.75 -> 8.56 px
after 1,000 steps (BC 15k: 8.38). The encoder's lowest map (12 x 12) through a linear did not help
(map_head.py at a9d23cd). The conv path reads frames through the encoder on every step, ~1.5 s per
step of 256 on this CPU.
"""
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from head_diag import contexts, windows  # noqa: E402
from safetensors.torch import load_file, save  # noqa: E402

from dva.data.store import atomic_write_bytes  # noqa: E402

from dva.policy import load_planner  # noqa: E402
from dva.pusht.render import render_frames  # noqa: E402

torch.set_num_threads(2)
steps, train_root = int(sys.argv[1]), sys.argv[2]
test_root = sys.argv[3] if len(sys.argv) > 3 else "data/expert_dev"
model = load_planner("dva/assets/dva_s", "cpu")[0].model.eval()
enc = model.encoder


@torch.no_grad()
def load(root, stride):
    """Rendered frames, frame t of each context (positions 2..7 of 8-frame windows), the trunk's
    contexts there (cached under runs/fine_head/) and the expert's a_t."""
    ds, idx, act, *_ = windows(root, stride, 2)
    frames = render_frames(torch.from_numpy(ds.states))
    cache = Path(f"runs/fine_head/{Path(root).name}_s{stride}.safetensors")
    if cache.exists():
        ctx = load_file(cache)["contexts"]
    else:
        ctx = contexts(model, frames, idx, 2).half()
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cache, lambda f: f.write(save({"contexts": ctx})))
    return frames, torch.from_numpy(idx[:, 2:].reshape(-1)), ctx, torch.from_numpy(act).float()


@torch.no_grad()
def fmap(frames, t):
    """The encoder's second-level map of frames t-1 and t, stacked: (B, 128, 24, 24)."""
    x = frames[torch.stack([t - 1, t], 1)].permute(0, 1, 4, 2, 3).flatten(0, 1).float() / 127.5 - 1.0
    h = enc.blocks[0](enc.stem(F.pixel_unshuffle(x, 2)))
    return enc.blocks[1](enc.downs[0](h)).reshape(len(t), -1, 24, 24)


class Head(nn.Module):
    def __init__(self, head, conv: bool):
        super().__init__()
        self.head = copy.deepcopy(head)
        self.conv = nn.Sequential(nn.Conv2d(128, 96, 3, 2, 1), nn.SiLU(), nn.Conv2d(96, 128, 3, 2, 1), nn.SiLU(),
                                  nn.Flatten(), nn.Linear(128 * 36, 512)) if conv else None
        if conv:
            nn.init.zeros_(self.conv[-1].weight), nn.init.zeros_(self.conv[-1].bias)

    def forward(self, frames, t, ctx):
        h = self.head[0](ctx.float())
        if self.conv is not None:
            h = h + self.conv(fmap(frames, t))
        return self.head[2](self.head[1](h))[:, :2]


t0 = time.time()
train, test = load(train_root, 6), load(test_root, 1)
print(f"contexts: train {len(train[1])}, test {len(test[1])} ({time.time() - t0:.0f} s)", flush=True)


def px(net):
    frames, t, ctx, act = test
    with torch.no_grad():
        p = torch.cat([net(frames, t[i:i + 512], ctx[i:i + 512]) for i in range(0, len(t), 512)])
    return ((p + 1) * 256 - act).norm(dim=-1).mean().item()


for conv in (False, True):
    torch.manual_seed(0)
    net, gen = Head(model.action_head, conv), torch.Generator().manual_seed(1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    print(f"{'conv path' if conv else 'control'}: start held-out {px(net):.2f} px", flush=True)
    frames, t, ctx, act = train
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1, step / 100) * 0.5 * (1 + np.cos(np.pi * step / steps))
        sel = torch.randint(len(t), (256,), generator=gen)
        loss = (net(frames, t[sel], ctx[sel]) - (act[sel] / 256 - 1)).abs().mean()
        opt.zero_grad(), loss.backward(), opt.step()
        if step % 250 == 0 or step == steps:
            print(f"  step {step} train {loss.item() * 256:.1f} px ({time.time() - t0:.0f} s)", flush=True)
    print(f"  held-out {px(net):.2f} px", flush=True)
