"""Version and the User-Agent every request sends."""

from __future__ import annotations

import os
import sys

from imgpull._core import __version__

__all__ = ["USER_AGENT", "VERSION_TEXT", "__version__"]

# What `imgpull version` and `imgpull --version` print.
VERSION_TEXT = f"imgpull {__version__}"

# Registries (Docker Hub among them) log and sometimes key rate limits on
# the User-Agent, so name the tool, its version and the runtime, like docker's
# "docker/<v> go/<v> os/<os> arch/<arch>". os.uname() is what
# platform.machine() reads, without importing the platform module.
USER_AGENT = (
    f"imgpull/{__version__} python/{sys.version_info.major}.{sys.version_info.minor}."
    f"{sys.version_info.micro} os/{sys.platform} arch/{os.uname().machine.lower() or 'unknown'}"
)
