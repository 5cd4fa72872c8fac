"""Device correctness without a GPU to test on, and the CUDA tests that run as soon as one is present.

- Steps 3 and 4 draw their fresh heads on the CPU and copy them to the networks' device: checked on
  the `meta` device, recording every (generator device, tensor device) pair the initialisers see.
- A training step traced under FakeTensorMode with fake CUDA tensors, where an operation mixing
  devices raises. What the trace covers: the forward pass of steps 1 and 3 of the 4-step scheme
  (transform, backbone, anchors, RPN head, anchor labelling and sampling, the RPN losses), and in
  inference everything up to the proposals' NMS. Not traceable: the backward pass (the autograd
  engine needs a real CUDA context) and whatever has a data-dependent size, which fake tensors
  cannot know: NMS, and the RoI sampling of the detector half, which appends each image's ground
  truth through a boolean mask.
- No float64 tensor in a training step or an inference (MPS has no float64).
- CUDA (marked `cuda`, skipped without a GPU): the same fresh heads on CUDA as on the CPU, and NMS
  ties against the CPU path.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv
from torch.utils._python_dispatch import TorchDispatchMode

from fasterrcnn_edu import Config, FasterRCNN
from fasterrcnn_edu.nms import float32_threshold, nms, nms_readable, nms_top
from fasterrcnn_edu.training import build_networks, step3_rpn_frozen, step4_detector_frozen

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def tiny_config(**overrides) -> Config:
    return Config.book(num_classes=3, min_size=96, max_size=128, head_hidden=32, rpn_channels=16, **overrides)


def fresh_heads(nets: dict) -> dict[str, torch.Tensor]:
    shared = nets["shared"]
    return {**{f"rpn.{k}": v for k, v in shared.rpn.head.state_dict().items()},
            **{f"predictor.{k}": v for k, v in shared.roi_heads.predictor.state_dict().items()}}


def record_normal_draws(monkeypatch) -> list[tuple[str, str, torch.Tensor | None]]:
    """Patch Tensor.normal_ (what nn.init.normal_ and our initialiser call) to record (generator
    device, tensor device, a copy of the draws when they are on the CPU) for every call."""
    seen: list[tuple[str, str, torch.Tensor | None]] = []
    original = torch.Tensor.normal_

    def recording(self, mean=0.0, std=1.0, *, generator=None):
        out = original(self, mean, std, generator=generator)
        device = generator.device.type if generator is not None else self.device.type
        seen.append((device, self.device.type, self.detach().clone() if self.device.type == "cpu" else None))
        return out

    monkeypatch.setattr(torch.Tensor, "normal_", recording)
    return seen


def test_fresh_heads_of_steps_3_and_4_are_drawn_on_the_cpu_and_copied_to_the_device(monkeypatch):
    """Issue 20, E1: drawn with a CPU generator into CUDA weights, step 3 raised "Expected a 'cuda'
    device type for generator". The meta device checks nothing itself, so the pairs are recorded."""
    cfg = tiny_config()
    on_meta, on_cpu = build_networks("alternating", cfg), build_networks("alternating", cfg)
    for net in on_meta.values():
        net.to("meta")
    seen = record_normal_draws(monkeypatch)
    step3_rpn_frozen(on_meta, cfg)
    step4_detector_frozen(on_meta, cfg)
    assert len(seen) == 5 and all(generator == tensor == "cpu" for generator, tensor, _ in seen), \
        [(g, t) for g, t, _ in seen]
    assert all(p.device.type == "meta" for p in on_meta["shared"].parameters())
    meta_draws = [draws for *_, draws in seen]
    seen.clear()
    step3_rpn_frozen(on_cpu, cfg)
    step4_detector_frozen(on_cpu, cfg)
    # The same seed gives the same draws wherever the networks live, and the CPU heads are those draws.
    assert all(torch.equal(a, b) for a, b in zip(meta_draws, [draws for *_, draws in seen]))
    heads = fresh_heads(on_cpu)
    assert torch.equal(heads["rpn.conv.weight"], meta_draws[0])
    assert torch.equal(heads["predictor.bbox_pred.weight"], meta_draws[4])


def _fake_batch() -> tuple[list[torch.Tensor], list[dict]]:
    images = [torch.rand(3, 96, 128, device="cuda"), torch.rand(3, 96, 120, device="cuda")]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]], device="cuda"),
                "labels": torch.tensor([1], device="cuda")} for _ in images]
    return images, targets


def test_the_rpn_losses_of_a_training_step_trace_on_fake_cuda_with_every_tensor_on_cuda():
    """Forward only: the autograd engine wants a real CUDA context for fake CUDA tensors
    ("hasPrimaryContext expects a valid device index"), so backward cannot be traced here."""
    with FakeTensorMode(shape_env=ShapeEnv()):
        with torch.device("cuda"):
            model = FasterRCNN(tiny_config()).train()
        images, targets = _fake_batch()
        losses = model.rpn_losses(images, targets)
        assert {str(v.device) for v in losses.values()} == {"cuda:0"}


def test_a_mixed_device_operation_raises_under_the_fake_mode():
    """The trace above means something: a CPU tensor meeting a fake CUDA one raises."""
    with FakeTensorMode():
        with pytest.raises(FakeTensorDeviceMismatchError):
            torch.rand(3, device="cuda") + torch.rand(3)


