"""``autoscaler policy ...``: validate policy files and print their JSON Schema.

``register(app)`` adds the ``policy`` sub-command group to the main Typer app (``autoscaler.cli``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from autoscaler.policy.load import validate_paths
from autoscaler.policy.schema import policy_schema_text


def register(app: typer.Typer) -> None:
    """Add the ``policy`` group (``validate``, ``schema``) to ``app``."""
    policy_app = typer.Typer(help="Check policy files and print their JSON Schema.", no_args_is_help=True)

    @policy_app.command("validate")
    def validate(
        paths: Annotated[
            list[Path],
            typer.Argument(help="Policy files, or folders whose *.yaml/*.yml files are checked.",
                           show_default=False),
        ],
    ) -> None:
        """Check every file and print every problem as file:line:column: field.path: message.

        Exit status 0 when every file is valid, 1 otherwise.
        """
        results = validate_paths(paths)
        invalid = 0
        count = 0
        for problems in results.values():
            invalid += bool(problems)
            count += len(problems)
            for problem in problems:
                typer.echo(problem)
        if invalid:
            typer.echo(f"{invalid} of {len(results)} policy file(s) invalid, {count} problem(s)", err=True)
            raise typer.Exit(code=1)
        typer.echo(f"{len(results)} policy file(s) valid", err=True)

    @policy_app.command("schema")
    def schema(
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Write the schema to this file instead of printing it."),
        ] = None,
    ) -> None:
        """Print (or write) the JSON Schema of policy files, generated from the model."""
        text = policy_schema_text()
        if output is None:
            typer.echo(text, nl=False)
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            typer.echo(f"{output}: cannot write: {exc.strerror or exc}", err=True)
            raise typer.Exit(code=1) from exc
        typer.echo(f"wrote {output}", err=True)

    app.add_typer(policy_app, name="policy")
