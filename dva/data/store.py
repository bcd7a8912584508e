"""Episode store: npz shards (no pickle) + a JSON manifest with a sha256 per shard.

Layout of a dataset directory:

    manifest.json         format, version, generating config, gym-pusht version, shard list
    shard_0000000.npz     episodes [0, E), then shard_0000004.npz (E=4) episodes [4, 8), ...

A shard holds E episodes back to back. For an episode of T steps (DESIGN/contract alignment:
action t is applied after frame t and leads to frame t+1):

    states    float64 (T+1, 5)   [agent x, agent y, block x, block y, block angle]
    agent_vel float64 (T+1, 2)
    coverage  float32 (T+1,)     gym-pusht coverage of each state
    actions   float64 (T, 2)     pointer targets in [0, 512] pixels
    frames    uint8 (T+1, 96, 96, 3)   only with --frames (otherwise re-rendered from states)

concatenated over the shard's episodes, plus per-episode `episode` (global index), `seed`,
`steps` (T) and `success`. Every write goes to a temp file that is renamed into place, and the
manifest is rewritten (also atomically) after each shard, so a crash never leaves a half-written
shard that a reader would accept. Readers check each shard's size and sha256 against the
manifest and its arrays against each other, and name the file and the reason when they refuse.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "dva-pusht-episodes"
VERSION = 1
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A dataset file is missing, corrupted, truncated or inconsistent (message names it)."""


@dataclass
class Episode:
    seed: int
    states: np.ndarray     # (T+1, 5) float64
    agent_vel: np.ndarray  # (T+1, 2) float64
    actions: np.ndarray    # (T, 2) float64
    coverage: np.ndarray   # (T+1,) float32
    frames: np.ndarray | None = None  # (T+1, 96, 96, 3) uint8

    @property
    def steps(self) -> int:
        return len(self.actions)

    @property
    def success(self) -> bool:
        return bool((self.coverage > 0.95).any())


def shard_name(first_episode: int) -> str:
    """Shards are named by their first episode, so re-planned runs never reuse a name."""
    return f"shard_{first_episode:07d}.npz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(file) on a temp file in path's directory, fsync, then rename over path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_json(path: Path, obj) -> None:
    data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(data))


def write_shard(path: Path, first_episode: int, episodes: list[Episode]) -> dict:
    """Write episodes [first_episode, first_episode + len) atomically; returns the manifest entry."""
    if not episodes:
        raise ValueError("write_shard: no episodes")
    with_frames = episodes[0].frames is not None
    arrays = {
        "episode": np.arange(first_episode, first_episode + len(episodes), dtype=np.int64),
        "seed": np.array([e.seed for e in episodes], dtype=np.int64),
        "steps": np.array([e.steps for e in episodes], dtype=np.int64),
        "success": np.array([e.success for e in episodes], dtype=np.bool_),
        "states": np.concatenate([e.states for e in episodes]).astype(np.float64),
        "agent_vel": np.concatenate([e.agent_vel for e in episodes]).astype(np.float64),
        "coverage": np.concatenate([e.coverage for e in episodes]).astype(np.float32),
        "actions": np.concatenate([e.actions for e in episodes]).astype(np.float64),
    }
    if with_frames:
        arrays["frames"] = np.concatenate([e.frames for e in episodes]).astype(np.uint8)
    _check_arrays(arrays, str(path))
    save = np.savez_compressed if with_frames else np.savez  # frames are mostly white: zlib pays
    atomic_write_bytes(path, lambda f: save(f, **arrays))
    return {
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "bytes": Path(path).stat().st_size,
        "first_episode": first_episode,
        "episodes": len(episodes),
        "steps": int(arrays["steps"].sum()),
        "frames": with_frames,
    }


