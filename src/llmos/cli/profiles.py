"""Client profiles: a server address and an API key under a name, in one TOML file.

The file is ``$LLMOS_CONFIG``, else ``$XDG_CONFIG_HOME/llmos/config.toml`` (by default
``~/.config/llmos/config.toml``), written with mode 0600 (it may hold keys)::

    current = "prod"

    [profiles.prod]
    url = "https://llmos.example.com"
    api_key = "llmos-..."

What a command uses, first found wins: its ``--url`` flag, ``$LLMOS_URL``, the profile's
``url``, ``http://127.0.0.1:8000``; for the key, ``$LLMOS_API_KEY``, then the
profile's ``api_key``. The profile is ``llmos --profile NAME`` (or
``$LLMOS_PROFILE``), else the file's ``current``.
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from llmos.errors import BadRequest

FIELDS = ("url", "api_key")


@dataclass
class Profiles:
    current: str | None = None
    profiles: dict[str, dict[str, str]] = field(default_factory=dict)

    def active(self, name: str | None = None) -> dict[str, str]:
        """The settings of profile ``name`` (or the current one); {} when there is none."""
        chosen = name or self.current
        if chosen is None:
            return {}
        if chosen not in self.profiles:
            known = ", ".join(sorted(self.profiles)) or "none"
            raise BadRequest(f"no profile {chosen!r} (profiles: {known}); "
                             "`llmos config set --profile NAME --url URL` makes one")
        return self.profiles[chosen]


def config_path() -> Path:
    given = os.environ.get("LLMOS_CONFIG")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llmos" / "config.toml"


def load(path: Path | None = None) -> Profiles:
    path = path or config_path()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Profiles()
    except tomllib.TOMLDecodeError as exc:
        raise BadRequest(f"{path} is not valid TOML: {exc}") from None
    profiles = {str(name): {k: str(v) for k, v in values.items() if k in FIELDS}
                for name, values in (raw.get("profiles") or {}).items()
                if isinstance(values, dict)}
    current = raw.get("current")
    return Profiles(current=str(current) if current else None, profiles=profiles)


def save(config: Profiles, path: Path | None = None) -> Path:
    """Writes the file (0600: only its owner reads it) and returns its path."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"current = {_string(config.current)}", ""] if config.current else []
    for name in sorted(config.profiles):
        lines.append(f"[profiles.{_string(name)}]")
        lines += [f"{key} = {_string(value)}"
                  for key, value in config.profiles[name].items() if key in FIELDS]
        lines.append("")
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    os.replace(temporary, path)
    return path


def _string(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's)."""
    return json.dumps(value, ensure_ascii=False)


def masked(key: str) -> str:
    """Enough of a key to tell which it is, never the secret: ``llmos-ab12…(48)``."""
    return f"{key[:10]}…({len(key)})" if len(key) > 10 else "…"
