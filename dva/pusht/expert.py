"""Privileged PushT expert: a sampling planner over push primitives with simulator lookahead.

One decision = one push. From the observed state the planner tries a fixed set of primitives
(a contact point on the T's outline x a push direction), simulates each in a pymunk space
rebuilt from the state (dva.pusht.sim) with the disc starting just outside the contact, and
reads the block pose after every physics substep, so every push length up to the maximum is
scored from one simulation. Because the block's velocity is cleared every substep (zero
damping) and the contact is frictionless, the block moves quasi-statically: its pose depends on
the disc's path, not its speed, so "stop the push when the disc has travelled l" lands where the
simulation said. A push is scored by its progress per 0.1 s step: the drop in log of the T's
mean corner distance to the goal, divided by the steps it costs (approach along a route around
the T, settle, push, finish). Execution is closed loop: the chosen
push is executed, then the planner replans from the new real state (the rebuilt space is not
bit-exact, DESIGN.md section 3).

Learnability (a video model has to imitate this): no randomness at all, so a seed's episode is
reproducible; the pointer moves at most `max_step` px per action along a polyline (no jumps);
the candidate set is fixed per decision and ties go to continuing the current push.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import numpy as np

from dva.pusht.sim import AGENT_RADIUS, SUBSTEPS, T_OUTLINE, Sim, pd_rollout, vertex_error

# The T as two boxes in the block frame: (centre x, centre y, half width, half height).
_BOXES = np.array([[0.0, 15.0, 60.0, 15.0], [0.0, 75.0, 15.0, 45.0]])
# Outward normal of outline edge i (from corner i to corner i+1), block frame.
_EDGE_NORMALS = np.array([[0, -1], [1, 0], [0, 1], [1, 0], [0, 1], [-1, 0], [0, 1], [-1, 0]], dtype=np.float64)


@dataclass(frozen=True)
class ExpertConfig:
    """Planner knobs. Speeds are px per 0.1 s action (gym-pusht's PD lag is ~2 steps of travel)."""

    max_step: float = 25.0  # bound on the pointer's move per action (steady hand), px
    push_speed_far: float = 18.0  # push speed while the T is far (> 30 px mean corner error)
    push_speed_mid: float = 9.0  # ... while 8-30 px
    push_speed_fine: float = 4.0  # ... while < 8 px: sub-px length resolution per substep
    max_push: float = 150.0  # longest push simulated, px (scaled down near the goal)
    gap: float = 4.0  # disc surface to T distance at the pre-contact point, px
    route_margin: float = 14.0  # clearance added to the disc radius for route corners, px
    route_clear: float = 1.0  # clearance added to the disc radius along route segments, px
    contact_spacing: float = 15.0  # spacing of contact points along each outline edge, px
    push_angles_deg: tuple[float, ...] = (-30.0, 0.0, 30.0)  # push direction vs inward normal
    log_eps: float = 2.0  # px added to errors inside the log-progress objective (see _make_plan)
    continue_bonus: float = 0.05  # relative preference for repeating the previous primitive
    finish_steps: float = 1.0  # steps a push is expected to need after the pointer stops
    settle_tol: float = 2.5  # disc within this of the pre-contact point before pushing, px
    finish_tol: float = 6.0  # push done when the disc is this close to its end (at far speed), px
    replan_tol: float = 1.0  # block moved this much (px, or 0.02 rad) off-plan -> replan
    max_phase_steps: int = 40  # safety: any phase longer than this replans
    done_error: float = 0.6  # corner error (px) at which the expert just holds still
    retry_steps: int = 3  # hold this many actions after a plan found no improving push
    pass_through: bool = True  # start pushing while the disc still arrives (see _refine)
    refine_slack: float = 0.2  # ... unless that loses more than this share of the planned gain
    min_gain: float = 0.05  # a push must be predicted to cut the corner error by this much, px


PRESETS = {
    "default": ExpertConfig(),
    # Coarser candidate set for quick tests and smoke runs.
    "fast": ExpertConfig(contact_spacing=25.0, push_angles_deg=(-25.0, 0.0, 25.0)),
}


def _to_block(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points (..., 2) -> block frame of pose (x, y, angle)."""
    c, s = np.cos(pose[2]), np.sin(pose[2])
    d = points - pose[:2]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def _to_world(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    c, s = np.cos(pose[2]), np.sin(pose[2])
    return np.stack([c * points[..., 0] - s * points[..., 1], s * points[..., 0] + c * points[..., 1]], -1) + pose[:2]


def t_clearance(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Distance (px) from world points (..., 2) to the T at pose; 0 inside it."""
    local = _to_block(np.asarray(points, dtype=np.float64), pose)[..., None, :]  # (..., 1, 2)
    excess = np.maximum(np.abs(local - _BOXES[:, :2]) - _BOXES[:, 2:], 0.0)  # (..., 2 boxes, 2)
    return np.linalg.norm(excess, axis=-1).min(-1)


def _segments_clear(a: np.ndarray, b: np.ndarray, pose: np.ndarray, thr, n: int = 48) -> np.ndarray:
    """For segments a[i]->b[i] (S, 2), whether every sampled point keeps clearance >= thr."""
    f = np.linspace(0.0, 1.0, n)[None, :, None]
    pts = a[:, None, :] + f * (b - a)[:, None, :]  # (S, n, 2)
    return (t_clearance(pts, pose) >= np.asarray(thr)[..., None]).all(-1)


def _contacts(spacing: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed contact points on the outline (block frame): (points (K,2), normals (K,2), edge ids)."""
    pts, nrm, ids = [], [], []
    for i in range(8):
        a, b = T_OUTLINE[i], T_OUTLINE[(i + 1) % 8]
        length = np.linalg.norm(b - a)
        k = max(2, int(round((length - 10) / spacing)) + 1)
        for t in np.linspace(5.0, length - 5.0, k):
            pts.append(a + (b - a) * t / length)
            nrm.append(_EDGE_NORMALS[i])
            ids.append(i)
    return np.array(pts), np.array(nrm), np.array(ids)


def _route_nodes(clear: float) -> np.ndarray:
    """Waypoints (8, 2) in the block frame: each outline corner pushed out along both normals."""
    return T_OUTLINE + clear * (_EDGE_NORMALS + np.roll(_EDGE_NORMALS, 1, axis=0))


class ExpertPolicy:
    """Privileged expert: `reset(seed)`, `act(obs) -> (2,) float pointer target in [0, 512]`.

    Reads obs["state"] (5,) = [agent x, agent y, block x, block y, block angle] and
    obs["agent_vel"] (2,). Deterministic: the seed is only recorded (the planner uses no RNG).
    """

    def __init__(self, config: ExpertConfig | str = "default"):
        if isinstance(config, str):
            if config not in PRESETS:
                raise ValueError(f"ExpertPolicy: unknown preset {config!r}; choose from {sorted(PRESETS)}")
            config = PRESETS[config]
        self.cfg = config
        self._c_pts, self._c_nrm, self._c_edge = _contacts(config.contact_spacing)
        ang = np.deg2rad(np.asarray(config.push_angles_deg))
        self._rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2)
        self._nodes = _route_nodes(AGENT_RADIUS + config.route_margin)
        self._profiles: dict[float, tuple[np.ndarray, np.ndarray]] = {}
        self.reset(0)

    # ----------------------------------------------------------------------------- interface
    def reset(self, seed: int) -> None:
        self.seed = int(seed)
        self._ptr = None  # last pointer target (the steady hand starts where the disc is)
        self._plan = None
        self._prev_primitive = None
        self._last = None  # (primitive, corner error when it was planned)
        self._banned = set()  # primitives that just failed to make progress
        self._t = 0  # actions taken this episode
        self._retry_at = 0  # after a failed plan, hold still until this action before retrying
        self.n_plans = 0

    def act(self, obs: dict) -> np.ndarray:
        state = np.asarray(obs["state"], dtype=np.float64)
        if state.shape != (5,):
            raise ValueError(f"ExpertPolicy.act: obs['state'] must have shape (5,), got {state.shape}")
        agent, pose = state[:2], state[2:]
        if self._ptr is None:
            self._ptr = agent.copy()
        self._t += 1
        target = self._next_target(agent, pose, np.asarray(obs.get("agent_vel", (0.0, 0.0)), dtype=np.float64))
        step = target - self._ptr
        dist = np.linalg.norm(step)
        if dist > self.cfg.max_step:  # steady hand: never more than max_step per action
            step *= self.cfg.max_step / dist
        self._ptr = np.clip(self._ptr + step, 0.0, 512.0)
        return self._ptr.copy()

    @property
    def phase(self) -> str:
        """What the pointer is doing: approach, settle, push, finish, or hold (no push planned)."""
        return self._plan["phase"] if self._plan is not None else "hold"

    @property
    def phase_steps(self) -> int:
        """Actions spent in the current phase so far."""
        return self._plan["steps"] if self._plan is not None else 0

    # ----------------------------------------------------------------------------- execution
    def _next_target(self, agent, pose, agent_vel) -> np.ndarray:
        cfg = self.cfg
        for _ in range(3):  # a finished phase hands over to the next one within the same action
            p = self._plan
            if p is None:
                if vertex_error(pose) < cfg.done_error or self._t < self._retry_at:
                    return self._ptr.copy()
                self._plan = p = self._make_plan(agent, pose, agent_vel)
                if p is None:  # nothing improves from here: hold, the disc settles, try again
                    self._retry_at = self._t + cfg.retry_steps
                    return self._ptr.copy()
            p["steps"] += 1
            if p["steps"] > cfg.max_phase_steps:
                self._plan = None
                continue
            if p["phase"] in ("approach", "settle"):
                moved = np.abs(pose[:2] - p["pose0"][:2]).max() > cfg.replan_tol
                if moved or abs(pose[2] - p["pose0"][2]) > 0.02:
                    self._plan = None  # the T moved under us (approach clipped it): replan
                    continue
            if p["phase"] == "approach":
                tgt = self._walk(p["route"], cfg.max_step)
                if tgt is not None:
                    return tgt
                p["phase"], p["steps"] = "settle", 0
                if cfg.pass_through and self._refine(agent, agent_vel, pose, p):
                    p["phase"] = "push"  # the disc is still moving: no need to wait for it
            if p["phase"] == "settle":
                if np.linalg.norm(agent - p["start"]) > cfg.settle_tol:
                    return p["start"]
                p["phase"], p["steps"] = "push", 0
                p["route"] = [p["end"]]
            if p["phase"] == "push":
                tgt = self._walk(p["route"], p["speed"])
                if tgt is not None:
                    return tgt
                p["phase"], p["steps"] = "finish", 0
            if p["phase"] == "finish":
                # Slow (fine) pushes touch the T only in their last px: finish them more exactly.
                tol = cfg.finish_tol * min(1.0, p["speed"] / cfg.push_speed_far)
                if np.linalg.norm(agent - p["end"]) > tol and p["steps"] < 6:
                    return p["end"]
                self._plan = None
        return self._ptr.copy()

    def _refine(self, agent, agent_vel, pose, p) -> bool:
        """Re-simulate the chosen push from the disc's real, still-moving state (the agent's PD
        motion is reproduced exactly, see dva.pusht.sim) and re-pick its length. Skips the wait for
        the disc to settle at the pre-contact point; False (then settle) if the moving start
        spoils the push."""
        d, speed = p["dir"], p["speed"]
        longest = p["length"] * 1.3 + 10.0
        n_push = int(np.ceil(longest / speed))
        ramp = np.minimum(np.arange(1, n_push + 4) * speed, longest)
        targets = p["start"] + ramp[:, None] * d  # (n_push + 3, 2) pointer per action
        ps, vs = pd_rollout(agent, agent_vel, targets)
        poses = Sim(np.concatenate([agent, pose]), agent_vel).step_velocities(vs)
        errs = vertex_error(poses)
        i = int(np.argmin(errs))
        if errs[i] > p["predicted"] + max(0.3, self.cfg.refine_slack * (p["error"] - p["predicted"])):
            return False
        p["end"] = p["start"] + d * max(0.0, float(np.dot(ps[i] - p["start"], d)))
        p["predicted"] = float(errs[i])
        p["route"] = [p["end"]]
        return True

    def _walk(self, route: list, speed: float):
        """Advance the pointer along a polyline by up to `speed`; None once the route is done."""
        if not route:
            return None
        pos, budget = self._ptr.copy(), speed
        while route:
            seg = route[0] - pos
            d = np.linalg.norm(seg)
            if d > budget:
                return pos + seg * (budget / d)
            pos, budget = route.pop(0), budget - d
        return pos

    # ----------------------------------------------------------------------------- planning
    def _speed(self, err: float) -> float:
        c = self.cfg
        return c.push_speed_far if err > 30 else c.push_speed_mid if err > 8 else c.push_speed_fine

    def _profile(self, speed: float, n_push: int) -> tuple[np.ndarray, np.ndarray]:
        """Disc progress s and speed ds (per substep) along a push from rest: pointer ramps at
        `speed` px/step for n_push steps, then holds 3 steps. Same for every primitive."""
        key = (speed, n_push)
        if key not in self._profiles:
            ramp = np.minimum(np.arange(1, n_push + 4), n_push) * speed
            targets = np.stack([ramp, np.zeros_like(ramp)], -1)
            ps, vs = pd_rollout((0.0, 0.0), (0.0, 0.0), targets)
            self._profiles[key] = (ps[:, 0], vs[:, 0])
        return self._profiles[key]

    def _make_plan(self, agent, pose, agent_vel):
        cfg = self.cfg
        self.n_plans += 1
        err0 = float(vertex_error(pose))
        speed = self._speed(err0)
        max_push = min(cfg.max_push, 2.0 * err0 + 20.0)
        n_push = max(1, int(np.ceil(max_push / speed)))
        s, ds = self._profile(speed, n_push)

        start = self._ptr.copy()
        clear_r = AGENT_RADIUS + cfg.gap
        pts_w = _to_world(self._c_pts, pose)
        nrm_w = _to_world(self._c_nrm, np.array([0.0, 0.0, pose[2]]))
        p0 = pts_w + nrm_w * clear_r  # pre-contact points (K, 2)
        ok = (t_clearance(p0, pose) >= clear_r - 0.5) & (p0 >= 2).all(-1) & (p0 <= 510).all(-1)
        approach = self._approach_lengths(start, p0, pose)  # (K,) px, inf if unreachable
        ok &= np.isfinite(approach)

        # A push that realised none of its predicted gain (the rebuilt sim is not exact) is not
        # retried until some other push makes progress: otherwise the plan repeats forever.
        if self._last is not None and err0 > self._last[1] - cfg.min_gain:
            self._banned.add(self._last[0])
        elif self._last is not None:
            self._banned.clear()
        best = None
        for k in np.flatnonzero(ok):
            dirs = -(self._rot @ nrm_w[k])  # (A, 2) push directions
            t_before = approach[k] / cfg.max_step + 1.0  # approach + ~1 settle step
            for j, d in enumerate(dirs):
                if (k, j) in self._banned:
                    continue
                vel = ds[:, None] * d  # (N, 2) disc velocity per substep
                sim = Sim(np.concatenate([p0[k], pose]))
                poses = sim.step_velocities(vel)
                errs = vertex_error(poses)
                steps = t_before + np.arange(1, len(s) + 1) / SUBSTEPS + cfg.finish_steps
                # Maximise progress per step in log error: halving 60 -> 30 px is worth as much as
                # 3 -> 1.5 px, and a tiny gain never pays for an approach and a settle.
                costs = -np.log((err0 + cfg.log_eps) / (errs + cfg.log_eps)) / steps
                if self._prev_primitive == (k, j):
                    costs *= 1.0 + cfg.continue_bonus  # ties go to repeating the current push
                costs[errs > err0 - cfg.min_gain] = np.inf  # only pushes that make progress
                i = int(np.argmin(costs))
                if np.isfinite(costs[i]) and (best is None or costs[i] < best[0] - 1e-9):
                    best = (float(costs[i]), k, j, float(s[i]), d, float(errs[i]))
        if best is None:
            return None  # no push improves: hold (the caller retries next action)
        _, k, j, length, d, predicted = best
        self._prev_primitive = (k, j)
        self._last = ((k, j), err0)
        self.last_plan = {"error": err0, "predicted_error": predicted, "contact": int(k), "direction": int(j), "length": length}
        return {
            "phase": "approach",
            "steps": 0,
            "pose0": pose.copy(),
            "route": self._route(start, p0[k], pose),
            "start": p0[k],
            "end": p0[k] + d * length,
            "dir": d,
            "length": length,
            "error": err0,
            "predicted": predicted,
            "speed": speed,
        }

    # ----------------------------------------------------------------------------- routing
    def _graph(self, start: np.ndarray, pose: np.ndarray):
        """Visibility graph around the T: node 0 = start (stepped out if needed), 1.. = corners."""
        cfg = self.cfg
        r_ok = AGENT_RADIUS + cfg.route_clear
        prefix = []
        c0 = float(t_clearance(start, pose))
        if c0 < r_ok:  # disc is at/inside the buffered outline: step straight out first
            dirs = np.stack([np.cos(np.arange(16) * np.pi / 8), np.sin(np.arange(16) * np.pi / 8)], -1)
            for rad in (4.0, 8.0, 12.0, 16.0, 24.0, 32.0, 48.0):
                cand = start + rad * dirs
                good = t_clearance(cand, pose) >= r_ok + 2.0
                if good.any():
                    start = cand[np.flatnonzero(good)[0]]
                    prefix = [start]
                    break
        nodes = np.concatenate([start[None], _to_world(self._nodes, pose)])
        nodes_ok = (nodes >= 0).all(-1) & (nodes <= 512).all(-1)
        n = len(nodes)
        ii, jj = np.triu_indices(n, 1)
        vis = _segments_clear(nodes[ii], nodes[jj], pose, r_ok) & nodes_ok[ii] & nodes_ok[jj]
        dist = np.full(n, np.inf)
        dist[0], prev = 0.0, np.full(n, -1)
        adj = np.zeros((n, n), dtype=bool)
        adj[ii[vis], jj[vis]] = adj[jj[vis], ii[vis]] = True
        heap = [(0.0, 0)]
        while heap:  # Dijkstra over <= 9 nodes
            d0, u = heapq.heappop(heap)
            if d0 > dist[u]:
                continue
            for v in np.flatnonzero(adj[u]):
                nd = d0 + np.linalg.norm(nodes[u] - nodes[v])
                if nd < dist[v]:
                    dist[v], prev[v] = nd, u
                    heapq.heappush(heap, (nd, v))
        return nodes, nodes_ok, dist, prev, prefix

    def _approach_lengths(self, start, targets, pose) -> np.ndarray:
        """Route length (px) from start to each target (K, 2); inf where no route exists."""
        self._g = self._graph(start, pose)
        nodes, nodes_ok, dist, _, prefix = self._g
        k, n = len(targets), len(nodes)
        a = np.repeat(nodes, k, axis=0)  # (n*K, 2): node-major
        b = np.tile(targets, (n, 1))
        r_ok = AGENT_RADIUS + self.cfg.route_clear
        thr = np.full(n * k, r_ok)
        thr[:k] = np.minimum(r_ok, t_clearance(targets, pose) - 0.5)
        vis = _segments_clear(a, b, pose, thr).reshape(n, k) & nodes_ok[:, None]
        total = np.where(vis, dist[:, None] + np.linalg.norm(nodes[:, None] - targets[None], axis=-1), np.inf)
        extra = np.linalg.norm(prefix[0] - self._ptr) if prefix else 0.0
        return total.min(0) + extra

    def _route(self, start, target, pose) -> list:
        nodes, nodes_ok, dist, prev, prefix = self._g
        r_ok = AGENT_RADIUS + self.cfg.route_clear
        thr = min(r_ok, float(t_clearance(target, pose)) - 0.5)
        best, best_len = None, np.inf
        for u in range(len(nodes)):
            if not np.isfinite(dist[u]) or not nodes_ok[u]:
                continue
            if _segments_clear(nodes[u][None], target[None], pose, np.array([thr if u == 0 else r_ok]))[0]:
                ln = dist[u] + np.linalg.norm(nodes[u] - target)
                if ln < best_len:
                    best, best_len = u, ln
        path = [target]
        u = best
        while u is not None and u > 0:
            path.insert(0, nodes[u])
            u = prev[u] if prev[u] >= 0 else None
        return [np.asarray(p, dtype=np.float64) for p in prefix + path]


def with_overrides(preset: str = "default", **kw) -> ExpertConfig:
    """A preset with some fields replaced (for sweeps and tests)."""
    return replace(PRESETS[preset], **kw)
