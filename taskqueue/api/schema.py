"""OpenAPI post-processing: request bodies refuse unknown properties, as the API does."""

from typing import Any


def forbid_unknown_request_properties(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """drf-spectacular hook: payload serializers reject unknown fields; say so in the schema."""
    for name, component in result.get("components", {}).get("schemas", {}).items():
        if name.endswith("PayloadRequest") and component.get("type") == "object":
            component["additionalProperties"] = False
    return result
