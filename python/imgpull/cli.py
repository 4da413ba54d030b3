"""The `imgpull` command: a thin typer layer over imgpull.Client."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

# This process only ever runs imgpull, whose HTTP is synchronous. httpx and
# httpcore import these optional packages when installed (the async
# backends, httpx's own CLI): ~0.2 s of every pull's start-up; and zstd
# response decoding (~5 ms), for manifests and tokens no registry compresses
# unasked (httpx then does not ask). A None entry makes each import fail,
# which both libraries expect and handle.
for _optional in ("anyio", "trio", "httpx._main", "zstandard"):
    sys.modules.setdefault(_optional, None)  # type: ignore[arg-type]

import typer  # noqa: E402

from imgpull._core import DEFAULT_MAX_RATIO, DEFAULT_MAX_UNSIZED  # noqa: E402
from imgpull.errors import ImgpullError  # noqa: E402
from imgpull.progress import (  # noqa: E402
    BulkTtyRenderer,
    ProgressCallback,
    ProgressEvent,
    bulk_renderer_for,
    human_size,
    renderer_for,
)
from imgpull.reference import DEFAULT_TAG, Reference, parse_reference  # noqa: E402
from imgpull.retry import (  # noqa: E402
    DEFAULT_CONNECTIONS_PER_LAYER,
    DEFAULT_REQUEST_TIMEOUT,
    MAX_CONNECTIONS_PER_LAYER,
)
from imgpull.rfc3339 import parse_rfc3339  # noqa: E402
from imgpull.safetext import printable, shown  # noqa: E402
from imgpull.version import VERSION_TEXT  # noqa: E402

# Each command imports what only it needs (the client, and with a pull
# httpx; export, bench, login): `imgpull images` or `--help` loads no HTTP.
if TYPE_CHECKING:
    from imgpull.client import Client
    from imgpull.hosts import Mirror
    from imgpull.pull import Image

app = typer.Typer(
    help="A fast, verifying container-image puller for Docker/OCI v2 registries.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts are plain: "os/arch[/variant]" is not markup.
    rich_markup_mode=None,
)

RootOpt = Annotated[
    Path | None,
    typer.Option("--root", help="Store folder (default: $IMGPULL_ROOT or ~/.local/share/imgpull)."),
]
PlainHttpOpt = Annotated[
    bool | None,
    typer.Option(
        "--plain-http/--https",
        help="Talk plain HTTP (or force HTTPS). Default: HTTPS, plain HTTP for loopback.",
        show_default=False,
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify the registry's TLS certificate.")
]
CaCertOpt = Annotated[
    Path | None, typer.Option("--ca-cert", help="PEM file of CAs to trust for the registry.")
]
ClientCertOpt = Annotated[
    Path | None,
    typer.Option("--client-cert", help="PEM client certificate for mutual TLS (and its key)."),
]
ClientKeyOpt = Annotated[
    Path | None,
    typer.Option("--client-key", help="PEM key of --client-cert, when not in that file."),
]
CertsDirOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--certs-dir",
        help="certs.d folder(s) holding <host:port>/{*.crt,*.cert,*.key} (default: "
        "$IMGPULL_CERTS_D, else ~/.config/imgpull/certs.d, /etc/docker/certs.d, "
        "/etc/containers/certs.d).",
    ),
]
MirrorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mirror",
        help="[http[s]://]host[:port] of a mirror of the pulled registry, tried before it "
        "(repeatable, in order; replaces the mirrors of $IMGPULL_CONFIG or "
        "~/.config/imgpull/config.toml).",
    ),
]
RequestTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--request-timeout",
        help="Seconds one manifest, tag-list, ping or token request may take in all "
        "(blob downloads are watched for stalls instead).",
    ),
]
MaxRatioOpt = Annotated[
    int,
    typer.Option(
        "--max-ratio",
        min=0,
        help="Refuse a layer that decompresses to more than N times its compressed size "
        "(past its first 8 MiB): a decompression bomb. 0: no limit.",
    ),
]


@dataclass(frozen=True)
class _TlsOptions:
    client_cert: Path | None = None
    client_key: Path | None = None
    certs_dirs: list[Path] | None = None


@contextmanager
def _user_errors() -> Iterator[None]:
    """Every failure the user can act on: one line on stderr, non-zero exit."""
    try:
        yield
    except ImgpullError as exc:
        _print_error(exc)
        raise typer.Exit(1) from None
    except KeyboardInterrupt as exc:
        typer.echo("Interrupted: partial downloads are kept; run again to resume.", err=True)
        _print_notes(exc)
        raise typer.Exit(130) from None


def _print_error(exc: ImgpullError, reference: str | None = None) -> None:
    # Messages quote what servers said: no raw control character (ESC, BEL,
    # CR, bidi override) reaches the terminal.
    # A reference from a file may be long: cut, as other echoed input is.
    where = "" if reference is None else f"{shown(reference, 200)}: "
    typer.echo(f"Error: {where}{printable(str(exc))}", err=True)
    _print_notes(exc)


def _print_notes(exc: BaseException) -> None:
    """What the error's notes add (e.g. what a --rootfs DIR holds now)."""
    for note in getattr(exc, "__notes__", ()):
        typer.echo(printable(str(note)), err=True)


