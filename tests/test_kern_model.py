"""The DVA (tiny preset) gives the same predictions on the 'triton' backend (every Triton kernel
through the interpreter on CPU) as on 'ref': the model-level check of the backend switch."""
import pytest
import torch

pytest.importorskip("triton")

import dvakern  # noqa: E402

dva_model = pytest.importorskip("dva.model.dva")
config = pytest.importorskip("dva.model.config")


def test_tiny_dva_agrees_across_backends(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    torch.manual_seed(0)
    m = dva_model.DVA(config.preset("tiny")).eval()
    with torch.no_grad():
        for p in m.parameters():  # randomise zero-initialised layers so every path carries signal
            p.add_(torch.randn_like(p) * 0.05)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, 3, 3, 96, 96, generator=g) * 2 - 1
    noise = torch.randn(1, 3, 96, 96, generator=g)
    action = torch.rand(1, 2, generator=g) * 512
    out = {}
    try:
        for name in ("ref", "triton"):
            dvakern.set_backend(name)
            with torch.no_grad():
                cache = m.init_cache(1, "cpu")
                for i in range(frames.shape[1]):
                    ctx = m.observe(cache, frames[:, i])
                out[name] = m.sample(ctx, action, steps=1, noise=noise)
    finally:
        dvakern.set_backend("auto")
    torch.testing.assert_close(out["triton"], out["ref"], atol=1e-4, rtol=1e-4)


def test_building_or_loading_a_model_leaves_the_kernel_switch_alone(tmp_path):
    """The backend is the process's (dvakern.set_backend), never a model's: before, DVA() reset it
    to its config's, even inside `with dvakern.backend('ref')`."""
    from dva.checkpoint import load
    from dva.policy import PACKAGED_CHECKPOINT

    with dvakern.backend("ref"):
        dva_model.DVA(config.preset("tiny"))
        assert dvakern.get_backend() == "ref"
        load(PACKAGED_CHECKPOINT)  # its JSON still carries the retired 'backend': "auto"
        assert dvakern.get_backend() == "ref"
    cfg = config.DVAConfig.from_dict({**config.preset("tiny").to_dict(), "backend": "triton"})
    assert cfg == config.preset("tiny") and "backend" not in cfg.to_dict()
