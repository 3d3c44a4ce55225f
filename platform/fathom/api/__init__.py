"""Pydantic specs shared by the CLI, the config file, the Serve app and the CRDs.

This package imports nothing else of Fathom's, and neither torch nor ray: the Kubernetes
operator imports it on its own.
"""