def test_inference_traces_on_fake_cuda_up_to_the_data_dependent_nms():
    with FakeTensorMode(shape_env=ShapeEnv()):
        with torch.device("cuda"):
            model = FasterRCNN(tiny_config()).eval()
        images, _ = _fake_batch()
        with pytest.raises(Exception) as info:          # no device mismatch before NMS's data-dependent size
            model(images)
    assert not isinstance(info.value, FakeTensorDeviceMismatchError)
    assert "nms.py" in "".join(str(frame.path) for frame in info.traceback[-40:]), info.value


class Float64Recorder(TorchDispatchMode):
    """Records every operation whose output is a float64 tensor."""

    def __init__(self):
        super().__init__()
        self.float64_ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in torch.utils._pytree.tree_leaves(out)):
            self.float64_ops.append(str(func))
        return out


def test_no_float64_tensor_in_a_training_step_or_an_inference():
    """Issue 20, E2: MPS has no float64; the NMS threshold comparisons used .double()."""
    torch.manual_seed(0)
    model = FasterRCNN(tiny_config(rpn_post_nms_top_n_train=10, rpn_post_nms_top_n_test=10)).train()
    images = [torch.rand(3, 96, 128), torch.rand(3, 96, 120)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([1])} for _ in images]
    with Float64Recorder() as recorder:
        sum(model(images, targets).values()).backward()
        with torch.no_grad():
            model.eval()(images)
        boxes, scores = _tied_boxes(0)
        nms_top(boxes, scores, 0.5, max_kept=20, min_block=4)       # several blocks: the later ones filtered
        nms_readable(boxes, scores, 0.5)
    assert recorder.float64_ops == []


def test_the_float32_threshold_compares_as_the_double_threshold():
    """Every float32 IoU near each threshold: `iou > float32_threshold(t)` is `iou (as double) > t`."""
    for t in (0.3, 0.5, 0.7, 0.1, 1.0 / 3.0, 0.0, 1.0):
        center = torch.tensor(t, dtype=torch.float32)
        values = [center]
        for direction in (-1.0, 1.0):
            v = center
            for _ in range(4):
                v = torch.nextafter(v, torch.tensor(direction))
                values.append(v)
        ious = torch.stack(values)
        assert torch.equal(ious > float32_threshold(t), ious.double() > t), t


# ---------------------------------------------------------------------------------------------
# On a GPU (skipped here): run with `pytest -m cuda`
# ---------------------------------------------------------------------------------------------
@pytest.mark.cuda
@needs_cuda
def test_the_same_seed_gives_the_same_fresh_heads_on_cuda_as_on_the_cpu():
    cfg = tiny_config()
    on_cuda, on_cpu = build_networks("alternating", cfg), build_networks("alternating", cfg)
    for net in on_cuda.values():
        net.to("cuda")
    for nets in (on_cuda, on_cpu):
        step3_rpn_frozen(nets, cfg)
        step4_detector_frozen(nets, cfg)
    cuda_heads, cpu_heads = fresh_heads(on_cuda), fresh_heads(on_cpu)
    assert all(torch.equal(cuda_heads[k].cpu(), v) for k, v in cpu_heads.items())


def _tied_boxes(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes on a coarse grid (many exact IoU ties and IoUs equal to the thresholds) with scores
    drawn from 4 values (many exact score ties)."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.randint(0, 6, (n, 2), generator=g).float() * 10
    wh = torch.randint(1, 4, (n, 2), generator=g).float() * 10
    scores = torch.randint(0, 4, (n,), generator=g).float() / 4
    return torch.cat([xy, xy + wh], dim=1), scores


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_cuda_nms_with_ties_against_the_cpu_path(threshold):
    """What the CUDA kernel permits (torchvision csrc/ops/cuda/nms_kernel.cu): an unstable sort, so
    boxes of equal score may be kept in another order, or another of them kept; and a float32
    comparison with float32(threshold), so a box whose IoU is exactly float32(threshold) may survive
    on CUDA where the CPU suppresses it. The tolerance: without score ties and without IoUs at the
    threshold, the kept lists are identical; with them, every box CUDA keeps beyond the CPU's set
    has an IoU <= float32(threshold) with each CPU-kept box of higher or equal score, or ties the
    score of a CPU-kept box it overlaps."""
    for seed in range(20):
        boxes, scores = _tied_boxes(seed)
        cpu = nms(boxes, scores, threshold)
        assert torch.equal(cpu, nms_readable(boxes, scores, threshold))
        cuda = torchvision.ops.nms(boxes.cuda(), scores.cuda(), threshold).cpu()
        distinct = scores + torch.arange(len(scores)) * 1e-4          # no score ties
        iou = torchvision.ops.box_iou(boxes, boxes)
        at_threshold = (iou == torch.tensor(threshold, dtype=torch.float32)).fill_diagonal_(False).any()
        if not at_threshold:
            assert torch.equal(nms(boxes, distinct, threshold),
                               torchvision.ops.nms(boxes.cuda(), distinct.cuda(), threshold).cpu())
        f32 = torch.tensor(threshold, dtype=torch.float32)
        for extra in set(cuda.tolist()) - set(cpu.tolist()):
            ahead = cpu[scores[cpu] >= scores[extra]]
            assert ((iou[extra, ahead] <= f32) | (scores[ahead] == scores[extra])).all(), (seed, extra)
        # The scores CUDA keeps, sorted, are those of a greedy NMS: as many boxes per score level.
        assert len(cuda) > 0 and torch.all(scores[cuda][:-1] >= scores[cuda][1:])
