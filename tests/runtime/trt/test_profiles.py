"""TensorRT optimization profiles: ``--profile`` specs and their check against the model."""

from __future__ import annotations

import pytest

from llmc.errors import LlmcError
from llmc.targets.trt.profiles import (
    ProfileShape,
    check_profiles,
    parse_profile_specs,
    profiles_from_dict,
    profiles_to_dict,
)


def test_parse_profile_specs_good():
    profiles = parse_profile_specs(["input_ids:1x1:1x128:8x512", "ns:past:1:4:8", " s : 2:2:2 "])
    assert profiles["input_ids"] == ProfileShape((1, 1), (1, 128), (8, 512))
    assert profiles["ns:past"] == ProfileShape((1,), (4,), (8,))  # split from the right
    assert profiles["s"].spec() == "2:2:2"
    assert parse_profile_specs(None) == {} and parse_profile_specs([]) == {}


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("input_ids:1x1:8x512", "malformed --profile spec 'input_ids:1x1:8x512'.*NAME:MIN:OPT:MAX"),
        (":1:1:1", "malformed"),
        ("x:1::4", "malformed"),
        ("x:1xa:1x2:1x3", "non-integer dim in '1xa'"),
        ("x:1.5:2:3", "non-integer"),
        ("x:1x1:1:1x1", "mixes ranks"),
        ("x:2:1:3", "MIN <= OPT <= MAX in dim 0"),
        ("x:0x1:1x1:1x1", "dim below 1"),
    ],
)
def test_parse_profile_specs_errors(spec, match):
    with pytest.raises(LlmcError, match=match) as info:
        parse_profile_specs([spec])
    assert "\n" not in str(info.value)


def test_parse_profile_specs_names_the_input_and_example():
    with pytest.raises(LlmcError, match=r"input 'ids'.*twice.*--profile input_ids:1x1:1x128:8x512"):
        parse_profile_specs(["ids:1:1:1", "ids:1:2:3"])
    with pytest.raises(LlmcError, match="input 'ids'"):
        parse_profile_specs(["ids:3:2:1"])


def test_check_profiles_lists_every_missing_dynamic_input():
    inputs = [
        ("input_ids", ("batch", "sequence")),
        ("attention_mask", ("batch", "sequence")),
        ("token_type", (1, None)),
        ("scale", ()),
    ]
    with pytest.raises(LlmcError) as info:
        check_profiles(inputs, {})
    text = str(info.value)
    assert "\n" not in text
    assert "missing: input_ids [batch, sequence], attention_mask [batch, sequence], token_type [1, ?]" in text
    assert "--profile input_ids:1x1:1x128:8x512" in text
    assert "--profile attention_mask:1x1:1x128:8x512" in text
    assert "--profile token_type:1x1:1x128:1x512" in text
    assert "scale" not in text  # static: no profile needed


def test_check_profiles_fills_static_inputs_and_keeps_given_ones():
    given = parse_profile_specs(["ids:1x1:2x64:4x128"])
    full = check_profiles([("ids", ("b", "s")), ("pos", (1, 64)), ("k", ())], given)
    assert list(full) == ["ids", "pos", "k"]
    assert full["ids"] is given["ids"]
    assert full["pos"] == ProfileShape((1, 64), (1, 64), (1, 64))
    assert full["k"].rank == 0
    # A profile for a static input is fine when it agrees with the model.
    assert check_profiles([("pos", (1, 64))], parse_profile_specs(["pos:1x64:1x64:1x64"]))


def test_check_profiles_errors():
    ids = [("input_ids", ("batch", 128)), ("mask", ("batch", 128))]
    with pytest.raises(LlmcError, match="does not have; its inputs are input_ids, mask"):
        check_profiles(ids, parse_profile_specs(["inputs_ids:1x128:1x128:1x128"]))
    with pytest.raises(LlmcError, match="has rank 1, but the model's input 'input_ids' has rank 2"):
        check_profiles(ids, parse_profile_specs(["input_ids:1:1:1", "mask:1x128:1x128:1x128"]))
    with pytest.raises(LlmcError, match=r"dim 1 to 1\.\.512, but the model fixes it at 128"):
        check_profiles(ids, parse_profile_specs(["input_ids:1x1:1x128:1x512", "mask:1x128:1x128:1x128"]))


def test_profiles_dict_round_trip():
    profiles = parse_profile_specs(["a:1x1:1x8:4x16", "b:3:3:3"])
    data = profiles_to_dict(profiles)
    assert data["a"] == {"min": [1, 1], "opt": [1, 8], "max": [4, 16]}
    assert profiles_from_dict(data) == profiles
