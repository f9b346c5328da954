"""`rnnkit data`: the data-set registry on the command line (list, fetch, import, path).

Parses and dispatches only; `rnnkit.data.registry` does the work (imported inside the commands,
so `rnnkit --help` stays fast). Errors are `RnnkitError`s, which the top-level group prints as
one line with exit status 2.
"""

from __future__ import annotations

import click


@click.group("data")
def data() -> None:
    """The data sets the docs use: list them, fetch or import them, find their folder.

    Data sets live in $RNNKIT_DATA (default: ~/.cache/rnnkit/data), each checked against the
    sha256 of every file. Tasks take a data set's name where they take a file or folder
    (--data jsb-chorales, --csv nab/realKnownCause/nyc_taxi.csv).

    \b
    Examples:
      rnnkit data list
      rnnkit data fetch jsb-chorales
      rnnkit data fetch fsdd --mirror http://127.0.0.1:8000/datasets
      rnnkit data import mr ~/Downloads/rt-polaritydata
      rnnkit data path tiny-shakespeare
    """


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON document: every fact and file.")
def list_(as_json: bool) -> None:
    """The data sets: name, files, size, whether they are here, licence and source."""
    from rnnkit.data import registry

    table = [registry.describe(ds) for ds in registry.datasets().values()]
    if as_json:
        import json

        click.echo(json.dumps({"data_dir": str(registry.data_dir()), "datasets": table}, indent=2))
        return
    click.echo(f"data folder: {registry.data_dir()}  (${registry.ENV})")
    width = max(len(entry["name"]) for entry in table)
    click.echo(f"{'name':<{width}}  {'files':>5}  {'size':>8}  {'here':<4}  licence; source")
    for entry in table:
        click.echo(
            f"{entry['name']:<{width}}  {entry['file_count']:>5}  {_size(entry['size']):>8}  "
            f"{'yes' if entry['present'] else 'no':<4}  {entry['licence']}; {entry['source']}"
        )


@data.command()
@click.argument("names", nargs=-1, required=True, metavar="NAME...")
@click.option(
    "--mirror",
    metavar="URL",
    help="Fetch URL/NAME/FILE instead of the canonical sources (an offline or CI mirror; "
    "http://, https:// or file:).",
)
@click.option(
    "--progress/--no-progress", default=None, help="A progress bar.  [default: on a terminal]"
)
def fetch(names: tuple[str, ...], mirror: str | None, progress: bool | None) -> None:
    """Download data sets into the data folder, each file checked against its sha256.

    A corrupt file leaves nothing of its data set; an interrupted download resumes when the
    same command runs again.

    \b
    Examples:
      rnnkit data fetch jsb-chorales tiny-shakespeare
      rnnkit data fetch fsdd --mirror file:///srv/datasets
    """
    from rnnkit.data import registry

    for name in names:
        ds = registry.get(name)
        here = registry.is_present(name)
        folder = registry.fetch(name, mirror, progress)
        if here:
            click.echo(f"{name} is already here: {folder}")
        else:
            click.echo(f"fetched {name} ({_count(ds)}, sha256 verified) into {folder}")


@data.command("import")
@click.argument("name")
@click.argument("path", type=click.Path())
def import_(name: str, path: str) -> None:
    """Check a local copy of data set NAME against its sha256 and copy it into the data folder.

    PATH is the folder holding the data set's files (or, for a data set of one file, that file).

    \b
    Examples:
      rnnkit data import jsb-chorales ~/Downloads/jsb-chorales-quarter.json
      rnnkit data import fsdd free-spoken-digit-dataset/recordings
    """
    from rnnkit.data import registry

    ds = registry.get(name)
    folder = registry.import_data(name, path)
    click.echo(f"imported {name} ({_count(ds)}, sha256 verified) into {folder}")


@data.command()
@click.argument("name")
def path(name: str) -> None:
    """Print the folder of data set NAME (exit status 2 and the fetch command if it is missing).

    \b
    Examples:
      ls "$(rnnkit data path fsdd)/recordings" | head
    """
    from rnnkit.data import registry

    click.echo(str(registry.path(name)))


def _count(ds) -> str:
    """``2 files, 1.2 MB``."""
    return f"{len(ds.files)} file{'' if len(ds.files) == 1 else 's'}, {_size(ds.size)}"


def _size(n: float) -> str:
    """``n`` bytes for people: 2.2 KB, 1.1 MB."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
