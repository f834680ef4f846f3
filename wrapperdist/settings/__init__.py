"""Experimental settings as plug-ins: one folder each (config section, data, `Setting`
implementation, setting-only analyses) and one line in `registry.py`."""
