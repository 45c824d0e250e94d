"""The GPU code paths run with every tensor on torch's meta device: a tensor created on the CPU by
mistake (a factory without device=, a CPU index, a stray .cpu() round trip) raises "Tensor on device
cpu is not on the expected device meta!", as it would fail or synchronise on CUDA. Meta tensors
have shapes and dtypes but no values, so these tests check placement and precision, not numbers.
"""

import pytest
import torch
from op_recorder import OpRecorder

import lamamba.models.ss2d as ss2d
from lamamba.diffusion import create_diffusion, guided_forward
from lamamba.models import ModelConfig, build_model
from lamamba.ops.selective_scan import _ChunkedSelectiveScan, _swap_last_two
from lamamba.rng import PerSampleGenerators
from lamamba.training.engine import plan_batches
from lamamba.training.step import COUNT, QCOUNT, VECTOR, DiffusionTrainStep

META = torch.device("meta")


@pytest.fixture
def torch_scan_on_meta(monkeypatch):
    """The selective scan skips meta tensors (FLOP counting); run the torch backend's own forward
    and backward on them instead, and record the dtypes the scan receives."""
    seen = []

    def scan(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, backend="auto"):
        seen.append({name: t.dtype for name, t in zip("u delta A B C D delta_bias".split(),
                                                       (u, delta, A, B, C, D, delta_bias))})
        return _ChunkedSelectiveScan.apply(u, delta, A, B, C, D, delta_bias, delta_softplus).to(u.dtype)

    monkeypatch.setattr(ss2d, "selective_scan", scan)
    return seen


def meta_model(preset: str, input_size: int, num_classes: int = 1000) -> torch.nn.Module:
    """Built on the CPU and moved, as a real run moves it to its GPU; XL is built on the meta device
    directly (its weights would take GBs of host memory)."""
    cfg = ModelConfig(preset=preset, input_size=input_size, in_channels=4, num_classes=num_classes)
    if preset.startswith("XL"):
        with META:
            return build_model(cfg)
    return build_model(cfg).to(META)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["S", "XL", "XL-release"])
def test_forward_and_backward_at_256px_under_bf16(preset, torch_scan_on_meta):
    model = meta_model(preset, 32).to(torch.bfloat16)  # DeepSpeed bf16 holds bf16 module weights
    x = torch.randn(2, 4, 32, 32, device=META, dtype=torch.bfloat16)
    t = torch.randint(0, 1000, (2,), device=META)
    y = torch.randint(0, 1000, (2,), device=META)
    out = model(x, t, y, drop_mask=torch.zeros(2, dtype=torch.bool, device=META))
    assert out.shape == (2, 8, 32, 32) and out.device == META and out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.device == META for p in model.parameters())
    # the scan computes in float32 whatever the module's dtype
    assert torch_scan_on_meta and all(dt == torch.float32 for call in torch_scan_on_meta for dt in call.values())


def test_training_loss_and_step_function(torch_scan_on_meta):
    model = meta_model("tiny", 8, num_classes=10)

    class Engine:  # what DiffusionTrainStep uses of DeepSpeed's engine
        def __call__(self, *args, **kwargs):
            return model(*args, **kwargs)

        def backward(self, loss):
            loss.backward()

        def step(self):
            pass

        def get_lr(self):
            return [1e-4]

        def get_global_grad_norm(self):
            return 1.0

        def was_step_applied(self):
            return True

    step = DiffusionTrainStep(Engine(), create_diffusion(learn_sigma=True), plan_batches(4, 1, 2), seed=0,
                              class_dropout_prob=0.1, dtype=torch.float32, device=META)
    batch = {"x": torch.randn(4, 4, 8, 8), "y": torch.arange(4), "index": torch.arange(4),
             "epoch": torch.zeros(4, dtype=torch.long)}  # the reader's batches are on the CPU
    result = step(batch)
    assert result.sums.shape == (VECTOR,) and result.sums.device == META and result.sums.dtype == torch.float64
    assert result.applied and result.lr == 1e-4 and COUNT < QCOUNT
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_cfg_sampling_steps(sampler, torch_scan_on_meta):
    model = meta_model("tiny", 8, num_classes=10).eval()
    diffusion = create_diffusion(timestep_respacing="ddim3" if sampler == "ddim" else "3", learn_sigma=True)
    loop = diffusion.ddim_sample_loop if sampler == "ddim" else diffusion.p_sample_loop
    y = torch.arange(2, device=META)
    with torch.no_grad():
        out = loop(lambda x, t, y: guided_forward(model, x, t, y, scale=4.0, null_label=10, eps_channels=4),
                   (2, 4, 8, 8), model_kwargs={"y": y}, generators=PerSampleGenerators(0, "sample", [(0,), (1,)]),
                   device=META)
    assert out.shape == (2, 4, 8, 8) and out.device == META


def test_ema_update_on_the_device():
    from lamamba.training.ema import EMA

    class Layout:  # the fp32 master shares as DeepSpeed keeps them: on the accelerator
        def __init__(self):
            self.masters = [torch.empty(1000, device=META), torch.empty(10, device=META)]

        def shares(self):
            return self.masters

    ema = EMA.__new__(EMA)
    ema.layout, ema.decays = Layout(), (0.9999, 0.99)
    ema.reset()
    with OpRecorder() as rec:
        ema.update()
    assert all(s.device == META for shares in ema.shares.values() for s in shares)
    assert rec.ops.count("aten.lerp_.Scalar") == 4


def test_scan_forward_backward_and_one_transpose_copy():
    b, d, length, n, g = 3, 8, 16, 4, 2
    args = [torch.empty(shape, device=META, requires_grad=True)
            for shape in ((b, d, length), (b, d, length), (d, n), (b, g, n, length), (b, g, n, length), (d,), (d,))]
    y = _ChunkedSelectiveScan.apply(*args, True)
    y.sum().backward()
    assert y.shape == (b, d, length) and all(a.grad is not None and a.grad.device == META for a in args)
    with OpRecorder() as rec:
        out = _swap_last_two(torch.empty(b, d, length, device=META, dtype=torch.bfloat16))
    assert out.shape == (b, length, d) and out.dtype == torch.float32
    assert rec.ops.count("aten.copy_.default") == 1  # was one copy per batch item
