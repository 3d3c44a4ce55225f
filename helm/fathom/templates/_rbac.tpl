{{/* The operator's rules on the objects it reconciles: exactly the verbs it uses.
     - ModelService/Tenant: kopf watches them and patches finalizers, its annotations and status.
     - RayService (ray.io): one per ModelService, created, patched in place, deleted with it.
     - Service: the API Service of each ModelService.
     - Secret: reads the Secrets that Tenants reference for API keys, writes the hashed tenants Secret.
     - Event: kopf and the autoscaler post Events on the objects they handle. */}}
{{- define "fathom.operatorRules" -}}
- apiGroups: ["fathom.dev"]
  resources: ["modelservices", "tenants"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["fathom.dev"]
  resources: ["modelservices/status", "tenants/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["fathom.dev"]
  resources: ["modelservices/scale"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
