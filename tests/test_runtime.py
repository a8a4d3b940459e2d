"""Devices, precision and layout: chosen by the caller, checked up front, and never touched at import."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from advlab.errors import AdvlabError
from advlab.runtime import Runtime, channels_last_twin, fast_layout, resolve_device

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (see the device tool)")


def test_auto_means_cuda_when_present():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("CPU") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_cuda_where_there_is_none_is_a_clear_error(spec):
    with pytest.raises(AdvlabError, match="no CUDA device is available here") as info:
        resolve_device(spec)
    assert "--device cpu" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("spec, words", [("tpu", "device"), ("gpu0", "unknown device"), ("mps", "unsupported")])
def test_unknown_devices_are_refused(spec, words):
    with pytest.raises(AdvlabError, match=words):
        resolve_device(spec)


def test_runtime_checks_precision_against_the_device():
    with pytest.raises(AdvlabError, match="fp16 autocast needs a CUDA device"):
        Runtime(device="cpu", precision="fp16")
    with pytest.raises(AdvlabError, match="unknown precision"):
        Runtime(device="cpu", precision="fp8")
    runtime = Runtime(device="cpu", precision="bf16")
    with runtime.autocast():
        assert torch.is_autocast_enabled("cpu")
    with Runtime(device="cpu").autocast():
        assert not torch.is_autocast_enabled("cpu")
    assert Runtime(device="cpu").to_dict() == {"device": "cpu", "precision": "fp32", "channels_last": True}


def test_generator_lives_on_the_runtime_device():
    generator = Runtime(device="cpu").generator(5)
    assert generator.device == torch.device("cpu")
    assert torch.equal(torch.rand(3, generator=generator), torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_fast_layout_never_touches_the_callers_model(tiny_cnn):
    x = torch.rand(4, 1, 28, 28)
    params = {name: (p, p.data_ptr(), p.stride()) for name, p in tiny_cnn.named_parameters()}
    with fast_layout(tiny_cnn, x) as (net, x_fast):
        assert net is not tiny_cnn and x_fast.is_contiguous(memory_format=torch.channels_last)
        conv = net[1].features[3].weight
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.requires_grad
        assert net[1].classifier[1].weight is tiny_cnn[1].classifier[1].weight  # the rest is the caller's own
        torch.testing.assert_close(net(x_fast), tiny_cnn(x))
    for name, p in tiny_cnn.named_parameters():
        assert (p, p.data_ptr(), p.stride()) == params[name] and p.requires_grad
    with fast_layout(tiny_cnn, x, enabled=False) as (net, x_same):
        assert net is tiny_cnn and x_same is x
    assert channels_last_twin(torch.nn.Linear(3, 2)) is None  # nothing to lay out


class _Noisy(torch.nn.Module):
    """A randomized model with a generator of its own and a counter: state an attack must not fork."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.generator = torch.Generator().manual_seed(0)
        self.calls = []

    def forward(self, x):
        self.calls.append(len(x))
        noise = torch.rand(x.shape, generator=self.generator) * 0.01
        return self.conv(x + noise).flatten(1)[:, :3]


def test_the_twin_shares_the_callers_randomness_and_records():
    """Randomized defenses and EOT rely on the model's own generator advancing; a deep copy would replay
    the same draws at every attack call, and hooks or counters would record into the copy."""
    from advlab.attacks import pgd

    model = _Noisy()
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(module is model))
    before = model.generator.get_state().clone()
    pgd(model, torch.rand(5, 3, 8, 8), torch.zeros(5, dtype=torch.long), eps=0.1, steps=3)
    assert not torch.equal(model.generator.get_state(), before)  # the caller's generator advanced
    assert model.calls == [5, 5, 5] and seen == [False, False, False]  # recorded on the caller; ran on the twin
    assert model.conv.weight.is_contiguous()  # and its weights kept their layout