def _client(
    root: Path | None,
    plain_http: bool | None = None,
    insecure: bool = False,
    ca_cert: Path | None = None,
    max_concurrent_downloads: int = 3,
    refuse_schema1: bool = False,
    allow_foreign: bool = True,
    tls: _TlsOptions = _TlsOptions(),
    mirrors: Mapping[str, Sequence[Mirror]] | None = None,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    max_ratio: int = DEFAULT_MAX_RATIO,
    max_unsized_blob: int = DEFAULT_MAX_UNSIZED,
    max_connections_per_layer: int = DEFAULT_CONNECTIONS_PER_LAYER,
) -> Client:
    from imgpull.client import Client

    return Client(
        root,
        plain_http=plain_http,
        insecure=insecure,
        ca_file=str(ca_cert) if ca_cert else None,
        client_cert=str(tls.client_cert) if tls.client_cert else None,
        client_key=str(tls.client_key) if tls.client_key else None,
        certs_dirs=tls.certs_dirs,
        max_concurrent_downloads=max_concurrent_downloads,
        refuse_schema1=refuse_schema1,
        allow_foreign=allow_foreign,
        mirrors=mirrors,
        request_timeout=request_timeout,
        max_ratio=max_ratio,
        max_unsized_blob=max_unsized_blob,
        max_connections_per_layer=max_connections_per_layer,
    )


def _mirrors(references: Sequence[str], given: list[str] | None) -> dict[str, tuple[Mirror, ...]]:
    """The configured mirrors; `--mirror` replaces those of the pulled
    registries (a reference that does not parse fails in its own pull)."""
    from imgpull import hosts

    mirrors = dict(hosts.load_config().mirrors)
    if given:
        chosen = tuple(hosts.parse_mirror(m) for m in given)
        for reference in references:
            try:
                domain = parse_reference(reference, default_tag=None).domain
            except ImgpullError:
                continue
            mirrors[hosts.registry_key(domain)] = chosen
    return mirrors


# A line of a references file: a reference is at most a few hundred
# characters (name 255, tag 128, digest 71, a host), a comment may add some.
_MAX_LINE = 4096
_MAX_REFERENCES = 100_000


def _read_references(source: str) -> list[str]:
    """References from a file (`-`: stdin), one a line; `#` starts a comment.
    Each line is bounded as it is read, and so is their number: a file that
    is no list of references ends the run before any pull, in one line."""
    shown_source = "stdin" if source == "-" else printable(source)

    def bad(problem: str) -> ImgpullError:
        return ImgpullError(f"cannot read references from {shown_source}: {problem}")

    refs: list[str] = []
    try:
        with ExitStack() as stack:
            stream = sys.stdin.buffer if source == "-" else stack.enter_context(open(source, "rb"))
            for number, raw in enumerate(iter(lambda: stream.readline(_MAX_LINE + 1), b""), 1):
                if len(raw) > _MAX_LINE and not raw.endswith(b"\n"):
                    raise bad(f"line {number} is over {_MAX_LINE} bytes: one reference a line")
                try:
                    line = raw.decode("utf-8").split("#", 1)[0].strip()
                except UnicodeDecodeError:
                    raise bad(f"line {number} is not UTF-8 text") from None
                if line:
                    if len(refs) == _MAX_REFERENCES:
                        raise bad(f"more than {_MAX_REFERENCES:,} references: split the file")
                    refs.append(line)
    except OSError as exc:
        raise bad(exc.strerror or str(exc)) from None
    return refs


