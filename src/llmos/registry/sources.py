"""Which files an import takes from a path: a file (with its split-GGUF siblings), a
folder, or a Hugging Face cache entry (``models--org--name``, read offline)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from llmos.errors import BadRequest
from llmos.registry.metadata import MAX_DEPTH, SPLIT_RE, check_filename, check_splits


@dataclass(frozen=True)
class Sources:
    files: list[Path]
    origin: str | None = None
    """Where they came from, when that is worth a label (a Hugging Face revision)."""
    names: list[str] | None = None
    """Each file's name in the version: its path under the folder imported (``/``);
    None: the files' own names."""

    def name_of(self, index: int) -> str:
        return self.names[index] if self.names is not None else self.files[index].name


def model_files(path: Path, include: list[str] | None = None) -> Sources:
    """The files to import; ``include`` keeps those whose name matches a glob (side files
    of a model, README, LICENSE and tokenizer, are kept too)."""
    origin = None
    folder = path
    if path.is_dir() and (path / "snapshots").is_dir():
        folder, origin = _hugging_face_snapshot(path)
    names: list[str] | None = None
    if folder.is_dir():
        files = sorted(_walk(folder))
        if include:
            files = [p for p in files if _side_file(p.name) or any(
                fnmatch.fnmatch(p.name, pattern) for pattern in include)]
        if not files or (include and all(_side_file(p.name) for p in files)):
            raise BadRequest(f"cannot import {path}: no files"
                             + (f" match {', '.join(include)}" if include else ""),
                             param="path")
    elif folder.is_file():
        files = [folder]
        split = SPLIT_RE.fullmatch(folder.name)
        if split:  # the other parts sit beside the one named
            count = int(split["count"])
            files = [folder.with_name(f"{split['stem']}-{i:05d}-of-{count:05d}.gguf")
                     for i in range(1, count + 1)]
            files = [p for p in files if p.is_file()]
    else:
        raise BadRequest(f"cannot import {path}: no such file or folder", param="path")
    if folder.is_dir():
        names = [p.relative_to(folder).as_posix() for p in files]
    for name in names or [p.name for p in files]:
        check_filename(name)
    check_splits([p.name for p in files])
    return Sources(files, origin, names)


def _walk(folder: Path, depth: int = 1) -> list[Path]:
    """The files under ``folder``, in its subfolders too (not hidden ones; following the
    hub cache's symlinks)."""
    found: list[Path] = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.name == "__pycache__":
            continue
        if entry.is_file():
            found.append(entry)
        elif entry.is_dir() and depth < MAX_DEPTH:
            found += _walk(entry, depth + 1)
    return found


def _side_file(name: str) -> bool:
    lower = name.lower()
    return not lower.endswith((".gguf", ".safetensors", ".bin", ".pt", ".onnx")) and (
        lower.startswith(("readme", "license", "licence", "notice"))
        or lower.startswith("tokenizer") or lower in {"config.json", "generation_config.json",
                                                      "special_tokens_map.json"})


def _hugging_face_snapshot(entry: Path) -> tuple[Path, str]:
    """The snapshot ``refs/main`` names (or the only one) of a hub cache entry."""
    snapshots = sorted(p for p in (entry / "snapshots").iterdir() if p.is_dir())
    ref = entry / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        chosen = entry / "snapshots" / commit
        if not chosen.is_dir():
            raise BadRequest(f"{entry}: refs/main names {commit[:12]}, which is not in "
                             "snapshots/", param="path")
    elif len(snapshots) == 1:
        chosen = snapshots[0]
    else:
        raise BadRequest(f"{entry} has {len(snapshots)} snapshots and no refs/main: import "
                         "one of its snapshots/<commit> folders", param="path")
    repo = entry.name.removeprefix("models--").replace("--", "/")
    return chosen, f"huggingface {repo} @ {chosen.name[:12]}"