def _check_arrays(a: dict, where: str) -> None:
    """Internal consistency of one shard's arrays (shapes, dtypes, finite values, alignment)."""
    need = ["episode", "seed", "steps", "success", "states", "agent_vel", "coverage", "actions"]
    missing = [k for k in need if k not in a]
    if missing:
        raise DatasetError(f"{where}: missing arrays {missing}")
    E = len(a["episode"])
    steps = a["steps"]
    for k in ("seed", "steps", "success"):
        if a[k].shape != (E,):
            raise DatasetError(f"{where}: '{k}' has shape {a[k].shape}, expected ({E},)")
    if E == 0 or (steps < 1).any():
        raise DatasetError(f"{where}: empty shard or an episode with no steps")
    n_states, n_actions = int(steps.sum()) + E, int(steps.sum())
    expect = {"states": (n_states, 5), "agent_vel": (n_states, 2), "coverage": (n_states,),
              "actions": (n_actions, 2)}
    if "frames" in a:
        expect["frames"] = (n_states, 96, 96, 3)
    for k, shape in expect.items():
        if a[k].shape[:len(shape)] != shape or a[k].ndim != len(shape):
            raise DatasetError(f"{where}: '{k}' has shape {a[k].shape}, expected {shape} "
                               f"for {E} episodes of {steps.tolist()} steps")
    for k in ("states", "agent_vel", "actions"):
        if not np.isfinite(a[k]).all():
            raise DatasetError(f"{where}: '{k}' contains NaN or inf")
    if "frames" in a and a["frames"].dtype != np.uint8:
        raise DatasetError(f"{where}: frames must be uint8, got {a['frames'].dtype}")