@app.command()
def pull(
    references: Annotated[
        list[str] | None,
        typer.Argument(help="NAME[:TAG|@DIGEST] ..., e.g. alpine:3.20", show_default=False),
    ] = None,
    from_file: Annotated[
        str | None,
        typer.Option(
            "--from-file",
            help="Also pull the references in FILE (- for stdin), one a line; "
            "# comments and blank lines are ignored.",
        ),
    ] = None,
    platform: Annotated[
        str | None,
        typer.Option(
            "--platform",
            # As the docker CLI: the variable is the flag's default (the
            # library, like the daemon, only sees what the flag gives it).
            envvar="DOCKER_DEFAULT_PLATFORM",
            help="os/arch[/variant], e.g. linux/arm64.",
        ),
    ] = None,
    root: RootOpt = None,
    max_concurrent_downloads: Annotated[
        int,
        typer.Option(
            "--max-concurrent-downloads",
            min=1,
            help="Layers fetched at once (configs and layers of 256 KiB or less do not wait).",
        ),
    ] = 3,
    max_connections_per_layer: Annotated[
        int,
        typer.Option(
            "--max-connections-per-layer",
            min=1,
            max=MAX_CONNECTIONS_PER_LAYER,
            help="Connections (Range requests) one big layer may use when one connection is "
            "slow; to a host at most 16 (or the download slots x N if fewer). 1: one stream.",
        ),
    ] = DEFAULT_CONNECTIONS_PER_LAYER,
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    certs_dir: CertsDirOpt = None,
    mirror: MirrorOpt = None,
    request_timeout: RequestTimeoutOpt = DEFAULT_REQUEST_TIMEOUT,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Progress as one JSON object a line.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the image reference.")
    ] = False,
    all_tags: Annotated[
        bool, typer.Option("--all-tags", "-a", help="Pull every tag of the repository NAME.")
    ] = False,
    no_schema1: Annotated[
        bool,
        typer.Option("--no-schema1", help="Refuse deprecated Docker schema1 manifests."),
    ] = False,
    no_foreign_layers: Annotated[
        bool,
        typer.Option(
            "--no-foreign-layers",
            help="Refuse images with foreign (non-distributable) layers fetched from other URLs.",
        ),
    ] = False,
    max_ratio: MaxRatioOpt = DEFAULT_MAX_RATIO,
    max_unsized_blob: Annotated[
        int,
        typer.Option(
            "--max-unsized-blob",
            min=0,
            help="Bytes a blob whose descriptor gives no size (schema1 layers) may hold: "
            "an endless body stops there. 0: no limit.",
        ),
    ] = DEFAULT_MAX_UNSIZED,
    rootfs: Annotated[
        Path | None,
        typer.Option(
            "--rootfs",
            help="Also write the image's root filesystem to DIR (absent or empty) in the same "
            "pass, each layer applied as it arrives; emptied again if the pull fails.",
            metavar="DIR",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Empty the --rootfs DIR first even when it holds what imgpull did not write "
            "(a stopped pull's partial tree is emptied anyway).",
        ),
    ] = False,
    fetch_only: Annotated[
        bool,
        typer.Option(
            "--fetch-only",
            help="Check the blobs' digests only, not the layers' diffIDs: those are checked "
            "at first use (export, inspect, --rootfs, imgpull verify).",
        ),
    ] = False,
) -> None:
    """Pull images from registries into the local store. With several
    references (or --from-file), all are pulled at once, sharing the download
    slots; a failed one is reported and the others go on; a summary ends."""
    with _user_errors():
        refs = list(references or [])
        if from_file is not None:
            refs += _read_references(from_file)
        if not refs:
            raise ImgpullError("give a reference to pull (NAME[:TAG|@DIGEST]) or --from-file FILE")
        if all_tags and len(refs) > 1:
            raise ImgpullError("--all-tags/-a takes one repository NAME")
        if rootfs is not None and (all_tags or len(refs) > 1 or from_file is not None):
            raise ImgpullError("--rootfs DIR takes one image: give one reference")
        if force and rootfs is None:
            raise ImgpullError("--force empties a --rootfs DIR: give --rootfs DIR too")
    bulk = len(refs) > 1 or from_file is not None
    reference = refs[0]
    with (
        _user_errors(),
        _client(
            root,
            plain_http,
            insecure,
            ca_cert,
            max_concurrent_downloads,
            no_schema1,
            allow_foreign=not no_foreign_layers,
            tls=_TlsOptions(client_cert, client_key, certs_dir),
            mirrors=_mirrors(refs, mirror),
            request_timeout=request_timeout,
            max_ratio=max_ratio,
            max_unsized_blob=max_unsized_blob,
            max_connections_per_layer=max_connections_per_layer,
        ) as client,
    ):
        if bulk:
            failed = _pull_many(
                client, refs, platform, quiet=quiet, json_lines=json_lines, fetch_only=fetch_only
            )
            if failed:
                raise typer.Exit(1)
            return
        progress = None if quiet else renderer_for(sys.stdout, json_lines=json_lines)
        # docker's CLI lines around the pull's own: the default tag when none
        # was given, and at the end the full reference (alone with -q).
        text = not json_lines
        given = parse_reference(reference, default_tag=None)
        if all_tags:
            failures: list[str] = []

            def tag_failed(tagged: Reference, exc: ImgpullError) -> None:
                # As a bulk pull: the tag's error, and on to the next tag
                # (an invalid tag listed comes with the name alone).
                label = tagged.familiar()
                failures.append(f"{label} (an invalid tag)" if tagged.is_name_only else label)
                _print_error(exc, None if tagged.is_name_only else label)

            client.pull_all_tags(
                given,
                platform=platform,
                progress=progress,
                on_error=tag_failed,
                fetch_only=fetch_only,
            )
            if text and not failures:
                typer.echo(str(given))
            if failures:
                raise ImgpullError(
                    f"{len(failures)} tag(s) of {given.familiar()} failed: {', '.join(failures)}"
                )
            return
        if given.is_name_only and text and not quiet:
            typer.echo(f"Using default tag: {DEFAULT_TAG}")
        start = time.monotonic()
        image = client.pull(
            reference,
            platform=platform,
            progress=progress,
            rootfs=rootfs,
            fetch_only=fetch_only,
            force=force,
        )
        if text:
            typer.echo(str(image.reference))
        else:
            _json_result(image, time.monotonic() - start)


