"""The provider itself: its address, its one attribute (`isthmus_bin`) and its resources.

Must not import Isthmus (another virtualenv): resources reach it through `cli.Isthmus`.
"""

from __future__ import annotations

import os
from typing import Any

from tf import schema, types
from tf.iface import Provider
from tf.utils import Diagnostics

from isthmus_tf.cli import Isthmus, default_isthmus_bin
from isthmus_tf.resources import RESOURCES

ADDRESS = "isthmus.local/isthmus/isthmus"
VERSION = "0.1.0"


class IsthmusProvider(Provider):
    def __init__(self) -> None:
        self.isthmus = Isthmus()

    def get_model_prefix(self) -> str:
        return "isthmus_"

    def full_name(self) -> str:
        return ADDRESS

    def get_provider_schema(self, diags: Diagnostics) -> schema.Schema:
        return schema.Schema(
            attributes=[
                schema.Attribute(
                    "isthmus_bin",
                    types.String(),
                    description=f"The isthmus executable (default: isthmus on PATH, else {default_isthmus_bin()}).",
                    optional=True,
                ),
            ]
        )

    def validate_config(self, diags: Diagnostics, config: dict[str, Any]) -> None:
        path = config.get("isthmus_bin")
        if isinstance(path, str) and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            diags.add_error(
                f"isthmus_bin: {path} is not an executable file",
                "Point it at the isthmus command of the project's virtualenv, e.g. <repo>/.venv/bin/isthmus.",
                path=["isthmus_bin"],
            )

    def configure_provider(self, diags: Diagnostics, config: dict[str, Any]) -> None:
        path = config.get("isthmus_bin")
        self.isthmus = Isthmus(path if isinstance(path, str) and path else None)

    def get_data_sources(self) -> list:
        return []

    def get_resources(self) -> list:
        return list(RESOURCES)
