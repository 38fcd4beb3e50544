"""At most one device-to-host transfer per decoding step, for every method: the step's scores and tokens reach
the host through ``rules.to_host`` (one synchronisation on CUDA), and nothing else in a step reads a device
tensor's values (``.item()``, ``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool(t)``...), so that GPU decoding is
not serialised by hidden syncs.

The test runs on the CPU, where host and device tensors look alike; a ``TorchFunctionMode`` counts every call that
reads a tensor's values on the host, except host-to-device copies of host arrays (tensors made by
``torch.from_numpy``, tracked by identity: the function is wrapped, as modes do not see it) and the calls inside
``to_host`` itself. Admission (a request's first step) builds host tables by design and is not counted: the counted
steps are those after every row is admitted.
"""

import weakref

import pytest
import torch
from torch.overrides import TorchFunctionMode

import d3llm
from d3llm.decoding import rules
from d3llm.decoding.engine import Engine
from test_decoding_dtypes import settings_for

READS = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__array__", "__len__"}

class HostReads(TorchFunctionMode):
    """Counts tensor reads on the host outside ``to_host``, and ``to_host`` calls."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.to_host_calls = 0
        self.inside = 0
        self.host_made = weakref.WeakValueDictionary()  # id -> tensor (tensors compare elementwise)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if not self.inside and source is not None and self.host_made.get(id(source)) is not source:
            target = [a for a in (*args[1:], *(kwargs or {}).values()) if isinstance(a, (str, torch.device))]
            if name in READS or (name == "to" and any(torch.device(t).type == "cpu" for t in target)):
                import traceback

                frame = traceback.extract_stack(limit=3)[0]
                self.reads.append(f"{name} at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}")
        return out


def counting_steps(engine: Engine, monkeypatch) -> list[HostReads]:
    original = rules.to_host
    current: list[HostReads] = [HostReads()]  # the admission step's (not checked)

    def to_host(*tensors):
        mode = current[-1]
        mode.to_host_calls += 1
        mode.inside += 1
        try:
            return original(*tensors)
        finally:
            mode.inside -= 1

    def from_numpy(array):  # host arrays: copying them to the device is not a read
        out = from_numpy_original(array)
        current[-1].host_made[id(out)] = out
        return out

    from_numpy_original = torch.from_numpy
    monkeypatch.setattr(rules, "to_host", to_host)
    monkeypatch.setattr(torch, "from_numpy", from_numpy)
    engine.step()  # admits both requests (host tables, not counted)
    assert engine.num_waiting == 0
    while engine.has_work:
        current.append(HostReads())
        with current[-1]:
            engine.step()
    return current[1:]


@pytest.mark.parametrize("family", ["llada-tiny", "dream-tiny"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_one_host_transfer_per_step(family, temperature, monkeypatch):
    model = d3llm.build_model(family, seed=1)
    for method, params in settings_for(family):
        engine = Engine(model, method, temperature=temperature, **params)
        engine.add_request([1, 2, 3, 4, 5], max_new_tokens=16, seed=0)
        engine.add_request([6, 7], max_new_tokens=16, seed=1)
        steps = counting_steps(engine, monkeypatch)
        assert steps, (method, params)
        for mode in steps:
            assert mode.to_host_calls <= 1 and not mode.reads, (method, params, mode.to_host_calls, mode.reads)


def test_the_counter_sees_a_hidden_sync(monkeypatch):
    """The check can fail: a commit that reads a device value with ``.item()`` is caught."""
    model = d3llm.build_model("llada-tiny", seed=1)
    engine = Engine(model, "multi_block", threshold=0.5, block_size=8)
    engine.add_request([1, 2, 3], max_new_tokens=16)
    commit = engine.method.commit
    calls = []

    def leaky(canvas, state, logits, plan):
        calls.append(logits.max().item())
        return commit(canvas, state, logits, plan)

    monkeypatch.setattr(engine.method, "commit", leaky)
    steps = counting_steps(engine, monkeypatch)
    caught = [r for mode in steps for r in mode.reads]
    assert len(calls) >= 2 and [r.split(" at ")[0] for r in caught] == ["item"] * (len(calls) - 1)  # not admission
