"""Kubernetes operator for Fathom: ModelService and Tenant resources reconciled into KubeRay."""
