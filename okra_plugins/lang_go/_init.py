"""`okra init NAME --lang go`: a new Go service that builds and runs as it is."""

from __future__ import annotations

import importlib.resources
import pathlib
import re
import string

from okra_core.errors import ConfigError
from okra_plugins.lang_go._names import go_camel_case, go_package_name

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

#: template -> file in the project ($-placeholders are filled in the path too)
_FILES = {
    "okra.toml.tmpl": "okra.toml",
    "service.proto.tmpl": "proto/$proto_file",
    "go.mod.tmpl": "go.mod",
    "main.go.tmpl": "main.go",
    "gitignore.tmpl": ".gitignore",
}


def template_values(name: str) -> dict[str, str]:
    """The names a project called `name` uses: proto package `<name>.v1`, service
    `<Name>`, Go module `<name>`."""
    proto_name = name.replace("-", "_")
    proto_package = f"{proto_name}.v1"
    service_name = go_camel_case(proto_name)
    return {
        "name": name,
        "module": name,
        "proto_package": proto_package,
        "proto_file": f"{proto_name}/v1/{proto_name}.proto",
        "service_name": service_name,
        "service": f"{proto_package}.{service_name}",
        "go_package": go_package_name(proto_package),
        "gen_dir": f"gen/{proto_name}/v1",
    }


def init_project(project_dir: pathlib.Path, name: str) -> list[pathlib.Path]:
    """Write the project files; returns them (the generated code and the SDK copy that
    `okra build` adds are not the project's own files)."""
    if not _NAME.match(name):
        raise ConfigError(
            f"project name {name!r} must be lower case letters, digits, '-' or '_', starting "
            "with a letter (e.g. greeter)"
        )
    project_dir = pathlib.Path(project_dir)
    if project_dir.exists():
        if not project_dir.is_dir():
            raise ConfigError(f"{project_dir} exists and is not a directory")
        present = [p.name for p in project_dir.iterdir() if p.name != ".git"]
        if present:
            raise ConfigError(
                f"{project_dir} is not empty ({', '.join(sorted(present)[:3])}...): "
                "choose a new directory for the project"
            )
    values = template_values(name)
    templates = importlib.resources.files("okra_plugins.lang_go") / "templates" / "project"
    written = []
    for template, target in _FILES.items():
        path = project_dir / string.Template(target).substitute(values)
        text = string.Template((templates / template).read_text()).substitute(values)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