def read_shard(path: Path, entry: dict | None = None, frames: bool = True) -> dict[str, np.ndarray]:
    """Load one shard, verifying it against its manifest entry (size, sha256, counts).

    frames=False leaves stored frames on disk (they are 27 KiB each; the checksum still covers them).
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: shard listed in the manifest is missing")
    if entry is not None:
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DatasetError(f"{path}: truncated or altered: {size} bytes, manifest says {entry['bytes']}")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise DatasetError(f"{path}: checksum mismatch (sha256 {digest[:12]}..., manifest "
                               f"{entry['sha256'][:12]}...): corrupted or not the shard that was written")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files if frames or k != "frames"}
    except Exception as e:  # zip/npy format errors of every kind
        raise DatasetError(f"{path}: not a readable npz shard ({type(e).__name__}: {e})") from None
    _check_arrays(arrays, str(path))
    if entry is not None:
        first = entry["first_episode"]
        if (len(arrays["episode"]) != entry["episodes"] or int(arrays["episode"][0]) != first
                or int(arrays["steps"].sum()) != entry["steps"]):
            raise DatasetError(f"{path}: content does not match its manifest entry "
                               f"(episodes {len(arrays['episode'])} vs {entry['episodes']}, "
                               f"steps {int(arrays['steps'].sum())} vs {entry['steps']})")
    return arrays


@dataclass
class Manifest:
    config: dict
    shards: list[dict] = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION
    gym_pusht_version: str = ""
    created: str = ""

    @property
    def episodes(self) -> int:
        return sum(s["episodes"] for s in self.shards)

    @property
    def steps(self) -> int:
        return sum(s["steps"] for s in self.shards)

    def save(self, root: Path) -> None:
        doc = {"format": self.format, "version": self.version, "config": self.config,
               "gym_pusht_version": self.gym_pusht_version,
               "created": self.created or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "episodes": self.episodes, "steps": self.steps, "shards": self.shards}
        atomic_write_json(Path(root) / MANIFEST, doc)

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        path = Path(root) / MANIFEST
        if not path.is_file():
            raise DatasetError(f"{path}: no manifest (not a dataset directory, or nothing collected yet)")
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: manifest is not valid JSON ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise DatasetError(f"{path}: not a {FORMAT} manifest (format={doc.get('format') if isinstance(doc, dict) else None!r})")
        if doc.get("version") != VERSION:
            raise DatasetError(f"{path}: manifest version {doc.get('version')}, this reader knows {VERSION}")
        shards = doc.get("shards")
        keys = {"file", "sha256", "bytes", "first_episode", "episodes", "steps", "frames"}
        if not isinstance(shards, list) or not all(isinstance(s, dict) and keys <= s.keys() for s in shards):
            raise DatasetError(f"{path}: malformed shard list (each entry needs {sorted(keys)})")
        return cls(config=doc.get("config", {}), shards=shards, format=doc["format"],
                   version=doc["version"], gym_pusht_version=doc.get("gym_pusht_version", ""),
                   created=doc.get("created", ""))


@dataclass
class Dataset:
    """All episodes of one dataset directory, verified and concatenated (numpy, in memory). A
    LeRobot-format folder (dva.data.lerobot) gives frames and actions only: no manifest, seeds -1,
    and states, agent_vel and coverage None."""

    root: Path
    manifest: Manifest | None
    episode: np.ndarray     # (E,) global episode index
    seed: np.ndarray        # (E,)
    steps: np.ndarray       # (E,) T per episode
    state_start: np.ndarray   # (E,) row of each episode's first state in `states`
    action_start: np.ndarray  # (E,) row of each episode's first action in `actions`
    states: np.ndarray | None     # (sum T+1, 5) float64
    agent_vel: np.ndarray | None  # (sum T+1, 2) float64
    coverage: np.ndarray | None   # (sum T+1,) float32
    actions: np.ndarray     # (sum T, 2) float64
    frames: np.ndarray | None  # (sum T+1, H, W, 3) uint8 when every shard stored frames

    @property
    def n_frames(self) -> int:
        return len(self.states if self.states is not None else self.frames)

    def episode_arrays(self, i: int) -> dict[str, np.ndarray]:
        s, a, T = self.state_start[i], self.action_start[i], self.steps[i]
        out = {"actions": self.actions[a:a + T]}
        for k in ("states", "agent_vel", "coverage", "frames"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)[s:s + T + 1]
        return out

    def head(self, n: int) -> "Dataset":
        """The first n episodes (a view)."""
        n = max(0, min(int(n), len(self.steps)))
        S = int(self.steps[:n].sum()) + n  # frames of those episodes
        cut = lambda x, k: None if x is None else x[:k]  # noqa: E731
        return Dataset(self.root, self.manifest, self.episode[:n], self.seed[:n], self.steps[:n],
                       self.state_start[:n], self.action_start[:n], cut(self.states, S), cut(self.agent_vel, S),
                       cut(self.coverage, S), self.actions[:S - n], cut(self.frames, S))


def load_dataset(root, progress: bool = False, frames: bool = True) -> Dataset:
    """Read and verify every shard of a dataset directory. Raises DatasetError naming the file.

    frames=False skips stored frames (Dataset.frames is None), e.g. for tools that re-render
    them from the states; a 1M-frame dataset's frames would need 27 GiB of memory. A LeRobot-format
    folder (meta/info.json) is read by dva.data.lerobot, frames always (it has no states).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset directory does not exist")
    from dva.data import lerobot

    if lerobot.is_lerobot(root):
        return lerobot.read(root, progress=progress)
    man = Manifest.load(root)
    if not man.shards:
        raise DatasetError(f"{root / MANIFEST}: the dataset has no shards yet")
    parts = []
    it = man.shards
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"verify {root.name}", unit="shard")
    expected_first = 0
    for entry in sorted(it, key=lambda s: s["first_episode"]):
        if entry["first_episode"] != expected_first:
            raise DatasetError(f"{root / MANIFEST}: shard {entry['file']} starts at episode "
                               f"{entry['first_episode']}, expected {expected_first} (gap or overlap)")
        expected_first += entry["episodes"]
        parts.append(read_shard(root / entry["file"], entry, frames))
    cat = {k: np.concatenate([p[k] for p in parts]) for k in
           ("episode", "seed", "steps", "states", "agent_vel", "coverage", "actions")}
    frames = np.concatenate([p["frames"] for p in parts]) if all("frames" in p for p in parts) else None
    steps = cat["steps"]
    state_start = np.concatenate([[0], np.cumsum(steps + 1)[:-1]]).astype(np.int64)
    action_start = np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int64)
    return Dataset(root, man, cat["episode"], cat["seed"], steps, state_start, action_start,
                   cat["states"], cat["agent_vel"], cat["coverage"], cat["actions"], frames)
