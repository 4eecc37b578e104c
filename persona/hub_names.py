"""Names on the Hugging Face Hub: telling a Hub id (``gpt2``, ``user/name``) from a local path."""

from __future__ import annotations

import re
from pathlib import Path

_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hub id (``gpt2``, ``user/name``: a model or a dataset) and is no local path."""
    return bool(_HUB_ID.match(name)) and not Path(name).exists()
