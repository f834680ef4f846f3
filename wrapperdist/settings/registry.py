"""The registry: the only place that maps a config's `setting.name` to its implementation.

A setting outside this package registers itself: its module defines a config section decorated
with `schema.register_section` and calls `register(MySetting())`. To make it known to the CLI,
name the module in `WRAPPERDIST_PLUGINS` (comma-separated module paths); only the CLI reads it. A
Ray worker imports the module when it unpickles a trial's config, whose section class the module
defines, and that import registers the setting (the module must be importable on every node).

The built-in implementations are imported on first use, not with this module: validating a config
needs only the settings' config sections (imported by `wrapperdist.config`), and the
implementations import torch, which takes seconds (a bad sweep file is refused before that)."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from wrapperdist.config import ExperimentConfig

if TYPE_CHECKING:
    from wrapperdist.setting import Setting

SETTINGS: dict[str, Setting] = {}
PLUGINS_ENV = "WRAPPERDIST_PLUGINS"


def _pcfg() -> Setting:
    from wrapperdist.settings.pcfg.setting import PCFGSetting

    return PCFGSetting()


def _tracr() -> Setting:
    from wrapperdist.settings.tracr.setting import TracrSetting

    return TracrSetting()


def _stories() -> Setting:
    from wrapperdist.settings.stories.setting import StoriesSetting

    return StoriesSetting()


BUILTINS: dict[str, Callable[[], Setting]] = {"pcfg": _pcfg, "tracr": _tracr, "stories": _stories}


def register(setting: Setting) -> Setting:
    SETTINGS[setting.name] = setting
    return setting


def load_plugins() -> list[str]:
    """Import the modules named in $WRAPPERDIST_PLUGINS (each registers its setting on import)."""
    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for name in names:
        importlib.import_module(name)
    return names


def setting_for(cfg: ExperimentConfig) -> Setting:
    name = cfg.setting.name
    if name not in SETTINGS and name in BUILTINS:
        register(BUILTINS[name]())
    if name not in SETTINGS:
        known = ", ".join(sorted({*SETTINGS, *BUILTINS}))
        raise KeyError(f"no implementation registered for setting {name!r}; known: {known}")
    return SETTINGS[name]
