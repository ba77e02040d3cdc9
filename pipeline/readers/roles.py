"""Rows that are not conversations: the ``text``, ``label``, ``prompt`` and ``response``
roles, each from a source column named in the config or found by a common name.

Alpaca without history or system prompt reads here too: ``instruction`` (+ ``input``)
becomes the prompt and ``output`` the response, as a trainer would join them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import PipelineError
from pipeline.inputs import ColumnsConfig
from pipeline.readers.files import RawBatch
from pipeline.schema import ROLES, TEXT_ROLES, DatasetInfo, kind_of

# Column names that map themselves to a role when the config leaves the role unset.
AUTO_COLUMNS: dict[str, tuple[str, ...]] = {
    "text": ("text", "content"),
    "label": ("label",),
    "prompt": ("prompt", "instruction"),
    "response": ("response", "output"),
}
AUTO_PROMPT_CONTEXT = "input"
"""Alpaca's optional context column, appended to ``instruction`` in the prompt."""
PROMPT_JOIN = "\n\n"
"""Between Alpaca's instruction and its input, when the input is not blank."""


def resolve_roles(columns: ColumnsConfig, names: list[str], source: str) -> dict[str, tuple[str, ...]]:
    """role -> source columns, from the config first, then by common names
    (``messages`` is the conversation formats' to read)."""
    available = set(names)
    roles: dict[str, tuple[str, ...]] = {}
    for role, common in AUTO_COLUMNS.items():
        configured = getattr(columns, role)
        if configured is not None:
            wanted = (configured,) if isinstance(configured, str) else tuple(configured)
            for col in wanted:
                if col not in available:
                    raise PipelineError(
                        f"columns.{role}: column {col!r} not found in {source} (columns: {', '.join(names)})"
                    )
            roles[role] = wanted
            continue
        used = {c for cols in roles.values() for c in cols}
        found = next((c for c in common if c in available and c not in used), None)
        if found is not None:
            roles[role] = (found,)
            if role == "prompt" and found == "instruction" and AUTO_PROMPT_CONTEXT in available:
                roles[role] = (found, AUTO_PROMPT_CONTEXT)
    return roles


@dataclass(frozen=True)
class TextLayout:
    """Rows whose roles are plain columns: text, label, prompt and response."""

    roles: dict[str, tuple[str, ...]]
    """role -> source columns (several only for a joined prompt)."""
    produced: tuple[str, ...] = ()
    """Canonical columns besides the roles: none here (see ``ChatLayout.produced``)."""

    @classmethod
    def of(cls, columns: ColumnsConfig, names: list[str], source: str) -> TextLayout:
        roles = resolve_roles(columns, names, source)
        if kind_of(roles) is None:
            raise PipelineError(
                f"{source}: no text column found (columns: {', '.join(names)}); "
                "map one with columns.text, or columns.prompt and columns.response, or set columns.format"
            )
        return cls(roles=roles)

    @property
    def info(self) -> DatasetInfo:
        roles = tuple(r for r in ROLES if r in self.roles)
        return DatasetInfo(kind=kind_of(roles) or "text", roles=roles)

    @property
    def consumed(self) -> frozenset[str]:
        return frozenset(c for cols in self.roles.values() for c in cols)

    def columns(self, batch: RawBatch) -> dict[str, pa.Array]:
        """The role columns of ``batch``, typed."""
        out: dict[str, pa.Array] = {}
        for role in ROLES:
            if role not in self.roles:
                continue
            cols = self.roles[role]
            if role in TEXT_ROLES:
                parts = [batch.strings(c, role) for c in cols]
                value = parts[0]
                for extra in parts[1:]:
                    # "instruction\n\ninput" when the context is there, the instruction alone when not.
                    has = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(extra), ""), False)
                    joined = pc.binary_join_element_wise(value, extra, PROMPT_JOIN)
                    value = pc.if_else(has, joined, value)
                out[role] = value
            else:
                out[role] = batch.scalars(cols[0], role)
        return out