def _pull_many(
    client: Client,
    refs: list[str],
    platform: str | None,
    *,
    quiet: bool,
    json_lines: bool,
    fetch_only: bool = False,
) -> int:
    """A bulk pull: every reference through one pull_many; each failure on a
    line of its own, the successes' references, and a summary. Returns how
    many failed."""
    live: BulkTtyRenderer | None = None
    render: ProgressCallback | None = None
    if not quiet:
        render, live = bulk_renderer_for(sys.stdout, len(refs), json_lines=json_lines)
    start = time.monotonic()
    # When each reference's last event came: its result's seconds.
    ended: dict[str, float] = {}

    def progress(event: ProgressEvent) -> None:
        now = time.monotonic()
        for r in event.refs:
            ended[r] = now
        if render is not None:
            render(event)

    try:
        results = client.pull_many(
            refs, platform=platform, progress=progress, fetch_only=fetch_only
        )
    finally:
        if live is not None:
            live.finish()
    seconds = time.monotonic() - start
    counts = {"pulled": 0, "up_to_date": 0, "failed": 0}
    downloaded = 0
    for given, result in zip(refs, results, strict=True):
        if isinstance(result, ImgpullError):
            counts["failed"] += 1
            _print_error(result, given)
            if json_lines:
                message = printable(str(result))
                _json_line({"errorDetail": {"message": message}, "error": message, "ref": given})
            continue
        counts["pulled" if result.updated else "up_to_date"] += 1
        downloaded += result.downloaded_bytes
        if json_lines:
            _json_result(result, ended.get(result.reference.familiar(), time.monotonic()) - start)
        else:
            typer.echo(str(result.reference))  # as docker: the full reference, last
    rate = downloaded / seconds / 1e6 if seconds > 0 else 0.0
    if json_lines:
        summary = {**counts, "downloaded_bytes": downloaded, "seconds": round(seconds, 3)}
        _json_line({"summary": {**summary, "mb_per_s": round(rate, 1)}})
    elif not quiet:
        typer.echo(
            f"Pulled {counts['pulled']}, up to date {counts['up_to_date']}, failed "
            f"{counts['failed']}: {_spaced(human_size(downloaded))} in {seconds:.1f} s "
            f"({rate:.1f} MB/s)"
        )
    return counts["failed"]


