"""Nipype interfaces shared by the stage workflows (they call :mod:`pipeline`)."""
