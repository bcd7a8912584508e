"""Issue 21, stop 36 (docs/policy.md, "Why the DVA parks"): where the action head's reading of the
expert's next move goes wrong. Diagnostics on a DVA checkpoint (default: the package):

    python dva/experiments/head_diag.py errors [CKPT]      # a_t error by move size and coverage; ridge probes
    python dva/experiments/head_diag.py static [CKPT]      # the head from the real vs a static history
    python dva/experiments/head_diag.py parked SEED [CKPT] # one lockstep episode: the head's intent vs the disc
    python dva/experiments/head_diag.py stay               # how often the expert's datasets "stay"
    python dva/experiments/head_diag.py ensemble CKPT      # a K-step head: a_t averaged over 1..K readings
    python dva/experiments/head_diag.py pose               # how close the T must be for success, and what the frame shows
    python dva/experiments/head_diag.py agree CKPT BC ...  # do two policies' a_t errors agree? (DVA checkpoints, BC runs)

All but `pose` read held-out expert frames (data/expert_dev) or the datasets in data/; CPU, minutes at most
(`errors` fits its ridge probes on 400 episodes of data/expert: ~6 minutes on 2 cores).
"""
import sys

import numpy as np
import torch

from dva.data.store import load_dataset
from dva.policy import load_planner
from dva.pusht.render import render_frames

PACKAGE = "dva/assets/dva_s.safetensors"
W = 8  # frames per window, as the head's training (chunk_head.py)


def windows(root, stride, first, max_eps=None):
    """(frame index of each window's frames (n, 8), the action, disc position, coverage and the T's
    position at positions first..7 of each window, flattened (n * (8 - first), ...)) of a dataset."""
    ds = load_dataset(root, frames=False)
    idx, acts, pos, cov = [], [], [], []
    for i in range(len(ds.steps) if max_eps is None else min(max_eps, len(ds.steps))):
        s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
        for k in range(0, T + 1 - W + 1, stride):
            j = k + np.arange(first, W)
            idx.append(s + k + np.arange(W))
            acts.append(ds.actions[a + np.minimum(j, T - 1)]), pos.append(ds.states[s + j]), cov.append(ds.coverage[s + j])
    acts, state, cov = (np.concatenate(x) for x in (acts, pos, cov))
    return ds, np.array(idx), acts, state[:, :2], cov, state[:, 2:4]


@torch.no_grad()
def contexts(model, frames, idx, first):
    """The trunk's contexts (n * (8 - first), N*D) at positions first..7 of the windows idx (n, 8)."""
    out = []
    for b in range(0, len(idx), 64):
        x = frames[torch.as_tensor(idx[b:b + 64])].permute(0, 1, 4, 2, 3).float() / 127.5 - 1.0
        c = model.context(x).tokens.view(len(x), W, -1)
        out.append(c[:, first:].reshape(-1, c.shape[-1]))
    return torch.cat(out)


def head_px(model, ctx):
    """The head's a_t (n, 2) px off contexts (n, N*D) (the inverse of its [-1, 1] target units)."""
    if model.intent_conv is not None:
        raise SystemExit("this head also reads the encoder's maps (intent_maps), which cached contexts lack: "
                         "dva/experiments/fine_head.py reports its held-out a_t")
    with torch.no_grad():
        return ((model.action_head(ctx.float()).view(len(ctx), -1, 2)[:, 0] + 1) * 256).numpy()


def errors(ckpt):
    model = load_planner(ckpt, "cpu")[0].model.eval()
    ds, idx, act, pos, cov, tee = windows("data/expert_dev", 1, 2)
    ctx = contexts(model, render_frames(torch.from_numpy(ds.states)), idx, 2)
    err, move = np.linalg.norm(head_px(model, ctx) - act, axis=1), np.linalg.norm(act - pos, axis=1)
    print(f"head a_t error {err.mean():.2f} px (median {np.median(err):.2f}), {len(err)} contexts of data/expert_dev")
    for lo, hi in [(0, 2), (2, 5), (5, 10), (10, 20), (20, 40), (40, np.inf)]:
        m = (move >= lo) & (move < hi)
        print(f"  |a_t - p_t| in [{lo}, {hi}): n {m.sum():5d}  head {err[m].mean():.2f} px  'stay' {move[m].mean():.2f} px")
    for lo, hi in [(0, .5), (.5, .8), (.8, .9), (.9, .95), (.95, 1.1)]:
        m = (cov >= lo) & (cov < hi)
        print(f"  coverage [{lo}, {hi}): n {m.sum():5d}  head {err[m].mean():.2f} px  |a_t - p_t| {move[m].mean():.2f}")
    tds, tidx, tact, tpos, _, ttee = windows("data/expert", 2, 2, max_eps=400)
    X = contexts(model, render_frames(torch.from_numpy(tds.states)), tidx, 2).float()
    mean = X.mean(0)
    A = (X - mean).T @ (X - mean) + 10.0 * torch.eye(X.shape[1])
    for name, y, truth in [("disc p_t", tpos, pos), ("T position", ttee, tee), ("a_t", tact, act),
                           ("a_t - p_t", tact - tpos, act - pos)]:
        y = torch.tensor(y).float()
        w = torch.linalg.solve(A, (X - mean).T @ (y - y.mean(0)))
        pred = (ctx.float() - mean) @ w + y.mean(0)
        print(f"  ridge (lambda 10, 400 expert episodes) {name}: held-out {np.linalg.norm(pred.numpy() - truth, axis=1).mean():.2f} px")


