"""Case type definitions as data: validation, the `transitions` machine, the engine, diagrams.

Pure code: no Flask, no database, no network. A definition is a plain dict (as stored in the
database or a YAML file); `parse_definition` turns it into typed objects or lists what is wrong.
"""

from webapp.casetypes.definition import (
    APPROVAL,
    RESOLUTION,
    WORK,
    Definition,
    DefinitionError,
    FieldDef,
    Problem,
    StageDef,
    parse_definition,
)
from webapp.casetypes.engine import (
    Actor,
    CaseActionError,
    CaseSnapshot,
    Outcome,
    available_actions,
    run_action,
)

__all__ = [
    "APPROVAL",
    "RESOLUTION",
    "WORK",
    "Actor",
    "CaseActionError",
    "CaseSnapshot",
    "Definition",
    "DefinitionError",
    "FieldDef",
    "Outcome",
    "Problem",
    "StageDef",
    "available_actions",
    "parse_definition",
    "run_action",
]
