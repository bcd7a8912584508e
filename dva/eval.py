"""Evaluate a policy on the PushT protocol (seeds 100000..100049, 300 steps, 10 Hz).

    python -m dva.eval --policy goal --seeds 100000:100050 --workers 2 --out runs/eval_goal.json

Writes a JSON with score, success, gym_pusht_version and per-episode seed, max_coverage,
steps; prints a one-line summary. The video policy joins as `--policy dva --checkpoint PATH`
(registered in dva.pusht.policies.POLICIES; its kwargs come from POLICY_ARGS below).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from dva.data.store import atomic_write_json
from dva.model.config import FREE_ACTIONS
from dva.pusht.policies import POLICIES
from dva.pusht.protocol import DEV_SEEDS, MAX_STEPS, SEEDS, evaluate, parse_seeds

# Which CLI options become constructor kwargs for each policy (a policy not listed takes none),
# and which policies never read pixels (their episodes run without rendering).
POLICY_ARGS = {"dva": ["checkpoint", "device", "free_action", "delay"], "bc": ["checkpoint", "execute"]}
PRIVILEGED = {"random", "goal", "expert"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dva.eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, choices=sorted(POLICIES),
                   help="policy to evaluate (registry: dva.pusht.policies.POLICIES)")
    p.add_argument("--seeds", default="protocol",
                   help=f"env seeds: 'protocol' ({SEEDS[0]}:{SEEDS[-1] + 1}, for reporting; the default), 'dev' "
                        f"({DEV_SEEDS[0]}:{DEV_SEEDS[-1] + 1}, for choosing models), 'START:STOP' (half-open) or 'a,b,c'")
    p.add_argument("--workers", type=int, default=1, help="worker processes (one episode each at a time)")
    p.add_argument("--max-steps", type=int, default=MAX_STEPS, help="steps per episode (protocol: 300)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file for the metrics, written atomically (default: runs/eval_POLICY.json)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="checkpoint for --policy dva (default: the packaged model) or bc (OUT/bc of dva.bc)")
    p.add_argument("--execute", type=int, default=None,
                   help="--policy bc: actions of each predicted chunk executed before it looks again "
                        "(default: 1, chosen on the dev seeds)")
    p.add_argument("--device", default=None, help="torch device for --policy dva (default: auto)")
    p.add_argument("--free-action", default=None, choices=FREE_ACTIONS,
                   help="--policy dva: what conditions the frames it dreams past the committed actions: none (the "
                        "free dream), prev (the previous planned action) or intent (the model's own action head; "
                        "dva.policy.PlannerConfig). Default: the checkpoint's free_action")
    p.add_argument("--delay", type=int, default=None,
                   help="--policy dva: steps between the frame a plan is made from and the step it takes over "
                        "(dva.policy.LockstepConfig; default 0: it acts on the frame just seen, --latency-ms into "
                        "the step). 1 waits for the next frame")
    p.add_argument("--latency-ms", type=float, default=None,
                   help="when in each step a policy's action lands, in [0, 100) ms: until then the physics keeps "
                        "tracking the previous target (10 ms substeps, rounded up). Default: the policy's own "
                        "measured figure (dva at delay 0: 32, bc: 3, the privileged policies: 0). The JSON's "
                        "act_ms_p50 is the act() time measured in this run")
    p.add_argument("--render", action="store_true",
                   help="render pixels for privileged policies too (they never read them; slower)")
    p.add_argument("--states-out", type=Path, default=None,
                   help="also write the states the policy visited (every --states-every steps of every "
                        "episode) to this .npz: start states for `python -m dva.collect --start-states` "
                        "(recovery data: the expert taking over where this policy goes)")
    p.add_argument("--states-every", type=int, default=5, help="step stride of --states-out (default: 5)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def write_start_states(path: Path, results, every: int) -> int:
    """Every `every`-th visited state (and the disc's velocity there) of each episode, with its
    seed and step, as an .npz (written atomically). Returns the number of states."""
    import numpy as np

    from dva.data.store import atomic_write_bytes

    rows = {"states": [], "agent_vel": [], "seed": [], "step": []}
    for r in results:
        k = np.arange(0, len(r.states) - 1, every)  # not the last state: the episode ended there
        rows["states"].append(r.states[k]), rows["agent_vel"].append(r.agent_vel[k])
        rows["seed"].append(np.full(len(k), r.seed)), rows["step"].append(k)
    arrays = {name: np.concatenate(v) for name, v in rows.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, lambda f: np.savez(f, **arrays))
    return len(arrays["states"])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        named = {"protocol": SEEDS, "dev": DEV_SEEDS}
        seeds = list(named[args.seeds]) if args.seeds in named else parse_seeds(args.seeds)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.states_every < 1:
        print(f"error: --states-every must be >= 1, got {args.states_every}", file=sys.stderr)
        return 2
    if args.delay is not None and args.delay < 0:
        print(f"error: --delay must be >= 0, got {args.delay}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print(f"error: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return 2
    kwargs = {k: getattr(args, k) for k in POLICY_ARGS.get(args.policy, []) if getattr(args, k) is not None}
    if args.policy == "bc" and args.checkpoint is None:
        print("error: --policy bc needs --checkpoint (OUT/bc of `python -m dva.bc`)", file=sys.stderr)
        return 2
    if args.policy in ("dva", "bc") and args.checkpoint is not None:
        from dva.checkpoint import paths  # a stem, x.json or x.safetensors, as everywhere else

        st = paths(args.checkpoint)[0]
        if not st.is_file():
            print(f"error: --checkpoint {args.checkpoint}: no such file ({st})", file=sys.stderr)
            return 2
        kwargs["checkpoint"] = st
    pixels = args.render or args.policy not in PRIVILEGED
    try:
        res = evaluate(args.policy, seeds, workers=args.workers, max_steps=args.max_steps,
                       pixels=pixels, progress=not args.quiet, policy_kwargs=kwargs,
                       keep_states=args.states_out is not None, latency_ms=args.latency_ms)
    except ValueError as e:  # unknown/unloadable policy, bad kwargs
        print(f"error: {e}", file=sys.stderr)
        return 2
    res = {"policy": args.policy, "seeds": args.seeds, **{k: str(v) for k, v in kwargs.items()},
           "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **res}
    res["episodes"] = res.pop("episodes_detail")
    if args.states_out is not None:
        n = write_start_states(args.states_out, res.pop("results"), args.states_every)
        res["states_out"] = {"file": str(args.states_out), "states": n, "every": args.states_every}
    res["n_episodes"] = len(res["episodes"])
    if args.out is None:  # a 10-minute protocol run is never thrown away for a missing flag
        args.out = Path("runs") / f"eval_{args.policy}.json"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, res)
    steps = res["mean_steps_to_success"]
    print(f"{args.policy}: score {res['score']:.3f}  success {res['success']:.0%}  "
          f"({res['n_episodes']} episodes, gym-pusht {res['gym_pusht_version']}, "
          f"mean steps to success {steps if steps is None else f'{steps:.1f}'}, "
          f"{res['wall_seconds']:.0f} s with {args.workers} workers; actions land {res['latency_ms']:g} ms into "
          f"their step, act() "
          f"measured {res['act_ms_p50']:.1f} ms) -> {args.out}")
    b = res["behaviour"]
    contact = b["mean_first_contact_step"]
    print(f"  behaviour: parked {b['parked']:.0%}, T against a wall {b['t_against_wall']:.0%}, never touched "
          f"the T {b['never_touched_t']:.0%}, first contact at step "
          f"{'-' if contact is None else f'{contact:.0f}'}, final pose error {b['mean_final_pose_err_px']:.0f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
