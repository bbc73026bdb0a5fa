"""The settings table: every setting by its environment name, secrets masked, URLs without credentials."""

from __future__ import annotations

from rag import Settings


def settings_table(settings: Settings) -> list[dict[str, str]]:
    """Rows for the settings page: environment name, value (secrets masked, URLs without credentials)."""
    shown = settings.public_dict()
    rows = []
    for name, field in type(settings).model_fields.items():
        alias = field.validation_alias
        env = str(alias.choices[0]) if alias is not None and hasattr(alias, "choices") else name.upper()
        value = shown.get(name)
        rows.append(
            {
                "Setting": env,
                "Value": "" if value is None else str(value),
                "Description": field.description or "",
            }
        )
    return rows
