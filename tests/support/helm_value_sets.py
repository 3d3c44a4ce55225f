"""Value sets the chart is rendered with in the tests (besides the defaults)."""

DEEPSEEK_V3 = {
    "name": "deepseek-v3",
    "spec": {
        "model": {"pvc": {"claimName": "models"}, "path": "deepseek-v3"},
        "engine": {"tensorParallelSize": 8, "expertParallelSize": 8, "maxModelLen": 32768, "maxNumSeqs": 128},
        "resources": {"gpus": 1, "gpusPerNode": 8, "cpu": 8, "memory": "96Gi",
                      "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H200"}},
        "autoscaling": {"minReplicas": 1, "maxReplicas": 4, "targets": {"waitingRequestsPerReplica": 4}},
    },
}

R1_DISTILL = {
    "name": "deepseek-r1",
    "namespace": "research",
    "labels": {"team": "research"},
    "spec": {
        "model": {"uri": "hf://deepseek-ai/DeepSeek-R1@main"},
        "engine": {"tensorParallelSize": 16, "expertParallelSize": 8, "reasoningParser": "deepseek_r1"},
        "autoscaling": {"enabled": False},
        "replicas": 2,
        "service": {"type": "LoadBalancer", "port": 443,
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}},
        "env": {"OTEL_SERVICE_NAME": "r1-serving"},
    },
}

TEAM_A = {
    "name": "team-a",
    "spec": {
        "apiKeys": [{"secretKeyRef": {"name": "team-a-keys", "key": "current"}},
                    {"secretKeyRef": {"name": "team-a-keys", "key": "next"}}],
        "models": ["deepseek-v3"],
        "weight": 2,
        "limits": {"requestsPerMinute": 600, "tokensPerMinute": 200000, "maxConcurrentRequests": 32},
    },
}

TEAM_B = {
    "name": "team-b",
    "namespace": "research",
    "spec": {
        "apiKeys": [{"secretKeyRef": {"name": "team-b-key", "key": "api-key"}}],
        "role": "admin",
        "priorityClass": 10,
        "limits": {"monthlyTokenBudget": 1000000000},
    },
}

TWO_MODELS_WITH_TENANTS = {"modelServices": [DEEPSEEK_V3, R1_DISTILL], "tenants": [TEAM_A, TEAM_B]}

# Every ModelService feature of issue 17 at once: a Shared model cache, incremental upgrades,
# an InferencePool, vLLM metric names, a longer drain.
OPERATIONS_MODEL = {
    "name": "deepseek-ops",
    "spec": {
        "model": {"uri": "s3://models/deepseek-v3", "cache": {"type": "Shared", "size": "800Gi"}},
        "engine": {"tensorParallelSize": 8, "expertParallelSize": 8},
        "autoscaling": {"minReplicas": 0, "maxReplicas": 2, "coldStartTimeoutSeconds": 900},
        "upgrade": {"strategy": "Incremental", "gatewayClassName": "istio", "maxSurgePercent": 25},
        "inferencePool": {"enabled": True, "endpointPicker": "fathom-epp"},
        "metrics": {"vllmAliases": True},
        "terminationGracePeriodSeconds": 300,
    },
}

EVERYTHING_ON = {
    "commonLabels": {"cost-center": "ml-platform"},
    "imagePullSecrets": ["registry-creds"],
    "platformImage": {"digest": "sha256:" + "a" * 64},
    "operator": {"logLevel": "debug", "extraEnv": [{"name": "FATHOM_EXTRA", "value": "1"}],
                 "podAnnotations": {"example.com/scrape": "false"}, "priorityClassName": "system-cluster-critical",
                 "nodeSelector": {"kubernetes.io/os": "linux"},
                 "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}]},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/fathom"}},
    "telemetry": {"resourceAttributes": {"deployment.environment": "prod"}, "tracesSamplerArg": "0.25"},
    "otelCollector": {"enabled": True, "replicas": 3,
                      "exporters": {"otlphttp": {"endpoint": "https://tempo.observability:4318"}}},
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                       "extraRules": [{"alert": "FathomReplicaMissing", "expr": "absent(fathom_requests_running)",
                                       "for": "10m"}]},
    "networkPolicy": {"apiFrom": [{"namespaceSelector": {"matchLabels": {"fathom.dev/api-access": "true"}}}],
                      "metricsFrom": [{"namespaceSelector": {"matchLabels":
                                                             {"kubernetes.io/metadata.name": "monitoring"}}}]},
    "grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Fathom"}},
    "redis": {"enabled": True, "auth": {"existingSecret": "fathom-redis"}, "storageClassName": "fast"},
    "modelCache": {"type": "Shared", "storageClassName": "filestore", "size": "2Ti"},
    "modelServices": [DEEPSEEK_V3, R1_DISTILL, OPERATIONS_MODEL],
    "tenants": [TEAM_A, TEAM_B],
}

