"""Print the configuration table (Markdown) from the one place settings are defined."""

from earmark_runtime.config import SETTINGS_TABLE


def markdown() -> str:
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    lines += [f"| `{s.name}` | `{s.default}` | {s.meaning} |" for s in SETTINGS_TABLE]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