def _json_result(image: Image, seconds: float) -> None:
    """--json: a pulled reference's object, after its events (one pull or a bulk one)."""
    _json_line(
        {
            "result": {
                "reference": str(image.reference),
                "id": image.id,
                "digest": image.digest,
                "downloaded_bytes": image.downloaded_bytes,
                "seconds": round(seconds, 3),
            }
        }
    )


def _json_line(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _spaced(size: str) -> str:
    """`1.02 GB` for human_size's `1.02GB`."""
    return re.sub(r"([0-9.]+)(\D+)$", r"\1 \2", size)


@app.command()
def images(
    root: RootOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON instead of a table.")] = False,
) -> None:
    """List the local images, newest first: a line per tag (digest-only: <none>)."""
    with _user_errors(), _client(root) as client:
        rows = client.images()
        if json_out:
            typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
            return
        table = [("REPOSITORY", "TAG", "DIGEST", "IMAGE ID", "CREATED", "SIZE")]
        for r in rows:
            table.append(
                (
                    r.repository,
                    r.tag or "<none>",
                    r.digest[:19] + "…" if r.digest else "<none>",
                    r.image_id.split(":", 1)[1][:12],
                    _ago(r.created),
                    human_size(r.size),
                )
            )
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for row in table:
            typer.echo("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


@app.command()
def inspect(
    reference: Annotated[str, typer.Argument(help="A local reference or image ID.")],
    root: RootOpt = None,
) -> None:
    """Show what is known of a local image, as JSON."""
    with _user_errors(), _client(root) as client:
        typer.echo(json.dumps(client.inspect(reference), indent=2))


@app.command()
def verify(
    reference: Annotated[str, typer.Argument(help="A local reference or image ID.")],
    root: RootOpt = None,
    max_ratio: MaxRatioOpt = DEFAULT_MAX_RATIO,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Fetch again from the registry the blobs that fail their digest, then check "
            "again.",
        ),
    ] = False,
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    ca_cert: CaCertOpt = None,
    request_timeout: RequestTimeoutOpt = DEFAULT_REQUEST_TIMEOUT,
) -> None:
    """Check a local image: every blob against its digest, every layer against
    its configuration's diffID (which a --fetch-only pull left unchecked)."""
    with (
        _user_errors(),
        _client(
            root,
            plain_http,
            insecure,
            ca_cert,
            mirrors=_mirrors([reference], None) if repair else None,
            request_timeout=request_timeout,
            max_ratio=max_ratio,
        ) as client,
    ):
        progress = renderer_for(sys.stdout) if repair else None
        diff_ids = client.verify(reference, repair=repair, progress=progress)
        image_id = client.resolve(reference)
        typer.echo(f"{image_id}: verified ({len(diff_ids)} layers)")