EVERYTHING_OFF = {
    "operator": {"enabled": False},
    "serviceAccount": {"create": False},
    "rbac": {"create": False},
    "networkPolicy": {"enabled": False},
    "otelCollector": {"enabled": False},
    "serviceMonitor": {"enabled": False},
    "prometheusRule": {"enabled": False},
    "grafanaDashboard": {"enabled": False},
    "redis": {"enabled": False, "address": ""},
    "modelCache": {"type": "None"},
}

NAMESPACED = {
    "operator": {"watchNamespaces": ["fathom", "research"]},
    "telemetry": {"otlpEndpoint": "http://otel-collector.observability:4317", "otlpProtocol": "grpc"},
    **TWO_MODELS_WITH_TENANTS,
}

VALUE_SETS = {
    "default": None,
    "everything-on": EVERYTHING_ON,
    "everything-off": EVERYTHING_OFF,
    "two-models-with-tenants": TWO_MODELS_WITH_TENANTS,
    "namespaced": NAMESPACED,
}

# Values the chart must refuse, with the words its error message must contain.
BAD_VALUES = [
    # (values, words the error must contain)
    ({"operator": {"replicas": 2}}, ["operator", "replicas"]),
    ({"operator": {"image": {"pullPolicy": "Sometimes"}}}, ["pullPolicy"]),
    ({"operator": {"image": {"digest": "latest"}}}, ["digest"]),
    ({"operator": {"logLevel": "chatty"}}, ["logLevel"]),
    ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, ["watchNamespaces"]),
    ({"operator": {"securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": False,
                                       "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}},
     ["readOnlyRootFilesystem"]),
    ({"operator": {"securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                       "allowPrivilegeEscalation": False, "capabilities": {"drop": ["NET_RAW"]}}}},
     ["capabilities"]),
    ({"operator": {"podSecurityContext": {"runAsNonRoot": False}}}, ["podSecurityContext", "runAsNonRoot"]),
    ({"operator": {"resources": {"limits": {"memory": "lots"}}}}, ["resources", "memory"]),
    ({"operatr": {"enabled": False}}, ["operatr"]),  # a typo is an error, not a silent no-op
    ({"modelServices": [{"name": "Bad_Name", "spec": {"model": {"uri": "hf://a/b"}}}]}, ["modelServices", "name"]),
    ({"modelServices": [{"name": "m"}]}, ["modelServices", "spec"]),
    ({"modelServices": [{"name": "m", "spec": {"model": {"uri": "ftp://host/ckpt"}}}]}, ["modelServices", "uri"]),
    ({"modelServices": [{"name": "m", "spec": {"model": {"uri": "hf://a/b"},
                                               "service": {"type": "NodePort", "port": 8265}}}]},
     ["modelServices", "port"]),
    ({"tenants": [{"name": "t", "spec": {"apiKeys": [{"sha256": "0" * 64}]}}]}, ["tenants", "apiKeys"]),
    ({"tenants": [{"name": "t", "spec": {"apiKeys": [{"value": "sk-plaintext"}]}}]}, ["tenants", "apiKeys"]),
    ({"tenants": [{"name": "t", "spec": {"apiKeys": []}}]}, ["tenants", "apiKeys"]),
    ({"telemetry": {"otlpEndpoint": "collector:4317"}}, ["otlpEndpoint"]),
    ({"telemetry": {"otlpProtocol": "thrift"}}, ["otlpProtocol"]),
    ({"telemetry": {"tracesSamplerArg": "2"}}, ["tracesSamplerArg"]),
    ({"networkPolicy": {"apiPort": 8265}}, ["networkPolicy", "apiPort"]),
    ({"otelCollector": {"replicas": 0}}, ["otelCollector", "replicas"]),
    ({"prometheusRule": {"kvCacheUsageRatio": 1.5}}, ["kvCacheUsageRatio"]),
    ({"serviceMonitor": {"interval": "often"}}, ["interval"]),
    ({"redis": {"port": 6379}}, ["redis", "port"]),
    ({"redis": {"address": "redis://host"}}, ["redis", "address"]),
    ({"modelCache": {"type": "Everywhere"}}, ["modelCache", "type"]),
]
