"""Issue 21 lever H, step 2: the base package's weights with the trunk trained by intent_trunk.py and its
head as DVA.action_head (config action_aux 1.0), as a checkpoint `python -m dva.train --init` reads.

    python dva/experiments/intent_init.py runs/intent_k1 runs/intent_init/dva runs/pkg_1204/dva_s
"""
import sys, torch
sys.path.insert(0, '.')
from dva import checkpoint as ckpt
src, dst, base = sys.argv[1], sys.argv[2], sys.argv[3]
tensors, meta = ckpt.read(base)
trunk, info = ckpt.read(src)  # intent_trunk.py's safetensors + JSON
for part in ('encoder', 'transformer'):
    for k, v in ckpt.section(trunk, part).items():
        key = f'model.{part}.{k}'
        assert key in tensors, key
        tensors[key] = v.float()
for k, v in ckpt.section(trunk, 'head').items():
    tensors[f'model.action_head.{k}'] = v.float()
meta = {k: v for k, v in meta.items() if k not in ('sha256', 'tensors', 'format', 'version')}
meta['config'] = {**meta['config'], 'action_aux': 1.0}
meta['note'] = f'{base} + trunk/head from {src} (step {info["log"][-1][0]}, test {info["log"][-1][1]:.1f} px)'
ckpt.save(dst, tensors, meta)
print('wrote', dst, meta['note'])