@app.command()
def tag(
    source: Annotated[str, typer.Argument(help="A local reference or image ID.")],
    target: Annotated[str, typer.Argument(help="NAME[:TAG] to point at it.")],
    root: RootOpt = None,
) -> None:
    """Create a tag TARGET that refers to the local image SOURCE."""
    with _user_errors(), _client(root) as client:
        client.tag(source, target)


@app.command()
def rmi(
    references: Annotated[list[str], typer.Argument(help="Local references or image IDs.")],
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Remove an image ID of several references.")
    ] = False,
    root: RootOpt = None,
) -> None:
    """Remove images: untag, and delete what no other image uses."""
    failed = False
    with _user_errors(), _client(root) as client:
        for reference in references:
            try:
                for record in client.remove(reference, force=force):
                    typer.echo(str(record))
            except ImgpullError as exc:  # as docker: report it, go on with the others
                _print_error(exc)
                failed = True
    if failed:
        raise typer.Exit(1)


@app.command()
def bench(
    references: Annotated[
        list[str], typer.Argument(help="The image(s) to pull: several are pulled at once.")
    ],
    runs: Annotated[int, typer.Option("--runs", min=1, help="How many pulls.")] = 3,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    platform: Annotated[str | None, typer.Option("--platform")] = None,
    max_concurrent_downloads: Annotated[int, typer.Option("--max-concurrent-downloads")] = 3,
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    ca_cert: CaCertOpt = None,
) -> None:
    """Pull into a fresh temporary store N times (several references: all in
    one pull, as `imgpull pull REF...`); report throughput."""
    from imgpull import bench as bench_mod

    args = ["--max-concurrent-downloads", str(max_concurrent_downloads)]
    if platform:
        args += ["--platform", platform]
    if plain_http is not None:
        args.append("--plain-http" if plain_http else "--https")
    if insecure:
        args.append("--insecure")
    if ca_cert:
        args += ["--ca-cert", str(ca_cert)]
    with _user_errors():
        results = bench_mod.run(references, runs, args)
        typer.echo(bench_mod.render(results, json_out=json_out))


@app.command()
def export(
    reference: Annotated[str, typer.Argument(help="A reference or image ID (pulled if absent).")],
    dest: Annotated[Path, typer.Argument(help="Directory (oci, rootfs) or file (docker-archive).")],
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="oci | docker-archive | rootfs.")
    ] = "oci",
    platform: Annotated[str | None, typer.Option("--platform", help="When pulling.")] = None,
    max_ratio: MaxRatioOpt = DEFAULT_MAX_RATIO,
    max_size: Annotated[
        int | None,
        typer.Option("--max-size", min=0, help="rootfs: limit of decompressed bytes in all."),
    ] = None,
    root: RootOpt = None,
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    ca_cert: CaCertOpt = None,
    request_timeout: RequestTimeoutOpt = DEFAULT_REQUEST_TIMEOUT,
) -> None:
    """Export an image: an OCI layout, a docker-archive tar, or a root filesystem."""
    with (
        _user_errors(),
        _client(
            root,
            plain_http,
            insecure,
            ca_cert,
            mirrors=_mirrors([reference], None),
            request_timeout=request_timeout,
            # The same limit for the pull of an image not here yet.
            max_ratio=max_ratio,
        ) as client,
    ):
        client.export(
            reference, fmt, dest, platform=platform, max_ratio=max_ratio, max_bytes=max_size
        )
        typer.echo(str(dest))


def _print_version(wanted: bool) -> None:
    if wanted:
        typer.echo(VERSION_TEXT)
        raise typer.Exit()


@app.callback()
def _global(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="IMGPULL_DEBUG",
            help="Trace registry requests on stderr (secrets redacted).",
        ),
    ] = False,
    _version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print imgpull's version and exit.",
            is_eager=True,
            callback=_print_version,
        ),
    ] = False,
) -> None:
    """A fast, verifying container-image puller for Docker/OCI v2 registries."""
    if debug:
        from imgpull import debuglog

        debuglog.enable()


