"""The model card as a registered version's description, within the registry's limit."""

from __future__ import annotations

DESCRIPTION_LIMIT = 5000  # characters: MLflow's model_versions.description column (PostgreSQL enforces it)


def registry_description(card: str, run_id: str) -> str:
    """The model card as a version's description: whole when it fits, else the sections that fit (in order)
    and a line naming those left out and where the whole card is."""
    if len(card) <= DESCRIPTION_LIMIT:
        return card
    title, *sections = card.split("\n## ")
    kept, left_out = title, []
    room = DESCRIPTION_LIMIT - 400  # for the closing line
    for section in sections:
        if len(kept) + len(section) + 4 <= room:
            kept += "\n## " + section
        else:
            left_out.append(section.split("\n", 1)[0])
    return (
        kept.rstrip()
        + f"\n\n*Shortened to the registry's {DESCRIPTION_LIMIT:,} characters; left out: "
        + ", ".join(left_out)
        + f". The whole card is `model_card.md` in MLflow run {run_id}.*\n"
    )
