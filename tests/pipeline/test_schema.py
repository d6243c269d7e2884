"""One config schema: params.yaml checks, `tamp prune` flags and the Prefect form all come from it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tampkit.cli import build_parser, main
from tampkit.core.errors import UsageError
from tampkit.pipeline.params import Params, params_from_dict, params_from_flat
from tampkit.pipeline.schema import KNOB, KNOBS


def test_params_defaults_are_the_schema_defaults() -> None:
    assert Params().flat() == {k.key: k.default for k in KNOBS}


def test_every_flagged_knob_is_a_tamp_prune_flag_with_its_key_in_the_help(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prune", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for knob in KNOBS:
        if knob.flag:
            assert knob.flag in text and f"params.yaml {knob.key}" in text, knob.key


@pytest.mark.parametrize("knob", [k for k in KNOBS if k.allowed], ids=lambda k: k.key)
def test_a_value_outside_the_allowed_ones_names_the_key_and_the_allowed_values(knob) -> None:
    section, name = knob.key.split(".")
    with pytest.raises(UsageError) as caught:
        params_from_dict({section: {name: "not-a-value"}})
    line = str(caught.value)
    assert "\n" not in line and line.startswith(f"params: {knob.key}:")
    assert all(value in line for value in knob.allowed)
    with pytest.raises(UsageError, match=f"^{knob.flag}: .*allowed"):
        params_from_flat({knob.key: "not-a-value"}, label=lambda key: KNOB[key].flag)


@given(st.sampled_from([k for k in KNOBS if k.kind in (int, float)]), st.text(max_size=5))
def test_a_number_knob_rejects_text_naming_the_key(knob, text: str) -> None:
    section, name = knob.key.split(".")
    with pytest.raises(UsageError, match=f"params: {knob.key}: expected {knob.kind.__name__}"):
        params_from_dict({section: {name: text}})


def test_the_cli_reports_a_bad_flag_value_in_one_line_with_the_flag(tmp_path, capsys) -> None:
    code = main(["prune", "--model", "tiny-llama", "--method", "wanda", "--sparsity", "0.5", "--das-score", "big",
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith("tamp: error: --das-score: unknown value 'big' (allowed: unweighted, size)")
    assert not (tmp_path / "o").exists()


def test_the_prefect_form_has_one_typed_field_per_knob() -> None:
    pytest.importorskip("prefect")
    from prefect.utilities.callables import parameter_schema

    from flows.full import full

    schema = parameter_schema(full.fn).model_dump()
    overrides = schema["definitions"]["Overrides"]["properties"]
    assert set(overrides) == set(KNOB)
    method = overrides["prune.method"]["anyOf"][0]
    assert method["enum"] == list(KNOB["prune.method"].allowed)
    assert overrides["prune.sparsity"]["anyOf"][0]["type"] == "number"