ServerArg = Annotated[
    str | None,
    typer.Argument(help="Registry host[:port] (default: Docker Hub).", show_default=False),
]


@app.command()
def login(
    server: ServerArg = None,
    username: Annotated[str | None, typer.Option("--username", "-u", help="Username.")] = None,
    password: Annotated[
        str | None, typer.Option("--password", "-p", help="Password (prefer --password-stdin).")
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    plain_http: PlainHttpOpt = None,
    insecure: InsecureOpt = False,
    ca_cert: CaCertOpt = None,
    client_cert: ClientCertOpt = None,
    client_key: ClientKeyOpt = None,
    certs_dir: CertsDirOpt = None,
) -> None:
    """Log in to a registry: check the credentials, store them as docker does
    (~/.docker/config.json or its credential helper; DOCKER_CONFIG moves it)."""
    from imgpull import login as login_mod

    with _user_errors():
        if password is not None and password_stdin:
            raise ImgpullError("--password and --password-stdin are mutually exclusive")
        if password_stdin:
            if not username:
                raise ImgpullError("Must provide --username with --password-stdin")
            password = sys.stdin.read().rstrip("\r\n")
        elif password is not None:
            typer.echo("WARNING! Using --password via the CLI is insecure. "
                       "Use --password-stdin.", err=True)  # fmt: skip
        if username is None or password is None:
            if not sys.stdin.isatty():
                raise ImgpullError(
                    "cannot prompt for credentials: stdin is not a terminal "
                    "(use --username and --password-stdin)"
                )
            username = username or typer.prompt("Username")
            password = password or typer.prompt("Password", hide_input=True)
        result = login_mod.login(
            server or "docker.io",
            username,
            password,
            plain_http=plain_http,
            insecure=insecure,
            ca_file=str(ca_cert) if ca_cert else None,
            client_cert=str(client_cert) if client_cert else None,
            client_key=str(client_key) if client_key else None,
            certs_dirs=certs_dir,
        )
        if not result.stored_in.startswith("credential helper"):
            what = "identity token" if result.identity_token else "password"
            typer.echo(f"WARNING! Your {what} is stored unencrypted in {result.stored_in}.",
                       err=True)  # fmt: skip
        typer.echo("Login Succeeded")


@app.command()
def logout(server: ServerArg = None) -> None:
    """Remove the stored credentials of a registry."""
    from imgpull import login as login_mod
    from imgpull.credentials import registry_domain

    with _user_errors():
        name = registry_domain(server or "docker.io")
        if login_mod.logout(name):
            typer.echo(f"Removing login credentials for {name}")
        else:
            typer.echo(f"Not logged in to {name}")


@app.command()
def version() -> None:
    """Print imgpull's version."""
    typer.echo(VERSION_TEXT)


def _ago(created: str | None) -> str:
    """Docker's "2 weeks ago" for a config's RFC 3339 `created` (nanoseconds allowed)."""
    if not created:
        return "N/A"
    when = parse_rfc3339(created)
    if when is None:
        return created
    seconds = (datetime.now(UTC) - when).total_seconds()
    spans = (
        ("year", 31536000),
        ("month", 2592000),
        ("week", 604800),
        ("day", 86400),
        ("hour", 3600),
        ("minute", 60),
    )
    for unit, span in spans:
        if seconds >= span:
            n = int(seconds // span)
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return "Less than a minute ago"


def _only_the_command_run(args: Sequence[str]) -> None:
    """Leave in `app` only the command `args` names, if it names one: typer
    reads every command's signature and options at each run (~20 ms for
    all of them), and a run needs its own command's only. Global options
    first, a mistyped name or none: the whole app, for its help and hints."""
    if not args:
        return
    picked = [
        c
        for c in app.registered_commands
        if c.callback is not None
        and typer.main.get_command_name(c.name or c.callback.__name__) == args[0]
    ]
    if picked:
        app.registered_commands = picked


def main() -> None:
    _only_the_command_run(sys.argv[1:])
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    # Every command has closed its client (store, connections) by now. Skip
    # the interpreter's teardown of every module object: ~50 ms of each pull.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
