"""The command-line reference, `docs/cli.md`, made from the click commands themselves.

`python -m offloadd.cli.reference > docs/cli.md` writes it. It walks every command and
option with click's own metadata (name, type, default, environment variable, help), so a
new option is documented by existing; `tests/test_cli.py` fails when the page in the
repository and this text differ.
"""

from __future__ import annotations

import click

from offloadd.cli.main import main

# click ≥ 8.3 marks "no default" with a sentinel of its own; older versions use None
_UNSET = getattr(click.core, "UNSET", None)

PREAMBLE = """\
# Command line

Every command and option of `offloadd`, with its type, default and environment variable.
This page is generated from the CLI itself — do not edit it by hand; after changing an
option, run `python -m offloadd.cli.reference > docs/cli.md` (`tests/test_cli.py` fails
until the page matches). An option's environment variable is read when the option is not
given; a flag's variable is on for `1`, `true`, `yes` or `on`.
"""


def reference(group: click.Group = main) -> str:
    """The whole page: the preamble, then each command in the order `--help` lists them."""
    ctx = click.Context(group, info_name="offloadd")
    sections = [PREAMBLE, *_sections(group, ctx)]
    return "\n".join(sections)


def _sections(command: click.Command, ctx: click.Context) -> list[str]:
    """The section of a command, then those of its subcommands (a group's, recursively)."""
    sections = [_section(command, ctx)]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                sections += _sections(sub, click.Context(sub, info_name=name, parent=ctx))
    return sections


def _section(command: click.Command, ctx: click.Context) -> str:
    """A command's heading, usage line, help text and the table of its parameters."""
    lines = [f"## `{ctx.command_path}`", "", "```", _usage(command, ctx), "```", ""]
    if command.help:
        lines += [command.help.strip(), ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += [
            "| option | type | default | environment | meaning |",
            "|---|---|---|---|---|",
        ]
        lines += [_row(p, ctx) for p in params]
        lines.append("")
    return "\n".join(lines)


def _usage(command: click.Command, ctx: click.Context) -> str:
    """The usage line as `--help` prints it (without the terminal's wrapping)."""
    return " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])


def _row(param: click.Parameter, ctx: click.Context) -> str:
    """One parameter: its names, type, default, environment variable and help."""
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    if isinstance(param, click.Argument):
        names = f"`{param.make_metavar(ctx)}` (argument)"
    cells = [names, _type(param), _default(param, ctx), _envvar(param), _help(param)]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _type(param: click.Parameter) -> str:
    """The value's type: `flag`, the choices, or click's name for the type."""
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if isinstance(param.type, click.Choice):
        return " | ".join(f"`{c}`" for c in param.type.choices)
    return param.type.name


def _default(param: click.Parameter, ctx: click.Context) -> str:
    """The default as written in the code (never read from this machine's environment)."""
    default = param.get_default(ctx, call=False)
    if isinstance(param, click.Option) and param.is_flag:
        return "on" if default else "off"
    if isinstance(param, click.Argument) or param.required:
        return "required"
    if default is None or default is _UNSET or default == "" or callable(default):
        return ""
    return f"`{default}`"


def _envvar(param: click.Parameter) -> str:
    """The environment variable(s) an option is read from when it is not given."""
    envvar = param.envvar
    if not envvar:
        return ""
    names = [envvar] if isinstance(envvar, str) else list(envvar)
    return ", ".join(f"`{n}`" for n in names)


def _help(param: click.Parameter) -> str:
    """An option's help text (arguments have none in click)."""
    return " ".join((getattr(param, "help", None) or "").split())


if __name__ == "__main__":
    click.echo(reference(), nl=False)
