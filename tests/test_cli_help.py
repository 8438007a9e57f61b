"""Every flag of every command has help text, and it shows the flag's default."""

import argparse

from efficientdet_graph.cli.main import build_parser


def test_every_flag_has_help_with_its_default():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        formatter = p._get_formatter()
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            label = action.option_strings[0] if action.option_strings else action.dest
            assert action.help, f"edg {name}: {label} has no help"
            if action.default not in (None, False, argparse.SUPPRESS):
                shown = formatter._expand_help(action)
                assert "default" in shown and str(action.default) in shown, \
                    f"edg {name}: {label}: {shown!r}"
        p.format_help()  # renders without error
