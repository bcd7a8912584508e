"""LeRobot-format datasets: read any robot's video + actions, and export ours as one.

    python -m dva.data.lerobot export data/expert data/expert_lerobot   # PushT episodes -> LeRobot v2.1
    python -m dva.train --preset tiny --data demo=data/expert_lerobot ...  # trains on it like any source

The layout is LeRobot's (https://github.com/huggingface/lerobot, codebase v2.1 and v3.0), read with
pyarrow and PyAV, not the `lerobot` package:

    meta/info.json          fps, features (shapes, dtypes), path templates, codebase_version
    meta/episodes.jsonl     v2.x: one line per episode (episode_index, length, tasks)
    meta/episodes/*/*.parquet   v3.0: the same per episode, plus where its rows and video lie
    data/**/*.parquet       one row per frame: action, episode_index, frame_index, timestamp, ...
    videos/**/*.mp4         the camera, one file per episode (v2.x) or many episodes per file (v3.0)

A LeRobot episode of N rows is N frames, each with the action taken at it; dva's episodes are
T + 1 frames and T actions (dva.data.store), so reading keeps the N frames and the first N - 1
actions, and exporting writes the T + 1 frames with the last action repeated on the final row.
The camera is the first feature of dtype "video" (or "image", frames stored in the table), or the
one named by `camera=`; the action is the feature "action". A LeRobot dataset has no simulator
states, so the losses that need them (DVAConfig.flow_loss, body_masks) cannot train on it.
"""
from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from dva.data.store import Dataset, DatasetError, atomic_write_json

INFO = Path("meta") / "info.json"
CHUNK = 1000  # episodes per chunk folder (LeRobot's default chunks_size)
V21_DATA = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
V21_VIDEO = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
V30_DATA = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V30_VIDEO = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
CAMERA = "observation.image"
TASK = "Push the T-shaped block onto the T-shaped target."


def is_lerobot(root) -> bool:
    return (Path(root) / INFO).is_file()


def _deps():
    try:
        import av
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DatasetError(f"LeRobot datasets need pyarrow and PyAV ({e}): pip install -e '.[lerobot]'") from None
    return av, pq


# ---- reading ----------------------------------------------------------------------------------
def frame_size(root, camera: str | None = None) -> int:
    """The camera's frame side from meta/info.json (no decoding)."""
    root = Path(root)
    feats = _json(root / INFO).get("features", {})
    cams = [camera] if camera else [k for k, f in feats.items() if f.get("dtype") in ("video", "image")]
    if not cams or cams[0] not in feats:
        raise DatasetError(f"{root / INFO}: no camera feature {camera or ''}")
    return int(feats[cams[0]]["shape"][0])  # (height, width, channels)


