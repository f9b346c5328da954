"""`rnnkit kernels`: what of rnnkit's C++ kernels is built and which paths the layers take, and
`rnnkit kernels build`, which builds them all ahead of time (so no first use waits a minute).

Parses and dispatches only; `rnnkit.kernels.report` does the work (imported inside the commands,
so `rnnkit --help` stays fast).
"""

from __future__ import annotations

import click


@click.group("kernels", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document: every fact.")
@click.pass_context
def kernels(ctx: click.Context, as_json: bool) -> None:
    """Report rnnkit's C++ kernels: torch, CPU, build folder, each extension built or not, the
    compiler, and the path each layer takes (C++ loops, torch's kernels, Python).

    Builds live in $RNNKIT_KERNELS (default: ~/.cache/rnnkit/kernels), one folder per torch,
    Python and CPU; TORCH_EXTENSIONS_DIR does not move them.

    \b
    Examples:
      rnnkit kernels
      rnnkit kernels build          # once after installing: no first use waits for a build
    """
    if ctx.invoked_subcommand is not None:
        return
    from rnnkit.kernels.report import report

    facts = report()
    if as_json:
        import json

        click.echo(json.dumps(facts, indent=2))
        return
    click.echo(f"torch {facts['torch']}, Python {facts['python']}, CPU {facts['cpu']}")
    click.echo(f"build folder: {facts['kernels_dir']}  ($RNNKIT_KERNELS)")
    click.echo(f"C++ compiler: {facts['compiler']}")
    if facts["disabled"]:
        click.echo("RNNKIT_FUSED=0: the C++ kernels are off in this environment")
    width = max(len(e["name"]) for e in facts["extensions"])
    for e in facts["extensions"]:
        state = "built" if e["built"] else "not built"
        click.echo(f"  {e['name']:<{width}}  {state:<9}  {e['runs']}")
    click.echo("paths (CPU, float32, impl=auto):")
    for layer, path in facts["paths"].items():
        click.echo(f"  {layer}: {path}")
    if not all(e["built"] for e in facts["extensions"]) and facts["can_build"]:
        click.echo("build them now, once: rnnkit kernels build")


@kernels.command("build")
def build() -> None:
    """Build every C++ extension for this torch and CPU (about a minute each, the first time;
    seconds when they are built already).

    \b
    Examples:
      rnnkit kernels build
    """
    import time

    from rnnkit.errors import RnnkitError
    from rnnkit.kernels.build import kernels_dir
    from rnnkit.kernels.report import build_all

    click.echo(f"building rnnkit's C++ kernels into {kernels_dir()}")
    start = time.monotonic()
    results = build_all(echo=click.echo)
    failed = [name for name, result in results.items() if isinstance(result, str)]
    if failed:
        raise RnnkitError(
            f"could not build {', '.join(failed)} (see above); layers run torch's kernels or "
            "rnnkit's Python code instead"
        )
    click.echo(f"done in {time.monotonic() - start:.1f} s")
