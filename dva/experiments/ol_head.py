"""Diagnostic (2026-12-05): free frames conditioned on the action head's a_t instead of dreamed freely.
    python dva/experiments/ol_head.py runs/s30/ckpt head runs/ol_s30_head.json
"""
import sys, json, time, torch
sys.path.insert(0, '.')
from dva.openloop import evaluate
from dva.data.store import load_dataset
from dva.policy import load_planner, PlannerConfig
torch.set_num_threads(1)
ck, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
ds = load_dataset('data/expert_dev', frames=False)
planner, meta = load_planner(ck, 'cpu', PlannerConfig(free_action=mode))
t0 = time.time()
res = evaluate(planner, ds, 4, 1, 5, None, False, None)
res['free_action'] = mode; res['seconds'] = time.time() - t0
json.dump(res, open(out, 'w'), indent=1, default=float)
print(mode, res['first_free_px'], res['first_free_px_median'], res['first_free_cos_mean'])
