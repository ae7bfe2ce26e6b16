"""YAML for untrusted files: safe_load that refuses alias bombs ("billion laughs") and self-referring aliases.

PyYAML builds aliases as shared references, so a bomb costs nothing to load and everything to walk (pydantic
validation, JSON dumps). The document's node graph is measured as if every alias were expanded, counting each
shared node once, before anything is constructed from it.
"""

from __future__ import annotations

import yaml

from segensemble.errors import PlanError

MAX_YAML_NODES = 100_000


def load_yaml(text: str, where: str):
    """yaml.safe_load that refuses documents whose aliases expand past MAX_YAML_NODES or refer to themselves."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node, {}, set(), where)
        if size > MAX_YAML_NODES:
            raise PlanError(f"{where}: the YAML expands to {size} nodes through its aliases (limit {MAX_YAML_NODES}); "
                            "refused as an alias bomb")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise PlanError(f"{where}: not valid YAML ({exc})") from exc
    except RecursionError:
        raise PlanError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _expanded_size(node, memo: dict, open_: set, where: str) -> int:
    """Nodes in the document once every alias is expanded, counted without expanding (aliases share nodes)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in open_:
        raise PlanError(f"{where}: a YAML alias refers to a node that contains it (line {node.start_mark.line + 1})")
    open_.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo, open_, where) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, open_, where) + _expanded_size(v, memo, open_, where) for k, v in node.value)
    else:
        size = 1
    open_.discard(key)
    memo[key] = min(size, MAX_YAML_NODES + 1)  # no need to count further, and no huge integers
    return memo[key]
