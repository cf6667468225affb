# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
"""Faults by construction (issue 33): every command that writes against every fault, every command
that reads against every lie, as tables (``matrix``), plus each example the issue lists."""
