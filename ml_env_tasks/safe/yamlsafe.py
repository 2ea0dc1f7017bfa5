"""Bounded YAML: what every YAML file from outside (conda files, Azure v2 files) is read with.

PyYAML's safe loader builds an alias once and shares it, so a "billion laughs" file loads fast
and small; the bomb goes off later, when something walks or prints the result. Here the size
of the document *as expanded* is counted before anything is built, and a file whose expansion
exceeds a small bound is refused. Errors give the line and column, never the file's text.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, SequenceNode

from ..errors import SpecError

__all__ = ["load_yaml", "MAX_NODES", "MAX_BYTES"]

MAX_BYTES = 4 * 2**20
MAX_NODES = 200_000  # scalars, sequences and mappings, counting every alias where it is used


def _expanded(node: Node, memo: dict[int, int], depth: int = 0) -> int:
    if depth > 200:
        return MAX_NODES + 1
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_NODES + 1  # a node met again while being counted: a cycle
    if isinstance(node, SequenceNode):
        n = 1 + sum(_expanded(c, memo, depth + 1) for c in node.value)
    elif isinstance(node, MappingNode):
        n = 1 + sum(_expanded(k, memo, depth + 1) + _expanded(v, memo, depth + 1) for k, v in node.value)
    else:
        n = 1
    memo[key] = n
    return n


def load_yaml(data: bytes | str, *, file: str | None, key: str | None = None) -> Any:
    """Parse one YAML document with the safe loader, refusing huge files and alias bombs."""
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        raise SpecError(f"the YAML file is {len(raw)} bytes, over the {MAX_BYTES} byte limit", file=file, key=key)
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded(node, {}) > MAX_NODES:
            raise SpecError(
                f"the YAML file expands to more than {MAX_NODES} values (anchors and aliases); refused",
                file=file,
                key=key,
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        where = f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}" if e.problem_mark else ""
        # the parser's words, with anything it quotes from the file taken out
        problem = re.sub(r"'[^']*'|\"[^\"]*\"", "…", e.problem or "cannot parse")
        raise SpecError(f"not valid YAML{where}: {problem}", file=file, key=key) from None
    except yaml.YAMLError:
        raise SpecError("not valid YAML", file=file, key=key) from None
    except RecursionError:
        raise SpecError("the YAML file nests too deeply", file=file, key=key) from None
    finally:
        loader.dispose()