class _Forwarding(torch.nn.Module):
    """Like torch.compile's wrapper: attributes it does not own are set on (and read from) the wrapped model."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def __setattr__(self, name, value):
        if name in ("_parameters", "_modules") and "_modules" in self.__dict__ and "inner" in self._modules:
            return setattr(self._modules["inner"], name, value)
        return super().__setattr__(name, value)

    def forward(self, x):
        return self.inner(x)


def test_a_model_with_its_own_setattr_is_left_alone(tiny_cnn):
    from advlab.attacks import pgd

    model = _Forwarding(tiny_cnn)
    before = {name: p for name, p in tiny_cnn.named_parameters()}
    assert channels_last_twin(model) is None  # it would otherwise reach into the wrapped model
    pgd(model, torch.rand(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), eps=0.1, steps=2)
    assert dict(tiny_cnn.named_parameters()) == before and set(tiny_cnn._modules) == {"0", "1"}
    lazy = torch.nn.Sequential(torch.nn.LazyConv2d(4, 3), torch.nn.Flatten())
    assert channels_last_twin(lazy) is None  # not yet shaped: nothing to lay out, and no crash


def test_nothing_touches_cuda_at_import():
    """Importing every module of advlab must not ask torch about CUDA (that would initialise a driver,
    or fail on a machine whose driver is broken). Every CUDA query raises in this child process."""
    script = textwrap.dedent("""
        import pkgutil, importlib, torch, torch.cuda
        def forbidden(*args, **kwargs):
            raise RuntimeError("CUDA was touched at import time")
        for name in ("is_available", "device_count", "current_device", "init", "_lazy_init", "get_device_name",
                     "set_device", "synchronize"):
            setattr(torch.cuda, name, forbidden)
        import advlab
        names = [m.name for m in pkgutil.walk_packages(advlab.__path__, "advlab.")]
        for name in names:
            importlib.import_module(name)
        print(len(names))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 20  # every module was imported


@needs_cuda
def test_cuda_evaluation_matches_its_fp32_judgement(trained_model, fashion_test):
    """On a GPU: the attacks run on CUDA under fp16 and bf16 autocast, judged in fp32 (run via the device tool)."""
    from advlab.attacks import parse_attack
    from advlab.evaluate import evaluate

    model = trained_model.to("cuda")
    try:
        results = {
            precision: evaluate(
                model,
                fashion_test,
                attacks=[parse_attack("pgd10")],
                eps=[0.1],
                progress=False,
                runtime=Runtime(device="cuda", precision=precision),
            )
            for precision in ("fp32", "bf16", "fp16")
        }
    finally:
        trained_model.to("cpu")
    assert len({r.clean_accuracy for r in results.values()}) == 1  # judged in fp32 every time
    assert results["fp32"].worst_case[0] < results["fp32"].clean_accuracy - 0.3  # the attack really attacks
    for result in results.values():  # on the CPU bf16 judged in fp32 found the very same share (test_evaluate)
        assert abs(result.worst_case[0] - results["fp32"].worst_case[0]) <= 0.01


@needs_cuda
def test_cuda_training_runs_and_saves_a_cpu_checkpoint(tmp_path):
    from advlab.runs import load_checkpoint
    from advlab.train import TrainConfig, train

    config = TrainConfig(method="fgsm", epochs=1, train_size=500, val_size=100, check_examples=50, check_steps=3)
    summary = train(config, tmp_path / "run", progress=False, runtime=Runtime(device="cuda"))
    assert summary["epochs_completed"] == 1
    model, _ = load_checkpoint(tmp_path / "run")
    assert next(model.parameters()).device.type == "cpu"


def test_fp16_attack_gradient_does_not_underflow():
    """A confidently classified example's input gradient is ~1e-9, below fp16's smallest number: without the
    attack loop's scale-up under fp16 autocast the step would be zero and the example left unattacked."""
    from advlab.attacks.loop import cross_entropy, perturb

    model = torch.nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[5.0, 5.0, 5.0, 5.0], [-5.0, -5.0, -5.0, -5.0]]))
        model.bias.zero_()
    x, y = torch.full((1, 4), 0.52), torch.tensor([0])  # logit margin 20.8: p(wrong) ≈ 9e-10
    with torch.autocast("cpu", dtype=torch.float16):
        x_adv = perturb(model, x, y, eps=0.1, alpha=0.05, steps=1, random_start=False, objective=cross_entropy)
        (raw,) = torch.autograd.grad(cross_entropy(model(x.requires_grad_(True)), y).sum(), x)
    assert torch.count_nonzero(raw) == 0  # what an unscaled fp16 gradient gives
    assert torch.allclose(x_adv, torch.full((1, 4), 0.47))  # one signed step of 0.05 down every pixel