def read(root, camera: str | None = None, progress: bool = False) -> Dataset:
    """A LeRobot dataset folder -> dva's Dataset with frames and actions (no states).
    Raises DatasetError naming the file and the reason."""
    av, pq = _deps()
    root = Path(root)
    info = _json(root / INFO)
    version = str(info.get("codebase_version", ""))
    if not version.startswith(("v2", "v3")):
        raise DatasetError(f"{root / INFO}: codebase_version {version!r}; this reader knows v2.x and v3.0")
    feats = info.get("features", {})
    if camera is None:
        cams = [k for k, f in feats.items() if f.get("dtype") in ("video", "image")]
        if not cams:
            raise DatasetError(f"{root / INFO}: no feature of dtype 'video' or 'image' (no camera to train on)")
        camera = cams[0]
    if camera not in feats or feats[camera].get("dtype") not in ("video", "image"):
        raise DatasetError(f"{root / INFO}: {camera!r} is not a video or image feature (features: {sorted(feats)})")
    act = feats.get("action", {})
    if list(act.get("shape", [])) != [2]:
        raise DatasetError(f"{root / INFO}: the action is {act.get('shape')}-dimensional; dva's model reads 2-D "
                           f"actions (a pointer target: PushT's action space)")
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise DatasetError(f"{root / 'data'}: no parquet files")
    cols = ["episode_index", "frame_index", "action"] + ([camera] if feats[camera]["dtype"] == "image" else [])
    tables = []
    for f in files:
        try:
            tables.append(pq.read_table(f, columns=cols).to_pydict())
        except Exception as e:  # arrow raises many kinds
            raise DatasetError(f"{f}: not a readable LeRobot data file ({type(e).__name__}: {e})") from None
    rows = {c: [v for t in tables for v in t[c]] for c in cols}
    ep = np.asarray(rows["episode_index"], dtype=np.int64)
    fi = np.asarray(rows["frame_index"], dtype=np.int64)
    order = np.lexsort((fi, ep))
    ep, fi = ep[order], fi[order]
    actions = np.asarray(rows["action"], dtype=np.float64)[order]
    episodes, starts, lengths = np.unique(ep, return_index=True, return_counts=True)
    for e, s, n in zip(episodes, starts, lengths):
        if not np.array_equal(fi[s:s + n], np.arange(n)):
            raise DatasetError(f"{root / 'data'}: episode {e}'s frame_index is not 0..{n - 1}")
        if n < 2:
            raise DatasetError(f"{root / 'data'}: episode {e} has {n} frame (needs 2: one transition)")
    if feats[camera]["dtype"] == "image":
        from PIL import Image

        frames = np.stack([np.asarray(Image.open(io.BytesIO(rows[camera][i]["bytes"])).convert("RGB"))
                           for i in order])
    else:
        frames = _decode_videos(root, info, camera, episodes, lengths, av, pq, progress)
    H, W = frames.shape[1:3]
    if H != W:
        raise DatasetError(f"{root}: frames are {H}x{W}; dva's model takes square frames")
    keep = np.ones(len(ep), dtype=bool)
    keep[starts + lengths - 1] = False  # the final row's action leads nowhere
    steps = lengths - 1
    E = len(episodes)
    return Dataset(root=root, manifest=None, episode=episodes, seed=np.full(E, -1, dtype=np.int64), steps=steps,
                   state_start=starts.astype(np.int64), action_start=np.concatenate([[0], np.cumsum(steps)[:-1]]).astype(np.int64),
                   states=None, agent_vel=None, coverage=None, actions=actions[keep], frames=frames)


def action_range(root) -> tuple[float, float]:
    """(low, high) over both action coordinates from the dataset's stats (meta/stats.json, or
    v2.1's meta/episodes_stats.jsonl), without reading the tables."""
    root = Path(root)
    stats = root / "meta" / "stats.json"
    if stats.is_file():
        a = _json(stats).get("action", {})
        lo, hi = a.get("min"), a.get("max")
    else:
        path = root / "meta" / "episodes_stats.jsonl"
        if not path.is_file():
            raise DatasetError(f"{root / 'meta'}: no stats.json or episodes_stats.jsonl (the action range)")
        try:
            rows = [json.loads(x)["stats"]["action"] for x in path.read_text().splitlines() if x.strip()]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{path}: no action stats ({e})") from None
        lo = np.min([r["min"] for r in rows], 0) if rows else None
        hi = np.max([r["max"] for r in rows], 0) if rows else None
    if lo is None or hi is None or not float(np.max(hi)) > float(np.min(lo)):
        raise DatasetError(f"{root / 'meta'}: no usable action min/max in the stats")
    return float(np.min(lo)), float(np.max(hi))


def _json(path: Path):
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None


