"""The torch module a node of an exported graph came from, read from the dynamo exporter's metadata — so
int8 exclusions and fp32 islands can be named by module path (e.g. `model.vlm.connector`)."""

from __future__ import annotations

import ast

import onnx

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


def node_scope(node: onnx.NodeProto) -> str:
    """The innermost torch module path a node came from ('' when the exporter recorded none)."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            if not isinstance(scopes, (list, tuple)):
                return ""
            names = [s for s in scopes if isinstance(s, str) and s]
            # the last entry is the aten op's own name (e.g. 'linear_3'); the module is the one before it
            return names[-2] if len(names) >= 2 else (names[0] if names else "")
    return ""
