"""The layering as Python loads it, not only as import-linter draws it.

import-linter follows the import statements of each module but not the package
``__init__`` that Python runs first, so ``import llmos.controller.x`` loading the whole
controller package went unseen. Each check here imports one module in a fresh
interpreter and reads ``sys.modules``: whatever path pulls a forbidden module in,
``__init__`` re-exports included, fails it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ["llmos.worker", "llmos.engines", "xllamacpp", "llmos.agent", "llmos.controller"]
OTHER_LLMOS = ["llmos.gateway", "llmos.worker", "llmos.engines", "llmos.agent",
               "llmos.controller", "llmos.registry", "llmos.store", "llmos.cli",
               "llmos.scheduler"]

LAYERS: list[tuple[str, list[str]]] = [
    # the gateway talks to workers through the bus only
    ("llmos.gateway.app", HEAVY),
    ("llmos.gateway", HEAVY),
    # the CLI is a client of the HTTP API
    ("llmos.cli.main", [*HEAVY, "llmos.gateway", "llmos.bus", "llmos.store", "fastapi"]),
    # pure logic: data in, data out
    ("llmos.scheduler", [*OTHER_LLMOS, "llmos.bus", "sqlalchemy", "fastapi"]),
    ("llmos.bus", [m for m in OTHER_LLMOS if m != "llmos.bus"]),
    ("llmos.store", [*HEAVY, "llmos.gateway", "fastapi"]),
    ("llmos.registry", [*HEAVY, "llmos.gateway", "fastapi", "sqlalchemy"]),
    ("llmos.deployments", [*HEAVY, "llmos.gateway", "fastapi"]),
]


def loaded_by(module: str) -> set[str]:
    code = ("import importlib, json, sys; importlib.import_module(sys.argv[1]); "
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, module], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return set(json.loads(out))


@pytest.mark.parametrize(("module", "forbidden"), LAYERS, ids=[m for m, _ in LAYERS])
def test_importing_a_module_loads_no_forbidden_layer(module: str, forbidden: list[str]) -> None:
    loaded = loaded_by(module)
    wrong = sorted(name for name in loaded for f in forbidden
                   if (name == f or name.startswith(f + ".")) and not module.startswith(f))
    assert not wrong, f"importing {module} loads {', '.join(wrong)}"
