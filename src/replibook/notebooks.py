"""Reading chapter notebooks: parameters, outputs and the source hash.

The *source hash* identifies what a reader would call the notebook's content:
the type and source text of every cell, in order. Outputs, execution counts and
metadata are left out, so re-saving a notebook in JupyterLab does not make its
executed chapter stale, while any edit to a cell does.
"""
from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from typing import Any

from .errors import ReplibookError

PARAMETERS_TAG = "parameters"
METADATA_KEY = "replibook"


def load(path: Path | str) -> dict[str, Any]:
    """The notebook as plain JSON (nbformat 4). Plain ``json`` keeps the CLI fast:
    nbformat's schema validation costs seconds of import time."""
    try:
        nb = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ReplibookError(f"notebook not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ReplibookError(f"{path} is not a valid notebook ({e.msg} at line {e.lineno})") from None
    if not isinstance(nb, dict) or nb.get("nbformat") != 4:
        raise ReplibookError(f"{path} is not an nbformat-4 notebook")
    return nb


def dumps(nb: dict[str, Any]) -> str:
    """Serialise like Jupyter does (indent 1, sorted keys, trailing newline)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _source(cell: Any) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def source_hash(nb_or_path: Any) -> str:
    """sha256 over (cell type, source) of every cell that is not papermill's injection."""
    nb = load(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    h = hashlib.sha256()
    for cell in nb["cells"]:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            continue
        h.update(json.dumps([cell.get("cell_type"), _source(cell)]).encode())
    return h.hexdigest()


def parameters_cell(nb: Any) -> Any | None:
    for cell in nb["cells"]:
        if cell.get("cell_type") == "code" and PARAMETERS_TAG in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def parameters(nb_or_path: Any) -> dict[str, Any]:
    """Names and default values assigned in the ``parameters`` cell (literal defaults only)."""
    nb = load(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    cell = parameters_cell(nb)
    if cell is None:
        raise ReplibookError("notebook has no cell tagged 'parameters'")
    out: dict[str, Any] = {}
    for node in ast.parse(_source(cell)).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = ast.unparse(node.value)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            out[node.target.id] = ast.literal_eval(node.value)
    return out


def code_cells_with_outputs(nb: Any) -> list[int]:
    """Indices of code cells that carry outputs or execution counts."""
    return [i for i, c in enumerate(nb["cells"])
            if c.get("cell_type") == "code" and (c.get("outputs") or c.get("execution_count"))]


def stamp(nb: Any, **fields: Any) -> None:
    """Write ``fields`` into the notebook's ``metadata.replibook``."""
    meta = nb.setdefault("metadata", {}).setdefault(METADATA_KEY, {})
    meta.update(fields)


def stamped(nb_or_path: Any) -> dict[str, Any]:
    nb = load(nb_or_path) if isinstance(nb_or_path, (str, Path)) else nb_or_path
    return dict(nb.get("metadata", {}).get(METADATA_KEY, {}))
