"""Base model for every user-facing spec: unknown fields are errors, names are camelCase on
the wire (YAML, CRDs) and snake_case in Python, and either spelling is accepted on input."""

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Spec(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_assignment=True,
    )

    def to_wire(self) -> dict:
        """The camelCase dict as written to YAML or a Kubernetes object (defaults omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")
