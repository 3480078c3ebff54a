"""Find the files that ship with edgekit: device profiles, export presets, recipes.

In a wheel, devices/ and export/ are copied to edgekit/_data/; in a source checkout
(editable install) they sit at the repository's top level.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder of shipped YAML files called ``name`` (``devices`` or ``export``)."""
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"edgekit's {name}/ folder is missing from this installation")


def recipes_dir() -> Path:
    return _PACKAGE / "recipes"


def list_named(kind: str) -> list[str]:
    """Names of the shipped YAML files of ``kind`` (``devices`` or ``export``)."""
    return sorted(p.stem for p in data_dir(kind).glob("*.yaml"))


def load_named_yaml(kind: str, name_or_path: str, what: str) -> dict:
    """Load a shipped YAML by name (``cpu``) or a user's file by path (``my.yaml``)."""
    import yaml

    from edgekit.errors import EdgekitError

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = data_dir(kind) / f"{name_or_path}.yaml"
        if not path.is_file():
            raise EdgekitError(
                f"unknown {what} {name_or_path!r}; choose one of {', '.join(list_named(kind))} or give a .yaml file"
            )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise EdgekitError(f"{what} file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise EdgekitError(f"{what} file {path} cannot be read ({exc.strerror})") from None
    except yaml.YAMLError:
        raise EdgekitError(f"{what} file {path} is not valid YAML; fix its syntax") from None
    if not isinstance(data, dict):
        raise EdgekitError(f"{what} file {path} must be a mapping of settings")
    data.setdefault("name", path.stem)
    data["_path"] = str(path)
    return data
