"""Per-family dispatch: an unsupported family is refused with the fix."""

from __future__ import annotations

import pytest
from conftest import tiny_gpt2

from anee import adapter_for


def test_unsupported_family_names_the_fix():
    model = tiny_gpt2()
    model.config.model_type = "bloom"
    with pytest.raises(ValueError, match="anee/adapters"):
        adapter_for(model)
