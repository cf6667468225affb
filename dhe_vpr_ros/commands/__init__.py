# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""The command line: ``python -m dhe_vpr_ros <command>`` and the console scripts ``ros2 run``
finds; each command parses, calls the core and reports (errors in one line, exit code 2)."""
from .cli import COMMANDS, build_parser, main

__all__ = ["COMMANDS", "build_parser", "main"]
