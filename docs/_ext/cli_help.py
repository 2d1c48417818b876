"""``cli-help`` directive: the ``--help`` text of a ``skretrieval`` command, read from its parser.

The command-line page shows what argparse prints, so its option lists cannot drift from the
code. ``{cli-help}`` alone gives the top-level help; ``{cli-help} index`` that of a command.
"""

import os
from contextlib import contextmanager

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from skretrieval.cli import command_parsers

HELP_WIDTH = 90  # columns argparse wraps at, whatever terminal builds the docs


@contextmanager
def _columns(width: int):
    """argparse reads the wrapping width from $COLUMNS each time it formats help."""
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)
    try:
        yield
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous


class CliHelp(SphinxDirective):
    optional_arguments = 1

    def run(self):
        name = self.arguments[0] if self.arguments else ""
        parsers = command_parsers()
        if name not in parsers:
            raise self.error(f"cli-help: no command {name!r}; the commands are {sorted(parsers)[1:]}")
        with _columns(HELP_WIDTH):
            text = parsers[name].format_help()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
