"""The value-flow engine: what may a value be, across functions, classes and files.

Every analysis and rule asks it; none follows assignments itself. ``ctx.get(ValueFlow)`` is the
engine of a file; ``flow.values(expr)`` is the one question. See :mod:`.engine` for what it
follows and :mod:`.domain` for the answers.
"""

from trainlint.analysis.values.domain import (
    EXTERNAL,
    NOTHING,
    UNKNOWN,
    Facts,
    ClassRef,
    Collection,
    Constant,
    Evidence,
    FunctionRef,
    Instance,
    Param,
    Parameters,
    Site,
    Tensor,
    Value,
    Values,
    evidence_text,
    is_none,
    number,
)
from trainlint.analysis.values.engine import ValueFlow
from trainlint.analysis.values.scopes import Binding, Reaching, Scope, Scopes

__all__ = [
    "EXTERNAL", "NOTHING", "UNKNOWN", "Binding", "Facts", "ClassRef", "Collection", "Constant", "Evidence", "FunctionRef", "Instance",
    "Param", "Parameters", "Reaching", "Scope", "Scopes", "Site", "Tensor", "Value", "ValueFlow", "Values",
    "evidence_text", "is_none", "number",
]
