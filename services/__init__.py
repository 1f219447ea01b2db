"""Deployable mains, one package per role: parse config, build components, run, clean up."""