def _video_spans(root, info, camera, episodes, lengths, pq):
    """Per episode: (video file, first timestamp). v2.x: a file per episode from 0 s; v3.0: the
    episodes table says which file and where in it."""
    if str(info["codebase_version"]).startswith("v2"):
        chunks = int(info.get("chunks_size", CHUNK))
        tpl = info.get("video_path", V21_VIDEO)
        return [(root / tpl.format(episode_chunk=int(e) // chunks, video_key=camera, episode_index=int(e)), 0.0)
                for e in episodes]
    meta = sorted((root / "meta" / "episodes").rglob("*.parquet"))
    if not meta:
        raise DatasetError(f"{root / 'meta' / 'episodes'}: no episode tables (v3.0 layout)")
    keys = ["episode_index", f"videos/{camera}/chunk_index", f"videos/{camera}/file_index",
            f"videos/{camera}/from_timestamp"]
    try:
        t = {k: [v for f in meta for v in pq.read_table(f, columns=keys).column(k).to_pylist()] for k in keys}
    except Exception as e:
        raise DatasetError(f"{meta[0].parent}: episode tables lack {keys} ({type(e).__name__}: {e})") from None
    where = {e: (c, f, ts) for e, c, f, ts in zip(*(t[k] for k in keys))}
    tpl = info.get("video_path", V30_VIDEO)
    out = []
    for e in episodes:
        if int(e) not in where:
            raise DatasetError(f"{meta[0].parent}: episode {e} has rows in data/ but no entry in the episode tables")
        c, f, ts = where[int(e)]
        out.append((root / tpl.format(video_key=camera, chunk_index=c, file_index=f), float(ts)))
    return out


def _decode_videos(root, info, camera, episodes, lengths, av, pq, progress):
    fps = float(info.get("fps") or 0)
    if fps <= 0:
        raise DatasetError(f"{root / INFO}: fps missing")
    spans = _video_spans(root, info, camera, episodes, lengths, pq)
    decoded: dict[Path, tuple[np.ndarray, np.ndarray]] = {}  # file -> (times (n,), frames (n, H, W, 3))
    out = []
    it = list(zip(episodes, lengths, spans))
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"decode {root.name}", unit="ep")
    for e, n, (path, t0) in it:
        if path not in decoded:
            if not path.is_file():
                raise DatasetError(f"{path}: video of episode {e} is missing")
            try:
                with av.open(str(path)) as c:
                    fr = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
            except Exception as ex:
                raise DatasetError(f"{path}: not a decodable video ({type(ex).__name__}: {ex})") from None
            decoded = {path: (np.array([t for t, _ in fr]), np.stack([f for _, f in fr]))}  # one file at a time
        times, frames = decoded[path]
        idx = np.rint((times - t0) * fps).astype(np.int64)
        sel = np.flatnonzero((idx >= 0) & (idx < n))
        if len(sel) != n or not np.array_equal(idx[sel], np.arange(n)):
            raise DatasetError(f"{path}: {len(sel)} frames from {t0:.3f} s for episode {e}, its table has {n} rows")
        out.append(frames[sel])
    return np.concatenate(out)


# ---- writing ----------------------------------------------------------------------------------
def export(src: Dataset, out, fps: int = 10, crf: int = 10, version: str = "v2.1", progress: bool = True) -> Path:
    """Write a dva dataset as a LeRobot folder, `version` v2.1 (a parquet table and an mp4 per
    episode) or v3.0 (per chunk of 1000 episodes one table and one mp4, located by the episode
    tables). Rows: action, observation.state (the agent's position), indices, timestamp, next.done.
    Video: H.264 yuv444p (PushT's thin colours survive chroma subsampling badly), crf 10 is
    near-lossless. Frames are the stored ones or rendered from the states. Everything is written
    into OUT.tmp and renamed at the end, so a crash never leaves a half dataset under OUT."""
    av, pq = _deps()
    import pyarrow as pa
    import torch

    if version not in ("v2.1", "v3.0"):
        raise ValueError(f"version must be 'v2.1' or 'v3.0', got {version!r}")
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out}: already exists (remove it or choose another --out)")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    E = len(src.steps)
    v3 = version == "v3.0"
    it = range(E)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc=f"export {Path(src.root).name}", unit="ep")
    index, episodes, stats, tables, video, H = 0, [], [], [], None, 96
    for e in it:
        arr = src.episode_arrays(e)
        if "frames" in arr:
            frames = arr["frames"]
        else:
            from dva.pusht.render import render_frames

            frames = render_frames(torch.from_numpy(arr["states"]).float()).numpy()
        N, H = len(frames), frames.shape[1]
        act = np.concatenate([arr["actions"], arr["actions"][-1:]]).astype(np.float32)  # N rows
        state = (arr["states"][:, :2] if "states" in arr else np.zeros((N, 2))).astype(np.float32)
        ch, ep = e // CHUNK, int(e)
        first = v3 and e % CHUNK == 0  # v3: a new chunk's files
        t0 = 0.0 if not v3 else (0.0 if first else episodes[-1][f"videos/{CAMERA}/to_timestamp"])
        tables.append(pa.table({
            "observation.state": pa.array(state.tolist(), pa.list_(pa.float32())),
            "action": pa.array(act.tolist(), pa.list_(pa.float32())),
            "episode_index": pa.array(np.full(N, ep), pa.int64()),
            "frame_index": pa.array(np.arange(N), pa.int64()),
            "timestamp": pa.array(np.arange(N, dtype=np.float32) / fps, pa.float32()),
            "next.done": pa.array(np.arange(N) == N - 1, pa.bool_()),
            "index": pa.array(index + np.arange(N), pa.int64()),
            "task_index": pa.array(np.zeros(N, np.int64), pa.int64()),
        }))
        if v3:
            if first:
                if video is not None:
                    video.close()
                video = _VideoWriter(av, tmp / V30_VIDEO.format(video_key=CAMERA, chunk_index=ch, file_index=0), fps, crf)
            video.write(frames)
            episodes.append({"episode_index": ep, "tasks": [TASK], "length": N, "data/chunk_index": ch,
                             "data/file_index": 0, "dataset_from_index": index, "dataset_to_index": index + N,
                             f"videos/{CAMERA}/chunk_index": ch, f"videos/{CAMERA}/file_index": 0,
                             f"videos/{CAMERA}/from_timestamp": t0, f"videos/{CAMERA}/to_timestamp": t0 + N / fps})
            if e % CHUNK == CHUNK - 1 or e == E - 1:  # the chunk's table
                _write_table(pq, tmp / V30_DATA.format(chunk_index=ch, file_index=0), pa.concat_tables(tables))
                tables = []
        else:
            _write_table(pq, tmp / V21_DATA.format(episode_chunk=ch, episode_index=ep), tables.pop())
            with _VideoWriter(av, tmp / V21_VIDEO.format(episode_chunk=ch, video_key=CAMERA, episode_index=ep),
                              fps, crf) as w:
                w.write(frames)
            episodes.append({"episode_index": ep, "tasks": [TASK], "length": N})
        stats.append({"action": _stats(act), "observation.state": _stats(state), CAMERA: _image_stats(frames)})
        index += N
    if video is not None:
        video.close()
    vec = {"dtype": "float32", "shape": [2], "names": {"motors": ["x", "y"]}}
    scalar = {"shape": [1], "names": None}
    info = {
        "codebase_version": version, "robot_type": "pusht", "fps": fps,
        "total_episodes": E, "total_frames": index, "total_tasks": 1,
        "chunks_size": CHUNK, "splits": {"train": f"0:{E}"},
        "data_path": V30_DATA if v3 else V21_DATA, "video_path": V30_VIDEO if v3 else V21_VIDEO,
        "features": {
            CAMERA: {"dtype": "video", "shape": [H, H, 3], "names": ["height", "width", "channels"],
                     "info": {"video.fps": float(fps), "video.height": H, "video.width": H, "video.channels": 3,
                              "video.codec": "h264", "video.pix_fmt": "yuv444p", "video.is_depth_map": False,
                              "has_audio": False}},
            "observation.state": vec, "action": vec,
            "episode_index": {"dtype": "int64", **scalar}, "frame_index": {"dtype": "int64", **scalar},
            "timestamp": {"dtype": "float32", **scalar}, "next.done": {"dtype": "bool", **scalar},
            "index": {"dtype": "int64", **scalar}, "task_index": {"dtype": "int64", **scalar},
        },
        "dva_source": str(src.root),
    }
    if not v3:
        info.update(total_videos=E, total_chunks=(E + CHUNK - 1) // CHUNK)
    (tmp / "meta").mkdir(parents=True, exist_ok=True)
    atomic_write_json(tmp / INFO, info)
    if v3:
        _write_table(pq, tmp / "meta" / "episodes" / "chunk-000" / "file-000.parquet", pa.Table.from_pylist(episodes))
        _write_table(pq, tmp / "meta" / "tasks.parquet", pa.table({"task_index": [0], "task": [TASK]}))
        atomic_write_json(tmp / "meta" / "stats.json", {k: _merge(s[k] for s in stats) for k in stats[0]} if stats else {})
    else:
        _jsonl(tmp / "meta" / "episodes.jsonl", episodes)
        _jsonl(tmp / "meta" / "tasks.jsonl", [{"task_index": 0, "task": TASK}])
        _jsonl(tmp / "meta" / "episodes_stats.jsonl", [{"episode_index": i, "stats": st} for i, st in enumerate(stats)])
    tmp.rename(out)
    return out


def _write_table(pq, path: Path, table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


class _VideoWriter:
    """H.264 yuv444p at `fps`, frames appended episode after episode (v3.0 puts many in a file)."""

    def __init__(self, av, path: Path, fps: int, crf: int):
        self.av = av
        path.parent.mkdir(parents=True, exist_ok=True)
        self.c = av.open(str(path), "w")
        self.s = None
        self.fps, self.crf = fps, crf

    def write(self, frames: np.ndarray) -> None:
        if self.s is None:
            self.s = self.c.add_stream("libx264", rate=self.fps)
            self.s.width, self.s.height, self.s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
            self.s.options = {"crf": str(self.crf), "g": "2"}  # g 2: LeRobot's keyframe spacing
        for f in frames:
            self.c.mux(self.s.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))

    def close(self) -> None:
        if self.s is not None:
            self.c.mux(self.s.encode())
        self.c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _merge(parts) -> dict:
    """Dataset-wide stats from per-episode ones (min, max, count-weighted mean and std)."""
    parts = list(parts)
    n = np.array([p["count"][0] for p in parts], dtype=np.float64)
    get = lambda k: np.array([p[k] for p in parts], dtype=np.float64)  # noqa: E731
    w = (n / n.sum()).reshape(-1, *([1] * (get("mean").ndim - 1)))
    mean = (get("mean") * w).sum(0)
    var = ((get("std") ** 2 + get("mean") ** 2) * w).sum(0) - mean**2
    return {"min": get("min").min(0).tolist(), "max": get("max").max(0).tolist(), "mean": mean.tolist(),
            "std": np.sqrt(np.maximum(var, 0)).tolist(), "count": [int(n.sum())]}


def _stats(x: np.ndarray) -> dict:
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(),
            "std": x.std(0).tolist(), "count": [len(x)]}


