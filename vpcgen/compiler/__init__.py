"""Compiling a site: allocation, per-router model, feature modules, rendering, writing."""
