"""resume_layer: the one check of a pass resumed part-way (the executor's and the hierarchical model's)."""

import pytest
import torch

from anee.core.resume import resume_layer


def test_a_pass_without_resume_starts_at_the_embedding():
    assert resume_layer(None, (2, 5, 8), 4) == 0


@pytest.mark.parametrize("layer", [0, 1, 4])
def test_any_layer_up_to_the_head_is_a_start(layer):
    assert resume_layer((layer, torch.zeros(2, 5, 8)), (2, 5, 8), 4) == layer


@pytest.mark.parametrize("layer", [-1, 5])
def test_a_layer_outside_the_stack_is_refused(layer):
    with pytest.raises(ValueError, match=rf"layer in 0\.\.4 .* got {layer} "):
        resume_layer((layer, torch.zeros(2, 5, 8)), (2, 5, 8), 4)


@pytest.mark.parametrize("shape", [(1, 5, 8), (2, 4, 8), (2, 5, 7), (2, 5)])
def test_a_stream_of_another_shape_is_refused(shape):
    with pytest.raises(ValueError, match=r"hidden state of shape \(2, 5, 8\)"):
        resume_layer((1, torch.zeros(shape)), (2, 5, 8), 4)