def _image_stats(frames: np.ndarray) -> dict:
    """Per channel, in [0, 1], shaped (3, 1, 1) as LeRobot stores them."""
    f = frames.reshape(-1, 3).astype(np.float64) / 255.0
    return {k: [[[v]] for v in vals] for k, vals in
            (("min", f.min(0)), ("max", f.max(0)), ("mean", f.mean(0)), ("std", f.std(0)))} | {"count": [len(frames)]}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m dva.data.lerobot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write a dva dataset (dva.collect's folder) as a LeRobot v2.1 dataset")
    e.add_argument("src", type=Path, help="dva dataset folder (e.g. data/expert)")
    e.add_argument("out", type=Path, help="new LeRobot dataset folder (must not exist)")
    e.add_argument("--episodes", type=int, default=None, help="export only the first N episodes")
    e.add_argument("--fps", type=int, default=10, help="frame rate written to the videos and info.json (PushT: 10)")
    e.add_argument("--crf", type=int, default=10, help="H.264 quality, 0 lossless .. 51 worst (default 10)")
    e.add_argument("--version", choices=("v2.1", "v3.0"), default="v2.1",
                   help="LeRobot layout: v2.1 (files per episode) or v3.0 (files per 1000 episodes)")
    i = sub.add_parser("info", help="read a LeRobot dataset as dva's loader will and summarise it")
    i.add_argument("root", type=Path)
    i.add_argument("--camera", default=None, help="video/image feature to read (default: the first one)")
    args = p.parse_args(argv)
    from dva.data.store import load_dataset

    try:
        if args.cmd == "export":
            src = load_dataset(args.src, progress=True)
            if args.episodes is not None:
                src = src.head(args.episodes)
            export(src, args.out, fps=args.fps, crf=args.crf, version=args.version)
            print(f"{args.out}: {len(src.steps)} episodes, {int(src.steps.sum() + len(src.steps))} frames "
                  f"(LeRobot {args.version})")
        else:
            ds = read(args.root, camera=args.camera, progress=True)
            print(f"{args.root}: {len(ds.steps)} episodes, {len(ds.frames)} frames of {ds.frames.shape[1]}x"
                  f"{ds.frames.shape[2]}, actions in [{ds.actions.min():.1f}, {ds.actions.max():.1f}]")
    except DatasetError as ex:
        print(f"error: {ex}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
