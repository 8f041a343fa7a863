"""The ``auto`` selection table."""
import itertools

import pytest

from unlearn_core.errors import InputError
from unlearn_core.methods import METHODS
from unlearn_core.selection import AUTO_TABLE, FAMILIES, KINDS, select_method


@pytest.mark.parametrize("kind,family,substitute,expected", [
    ("class", "classifier", True, "lra_npp"),
    ("class", "classifier", False, "concept_poison"),
    ("samples", "classifier", False, "salun"),
    ("samples", "classifier", True, "salun"),
    ("subject", "classifier", False, "salun"),
    ("class", "gan", False, "cascade_gan"),
    ("samples", "gan", True, "cascade_gan"),
    ("subject", "gan", False, "cascade_gan"),
    ("subject", "lm", False, "simnpo"),
    ("samples", "lm", False, "simnpo"),
])
def test_auto_table(kind, family, substitute, expected):
    assert select_method(kind, family, substitute) == expected


def test_table_covers_every_served_combination_and_its_methods_exist():
    for kind, family, substitute in itertools.product(KINDS, FAMILIES, (True, False)):
        if (kind, family) == ("class", "lm"):  # a language model has no classes to forget
            with pytest.raises(InputError, match="not served"):
                select_method(kind, family, substitute)
            continue
        assert select_method(kind, family, substitute) in METHODS
    assert {row[3] for row in AUTO_TABLE} <= set(METHODS)


@pytest.mark.parametrize("kind,family,field", [("everything", "classifier", "kind"), ("class", "llm", "family")])
def test_unknown_kind_or_family_is_input_error(kind, family, field):
    with pytest.raises(InputError) as err:
        select_method(kind, family, False)
    assert err.value.field == field