def static(ckpt):
    model = load_planner(ckpt, "cpu")[0].model.eval()
    ds, idx, act, pos, cov, _ = windows("data/expert_dev", 3, W - 1)
    frames = render_frames(torch.from_numpy(ds.states))
    near = cov > 0.85
    for name, windows_ in [("real history", idx), ("static history", np.repeat(idx[:, -1:], W, 1))]:
        pred = head_px(model, contexts(model, frames, windows_, W - 1))
        err, move = np.linalg.norm(pred - act, axis=1), np.linalg.norm(pred - pos, axis=1)
        print(f"{name}: n {len(err)}, a_t error {err.mean():.2f} px (near the goal {err[near].mean():.2f}); "
              f"|intent - disc| {move.mean():.1f} px (near the goal {move[near].mean():.1f}); 'stay' (< 3 px) "
              f"{np.mean(move < 3):.3f} (near the goal {np.mean(move[near] < 3):.3f})")


def parked(seed, ckpt):
    from dva.loop import make_env
    from dva.policy import DVAPolicy
    from dva.pusht.env import hold_substeps_for

    torch.set_num_threads(1)
    policy = DVAPolicy(checkpoint=ckpt)
    model, readings = policy.planner.model, []
    intent = model.intent
    model.intent = lambda ctx, prev=None: readings.append(intent(ctx, prev)[0, 0].double().numpy()) or intent(ctx, prev)
    env = make_env()
    obs, _ = env.reset(seed)
    policy.reset(seed)
    hold = hold_substeps_for(policy.latency_ms)
    for k in range(300):
        disc = obs["state"][:2].copy()
        a = policy.act(obs)
        if k % 10 == 0:
            print(f"step {k:3d} disc ({disc[0]:.0f}, {disc[1]:.0f})  |intent - disc| {np.linalg.norm(readings[-1] - disc):5.1f}"
                  f"  |executed - disc| {np.linalg.norm(a - disc):5.1f}  |intent - executed| {np.linalg.norm(readings[-1] - a):5.1f}")
        obs, _, done, _, _ = env.step(a, hold)
        if done:
            break


def stay():
    for root in ["data/expert", "data/recovery_pkg", "data/recovery_s42ti", "data/recovery_l32", "data/recovery_l32b"]:
        ds = load_dataset(root, frames=False)
        still, near = [], []
        for i in range(len(ds.steps)):
            s, a, T = int(ds.state_start[i]), int(ds.action_start[i]), int(ds.steps[i])
            st = np.linalg.norm(ds.actions[a:a + T] - ds.states[s:s + T, :2], axis=1) < 3
            still.append(st), near.append(st[ds.coverage[s:s + T] > 0.85])
        still, near = np.concatenate(still), np.concatenate(near)
        print(f"{root}: 'stay' (|a_t - p_t| < 3 px) on {still.mean():.3f} of {len(still)} steps, "
              f"{near.mean():.3f} of the {len(near)} at coverage > 0.85")


def ensemble(ckpt):
    """ACT-style temporal ensembling offline: a_t read off the contexts of frames t, t-1, ..,
    t-K+1 (each reading k steps ahead), averaged over the newest E of them, against the expert."""
    model = load_planner(ckpt, "cpu")[0].model.eval()
    K = model.cfg.intent_steps
    ds, idx, act, _, _, _ = windows("data/expert_dev", 6, 2)
    ctx = contexts(model, render_frames(torch.from_numpy(ds.states)), idx, 2)
    with torch.no_grad():
        r = ((model.action_head(ctx.float()).view(len(idx), W - 2, K, 2) + 1) * 256).numpy()
    reads = np.stack([r[:, W - 3 - k, k] for k in range(K)], 1)  # a_t of the last position, from k frames back
    target = act.reshape(len(idx), W - 2, 2)[:, -1]
    for E in range(1, K + 1):
        print(f"E = {E}: a_t error {np.linalg.norm(reads[:, :E].mean(1) - target, axis=1).mean():.2f} px")


