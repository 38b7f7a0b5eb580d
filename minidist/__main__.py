"""``python -m minidist``: the demo, or ``python -m minidist serve`` (see minidist/cli.py)."""

from minidist.cli import main

if __name__ == "__main__":
    main()
