"""Odd recipe files: each is refused in one line naming the file and the fix (or read correctly), never a
traceback: another encoding, absurd nesting, absurd model sizes, seeds no library takes, a folder."""

import pytest

from netcompress.errors import NetcompressError
from netcompress.pipeline.recipe import load_recipe
from netcompress.train.config import TrainConfig

BASE = '[data]\nroot = "/data"\nimage_size = 16\n[teacher]\nmodel = "studentnet"\n[student]\nmodel = "studentnet"\n'
WIDE = "model_args = {widths = [" + ", ".join(["1000000"] * 8) + "]}\n"


@pytest.mark.parametrize("blob, message", [
    (("# café crème\n" + BASE).encode("latin-1"),
     r"r.toml is not UTF-8 text \(byte 0xe9 on line 1\); TOML files are UTF-8: save it as UTF-8"),
    ((BASE + "[evaluate]\nbudgets = " + "[" * 20_000 + "]" * 20_000 + "\n").encode(),
     r"r.toml nests arrays or tables deeper than a recipe needs; flatten it"),
    ((BASE + "[evaluate]\nbudgets = [[[1]]]\n").encode(), r"budgets\[0\] = \[\[1\]\] must be an int"),
    ((BASE + WIDE).encode(), r"\[student\] model_args make a studentnet of [\d,.]+ GiB of weights, above the"),
    ((BASE + '[[student_variant]]\n' + WIDE).encode(), r"\[\[student_variant\]\] model_args make a studentnet of"),
    ((BASE + "model_args = {widths = [8, 8]}\n").encode(), r"\[student\] model_args: studentnet: pool_after \[0, 1, 2, 3\] must index blocks 0..1"),
    (("seed = 9223372036854775807\n" + BASE).encode(),
     r"r.toml: seed = 9223372036854775807 must be an integer in 0..4,294,967,295"),
    (("seed = -1\n" + BASE).encode(), r"seed = -1 must be an integer in 0..4,294,967,295"),
])
def test_an_odd_recipe_is_refused_in_one_line(tmp_path, blob, message):
    path = tmp_path / "r.toml"
    path.write_bytes(blob)
    with pytest.raises(NetcompressError, match=message) as err:
        load_recipe(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("blob, seed", [
    (("# cafe, in UTF-8: café\n" + BASE).encode("utf-8"), 0),
    (("seed = 4294967295\n" + BASE + "model_args = {widths = [16, 16, 16, 16, 16, 16, 16, 16]}\n").encode(),
     4294967295),
])
def test_a_sound_recipe_with_edge_values_loads(tmp_path, blob, seed):
    path = tmp_path / "r.toml"
    path.write_bytes(blob)
    assert load_recipe(path).seed == seed


def test_a_recipe_path_that_is_a_folder_names_the_recipes_in_it(tmp_path):
    (tmp_path / "demo.toml").write_text(BASE)
    with pytest.raises(NetcompressError, match=rf"recipe {tmp_path} is a folder; name a .toml file in it \(demo.toml\)"):
        load_recipe(tmp_path)


@pytest.mark.parametrize("seed", [-1, 2**32, 2**63 - 1, True])
def test_a_training_seed_outside_what_every_library_takes_is_refused(seed):
    with pytest.raises(NetcompressError, match=r"seed = .* \(must be an integer in 0..4,294,967,295\)"):
        TrainConfig(seed=seed)