def pose():
    """Stop 37: the T moved off the goal by d px (random direction, a rotation of similar corner
    motion): the share of poses over gym-pusht's success coverage, and the 96 x 96 pixels that change."""
    import math

    from dva.pusht.env import SUCCESS_COVERAGE, PushTEnv
    from dva.pusht.render import GOAL_POSE

    env, rng = PushTEnv(), np.random.default_rng(0)
    gx, gy, ga = GOAL_POSE
    goal = [100.0, 450.0, gx, gy, ga]  # the disc out of the way

    def frame(st):
        return render_frames(torch.tensor([st], dtype=torch.float64))[0].int()

    at_goal = frame(goal)
    for d in (0.5, 1, 2, 3, 4, 6):
        cov, changed = [], []
        for _ in range(40):
            th = rng.uniform(0, 2 * math.pi)
            st = goal[:2] + [gx + d * math.cos(th), gy + d * math.sin(th), ga + rng.normal(0, d / 60)]
            env.reset_to_state(np.array(st))
            cov.append(env.coverage())
            changed.append(int(((frame(st) - at_goal).abs().max(-1).values > 8).sum()))
        print(f"T off the goal by {d} px: coverage mean {np.mean(cov):.3f}, over {SUCCESS_COVERAGE} in "
              f"{np.mean(np.array(cov) > SUCCESS_COVERAGE):.0%}; pixels changed (> 8/255) median {np.median(changed):.0f}")


def agree(paths):
    """Stop 38: a_t read by each policy (a DVA checkpoint's head, or a BC checkpoint: dva.bc, its
    first action off the last two frames) on the same held-out expert frames; per pair the
    correlation of their errors and the error of their mean. Errors the models share (correlation
    near 1) are what the frames do not say or what both miss; uncorrelated ones average out."""
    from dva.bc import BCNet, load_checkpoint
    from dva.checkpoint import load_into, section

    ds, idx, act, _, cov, _ = windows("data/expert_dev", 1, 2)
    frames, near, pred = render_frames(torch.from_numpy(ds.states)), cov > 0.85, {}
    for p in paths:
        if p.endswith("/bc") or p.endswith("bc.safetensors"):
            tensors, _, cfg = load_checkpoint(p)
            net = BCNet(cfg)
            load_into(net, section(tensors, "model"), p)
            pairs = torch.as_tensor(np.stack([idx[:, 1:-1], idx[:, 2:]], -1).reshape(-1, 2))  # (t-1, t) at positions 2..7
            with torch.no_grad():
                out = torch.cat([net.eval()(BCNet.to_input(frames[pairs[i:i + 256]]))[:, 0] for i in range(0, len(pairs), 256)])
            pred[p] = ((out + 1) * 256).clamp(0, 512).numpy()
        else:
            model = load_planner(p, "cpu")[0].model.eval()
            pred[p] = head_px(model, contexts(model, frames, idx, 2))
        e = np.linalg.norm(pred[p] - act, axis=1)
        print(f"{p}: a_t error {e.mean():.2f} px (near the goal, coverage > 0.85: {e[near].mean():.2f})")
    for i, a in enumerate(paths):
        for b in paths[i + 1:]:
            ea, eb = pred[a] - act, pred[b] - act
            corr = (ea * eb).sum() / np.sqrt((ea ** 2).sum() * (eb ** 2).sum())
            e = np.linalg.norm((pred[a] + pred[b]) / 2 - act, axis=1)
            print(f"{a} & {b}: error correlation {corr:.2f}, their mean {e.mean():.2f} px (near the goal {e[near].mean():.2f})")


if __name__ == "__main__":
    what, rest = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(2)
    if what == "parked":
        parked(int(rest[0]), rest[1] if len(rest) > 1 else PACKAGE)
    elif what == "stay":
        stay()
    elif what == "ensemble":
        ensemble(rest[0])
    elif what == "pose":
        pose()
    elif what == "agree":
        agree(rest)
    else:
        {"errors": errors, "static": static}[what](rest[0] if rest else PACKAGE)
