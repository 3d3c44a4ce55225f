{{/* The operator's rules on the objects it reconciles: exactly the verbs it uses.
     - ModelService/Tenant: kopf lists and watches them and patches finalizers and its annotations;
       the operator patches their status subresource (and reads ModelServices one by one).
     - RayService (ray.io): one per ModelService, read, created and patched in place (merge patches
       with resourceVersion); owner references let the garbage collector delete it.
     - Service: the API Service of each ModelService (read, create, patch).
     - Secret: reads the Secrets that Tenants reference for API keys; creates and patches the
       hashed tenants Secret the ingress reads.
     - PersistentVolumeClaim, Job (batch): a Shared model cache's claim and the Job that fills it
       (read, create, patch; owner references delete them with the ModelService).
     - InferencePool (inference.networking.k8s.io): a ModelService's pool for Inference Extension
       gateways (read, create, patch), when enabled and the CRD is installed.
     - Event (core v1): kopf and the autoscaler post Events on the objects they handle. */}}
{{- define "fathom.operatorRules" -}}
- apiGroups: ["fathom.dev"]
  resources: ["modelservices"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["fathom.dev"]
  resources: ["tenants"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["fathom.dev"]
  resources: ["modelservices/status", "tenants/status"]
  verbs: ["patch"]
- apiGroups: ["ray.io"]
  resources: ["rayservices"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["inference.networking.k8s.io"]
  resources: ["inferencepools"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}
