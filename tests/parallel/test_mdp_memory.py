"""Encoder activation memory under parallel.modality_decoupled, measured as the bytes autograd
saves for backward (torch.autograd.graph.saved_tensors_hooks; parameters and inputs excluded):
the coupled path keeps a whole micro-batch's encoder activations until its backward; the
decoupled path encodes without a graph and recomputes one item at a time in the backward, so
what it holds is one item's."""
import pytest
import torch

from megatron_omni.config import load_config
from megatron_omni.models.omni.model import OmniModel
from tests.omni_batches import PLACEHOLDER_IDS, micro_batch

SEQ = 160


@pytest.fixture(scope="module")
def model(megatron_single_rank):
    torch.manual_seed(0)
    return OmniModel(load_config(None, ["model.num_layers=2", "model.omni.preset=tiny"]), 200, PLACEHOLDER_IDS)


def saved_bytes(model, fn) -> int:
    """Bytes of the activations autograd saves while fn() runs (each storage once)."""
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(seen.values())


def test_decoupled_holds_one_items_encoder_activations(model):
    omni = model.omni
    b = micro_batch(omni, ["video", "video", "cross", "image", "audio"], SEQ, 200, video_frames=4)
    coupled = saved_bytes(model, lambda: model.encode_media(b.tokens, b)[0])
    items = [("image", 0), ("video", 0), ("video", 1), ("video", 2), ("audio", 0), ("audio", 1)]
    per_item = {item: saved_bytes(model, lambda: model.project_item(item[0], model.encode_item(b, *item)))
                for item in items}
    with torch.no_grad():  # the forward before the schedule keeps nothing
        assert saved_bytes(model, lambda: [model.encode_item(b, *item) for item in items]) == 0
    largest = max(per_item.values())
    print(f"saved for backward: coupled micro-batch {coupled} B, decoupled largest item {largest} B "
          f"(per item {per_item})")
    assert largest * 3 < coupled
    assert 0.9 * sum(per_item.values()) < coupled  # all items at once (batched frames share a little)
