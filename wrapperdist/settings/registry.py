"""The registry: the only place that maps a config's `setting.name` to its implementation.

A setting outside this package registers itself: its module defines a config section decorated
with `schema.register_section` and calls `register(MySetting())`. To make it known to the CLI
and to Ray workers, name the module in `WRAPPERDIST_PLUGINS` (comma-separated module paths)."""

from __future__ import annotations

import importlib
import os

from wrapperdist.config import ExperimentConfig
from wrapperdist.setting import Setting
from wrapperdist.settings.pcfg.setting import PCFGSetting
from wrapperdist.settings.stories.setting import StoriesSetting
from wrapperdist.settings.tracr.setting import TracrSetting

SETTINGS: dict[str, Setting] = {}
PLUGINS_ENV = "WRAPPERDIST_PLUGINS"


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
    if name not in SETTINGS:
        raise KeyError(f"no implementation registered for setting {name!r}; known: {', '.join(sorted(SETTINGS))}")
    return SETTINGS[name]


for _builtin in (PCFGSetting(), TracrSetting(), StoriesSetting()):
    register(_builtin)
