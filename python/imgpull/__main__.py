"""`python -m imgpull` and the `imgpull` command (pyproject.toml's script)."""

import sys


def main() -> None:
    # The version, alone, is answered before the CLI loads (typer, and
    # whatever a command needs): the interpreter's start-up and no more.
    if sys.argv[1:] in (["--version"], ["version"]):
        from imgpull.version import VERSION_TEXT

        sys.stdout.write(VERSION_TEXT + "\n")
        sys.stdout.flush()
        return
    from imgpull.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
