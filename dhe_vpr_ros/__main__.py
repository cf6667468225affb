# Copyright 2026 dhe_vpr_ros maintainers
# SPDX-License-Identifier: Apache-2.0
import sys

from .commands.cli import main

sys.exit(main())
