import pytest
from pydantic import ValidationError

from fathom.api.engine import EngineSettings


def test_camel_and_snake_case_are_one_vocabulary():
    a = EngineSettings(tensor_parallel_size=4, expert_parallel_size=2)
    b = EngineSettings.model_validate({"tensorParallelSize": 4, "expertParallelSize": 2})
    assert a == b
    assert a.to_wire()["tensorParallelSize"] == 4


def test_unknown_field_is_named():
    with pytest.raises(ValidationError, match="tensorParalelSize"):
        EngineSettings.model_validate({"tensorParalelSize": 2})


def test_ep_must_divide_tp():
    with pytest.raises(ValidationError, match="expert_parallel_size"):
        EngineSettings(tensor_parallel_size=4, expert_parallel_size=3)
